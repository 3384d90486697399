#!/usr/bin/env python3
"""The training half for real on one GPU (make gpu-check): every step through the pipeline's own targets.

    make gpu-check MEGATRON_PATH=/path/to/Megatron-LM [TOKENIZER_MODEL=...] [TRAIN_PYTHON=python3]
    tests/gpu/gpu_check.py --megatron-path ... --work-dir DIR [--tokenizer-model M] [--json OUT]

sample data -> extract -> merge -> tokenize -> count -> mix (task gpu-check) -> a tiny base pretrained from
random weights (make init BASE_CKPT=scratch, make train) -> make init from the base -> make train for two
seeds -> make hf-tokenizer (or the given HF_TOKENIZER_DIR, checked) -> make convert CONVERTER=native (fp32) ->
Megatron's own forward pass on the same checkpoint against the converted model -> make soup-config + make soup ->
the seeds and the soup scored on held-out sample text through their own Hugging Face tokenizer and through
SentencePiece's ids -> make report -> make status.
Everything runs locally (SCHEDULER=local, torchrun on the GPUs here) under the work folder; each make
call's output goes to <work>/logs/. One row per check with its measured figure; exit 1 if any fails.
A check whose input failed is listed as skipped, naming what it needs.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "scripts"))

from pipeline.megatron_log import read_run  # noqa: E402
from pipeline.tokenizer_training import model_vocab_size  # noqa: E402

TASK, PARAM, DATASET, TOKENIZER_NAME = "gpu-check", "tiny", "dolmino-mix-1124", "gpucheck"
BASE_SEED, SEEDS = 1, (1, 2)
GLOBAL_BATCH = 8                     # params/tiny.yaml
LOGIT_TOLERANCE = 1e-4               # fp32, Megatron's forward vs the converted Hugging Face model
LOSS_CONTINUES_WITHIN = 1.0          # nats: the first midtraining loss against the base's last losses
LOADED = re.compile(r"successfully loaded checkpoint from (\S+).*at iteration (\d+)")
TOKENIZATION_LOSS_TOLERANCE = 1e-3   # nats per token: own Hugging Face tokenizer vs SentencePiece's ids
HELD_OUT_DOCS, HELD_OUT_SEED = 60, 12345   # held-out sample text (the training sample is seed 0)


@dataclass
class Row:
    name: str
    status: str                      # PASS | FAIL | SKIP
    figure: str
    detail: str = ""


@dataclass
class Check:
    work: Path
    megatron: Path
    tokenizer: Path | None
    train_python: str
    env_dir: Path | None = None
    hf_tokenizer: Path | None = None  # HF_TOKENIZER_DIR given (a published folder, checked); else make hf-tokenizer
    port: int = 29500                # MASTER_PORT of its jobs; +1 for the forward pass (checks can run side by side)
    rows: list[Row] = field(default_factory=list)
    failed_steps: set[str] = field(default_factory=set)

    # --- running things ----------------------------------------------------------------------------
    def knobs(self, **extra: str) -> list[str]:
        values = {"EXP_DIR": str(self.work / "exp"), "SCHEDULER": "local", "DATASET": DATASET, "TASK": TASK,
                  "PARAM": PARAM, "TOKENIZER_NAME": TOKENIZER_NAME, "TASK_OUT": str(self.work / "task"),
                  "MEGATRON_PATH": str(self.megatron), "TRAIN_PYTHON": self.train_python, "LAUNCHER": "torchrun",
                  "GPUS_PER_NODE": "1", "MASTER_PORT": str(self.port), "SOUP_CONFIG_DIR": str(self.work / "merge"),
                  **extra}
        if self.tokenizer is not None:
            values["TOKENIZER_MODEL"] = str(self.tokenizer)
        if self.env_dir is not None:
            values["ENV_DIR"] = str(self.env_dir)
        return [f"{k}={v}" for k, v in values.items()]

    def make(self, step: str, *targets: str, **extra: str) -> bool:
        """Run make; its output goes to logs/<step>.log. False (and the step marked failed) on an error."""
        log = self.work / "logs" / f"{step}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        with open(log, "w") as handle:
            result = subprocess.run(["make", "--no-print-directory", "-C", str(REPO), *targets, *self.knobs(**extra)],
                                    stdout=handle, stderr=subprocess.STDOUT, text=True)
        print(f"  {step}: make {' '.join(targets)}: exit {result.returncode} in {time.monotonic() - started:.0f}s "
              f"({log})", flush=True)
        if result.returncode != 0:
            self.failed_steps.add(step)
        return result.returncode == 0

    def row(self, name: str, ok: bool | None, figure: str, detail: str = "") -> None:
        status = "SKIP" if ok is None else "PASS" if ok else "FAIL"
        self.rows.append(Row(name, status, figure, detail))

    def needs(self, name: str, *steps: str) -> bool:
        """False (and a SKIP row) when a step this check reads from failed."""
        failed = [s for s in steps if s in self.failed_steps]
        if failed:
            self.row(name, None, "-", f"needs {', '.join(failed)} (failed: see {self.work / 'logs'})")
        return not failed

    def failure_reason(self, run: Path) -> str:
        """The exception Megatron's rank 0 raised, from the run's newest train-*.err."""
        errs = sorted(run.glob("train-*.err"), key=lambda p: p.stat().st_mtime)
        if not errs:
            return ""
        lines = [line.removeprefix("[rank0]: ").strip() for line in errs[-1].read_text(errors="replace").splitlines()]
        raised = [line for line in lines if re.match(r"^[A-Za-z_.]*(Error|Exception)\b.*:", line)
                  and "ChildFailedError" not in line]
        return f"Megatron: {raised[-1][:500]} ({errs[-1]})" if raised else ""

    def log_tail(self, step: str, lines: int = 3) -> str:
        log = self.work / "logs" / f"{step}.log"
        text = log.read_text(errors="replace").strip().splitlines() if log.is_file() else []
        errors = [line for line in text if "Error" in line or "error:" in line or "assert" in line.lower()]
        return " | ".join((errors or text)[-lines:])[:600]

    def run_dir(self, size: str, seed: int) -> Path:
        return self.work / "exp" / "runs" / TASK / PARAM / size / f"seed{seed}"

    def data_list(self, size: str) -> str:
        return str(self.work / "task" / f"train_data_{size}.sh")

    # --- the steps ---------------------------------------------------------------------------------
    def data(self) -> None:
        exp = self.work / "exp"
        sample = subprocess.run([sys.executable, str(REPO / "demo" / "demo_data.py"), "--output",
                                 str(exp / DATASET), "--docs", "20"], capture_output=True, text=True)
        if sample.returncode != 0:
            self.failed_steps.add("data")
            self.row("data", False, "-", sample.stderr.strip()[-300:])
            return
        # the sample is a slice of the real tree, so extract must be told that less than all of it is there
        ok = self.make("extract-merge", "extract", "merge", ALLOW_PARTIAL="1")
        if ok and self.tokenizer is None:   # as make demo: a SentencePiece model trained on the sample
            model = self.work / "tokenizer" / "gpucheck.model"
            trained = subprocess.run([sys.executable, str(REPO / "demo" / "train_tokenizer.py"), "--input",
                                      str(exp / f"{DATASET}-extracted-merged"), "--output", str(model)],
                                     capture_output=True, text=True)
            ok = trained.returncode == 0
            self.tokenizer = model
        ok = ok and self.make("tokenize", "tokenize")
        ok = ok and self.make("count-mix", "count", "mix", SIZE="base")
        ok = ok and self.make("mix-mid", "mix", SIZE="mid")
        if not ok:
            self.failed_steps.add("data")
            self.row("data", False, "-", self.log_tail(next(iter(self.failed_steps))))
            return
        sizes = {s: json.loads((self.work / "task" / f"train_data_{s}.json").read_text()) for s in ("base", "mid")}
        self.vocab = model_vocab_size(self.tokenizer)
        self.row("data", True, f"mid {sizes['mid']['total_tokens']:,} tokens, base {sizes['base']['total_tokens']:,} "
                 f"(6 epochs); vocabulary {self.vocab:,} ({self.tokenizer.name})")
        self.hf_tokenizer_step()

    def hf_tokenizer_step(self) -> None:
        """make hf-tokenizer: the Hugging Face folder of the training tokenizer (a given HF_TOKENIZER_DIR is
        checked as it is), then the check once more on held-out sample text."""
        from pipeline.errors import PipelineError
        from pipeline.sample import texts
        from pipeline.tokenizer_check import describe_verdict, verify_hf_tokenizer
        self.hf_tokenizer = self.hf_tokenizer or self.work / "hf-tokenizer"
        if not self.make("hf-tokenizer", "hf-tokenizer", HF_TOKENIZER_DIR=str(self.hf_tokenizer)):
            self.failed_steps.add("data")
            self.row("hf_tokenizer", False, "-", self.log_tail("hf-tokenizer"))
            return
        try:
            verdict = verify_hf_tokenizer(self.hf_tokenizer, self.tokenizer, texts(HELD_OUT_DOCS, HELD_OUT_SEED))
        except PipelineError as exc:
            self.failed_steps.add("data")
            self.row("hf_tokenizer", False, "-", str(exc)[:600])
            return
        self.row("hf_tokenizer", True, f"{self.hf_tokenizer}: {describe_verdict(verdict)} "
                 f"(transformers {verdict['versions']['transformers']})")

    def pretrain_base(self) -> None:
        if not self.needs("base_pretrain", "data"):
            self.failed_steps.add("base")
            return
        knobs = dict(SIZE="base", SEED=str(BASE_SEED), DATA_LIST=self.data_list("base"))
        ok = self.make("base-init", "init", BASE_CKPT="scratch", **knobs) and self.make("base-train", "train", **knobs)
        run = self.run_dir("base", BASE_SEED)
        resolved = json.loads((run / "train_args.json").read_text()) if (run / "train_args.json").is_file() else {}
        megatron = resolved.get("megatron") or {}
        self.row("megatron_arguments", bool(megatron),
                 f"{len(resolved.get('arguments', []))} generated arguments, every flag known to the parser of core "
                 f"{megatron.get('core_version')}; job environment {resolved.get('environment')}" if megatron else "-",
                 "" if megatron else self.log_tail("base-train"))
        records = read_run(run).records if run.is_dir() else []
        if not ok or not records:
            self.failed_steps.add("base")
            self.row("base_pretrain", False, "-", self.failure_reason(run) or self.log_tail(
                "base-train" if "base-train" in self.failed_steps else "base-init"))
            return
        self.base_iters = json.loads((run / "train_args.json").read_text())["train_iters"]
        self.base_losses = [r.get("lm_loss") for r in records]
        first, last = self.base_losses[0], self.base_losses[-1]
        ln_vocab = math.log(self.vocab)
        self.row("base_pretrain", records[-1].iteration == self.base_iters and last < ln_vocab - 2,
                 f"{self.base_iters} iterations from random weights: loss {first:.3f} -> {last:.3f} "
                 f"(ln(vocab) = {ln_vocab:.3f})")

    def midtrain(self) -> None:
        for seed in SEEDS:
            knobs = dict(SIZE="mid", SEED=str(seed), DATA_LIST=self.data_list("mid"))
            if "base" in self.failed_steps:
                self.failed_steps.add(f"mid{seed}")
                continue
            ok = self.make(f"mid{seed}-init", "init", BASE_CKPT=str(self.run_dir("base", BASE_SEED)), **knobs)
            ok = ok and self.make(f"mid{seed}-train", "train", **knobs)
            if not ok:
                self.failed_steps.add(f"mid{seed}")
        if not self.needs("midtrain_seeds", "base"):
            return
        self.row("midtrain_seeds", not {f"mid{s}" for s in SEEDS} & self.failed_steps,
                 f"make init BASE_CKPT=<base run> + make train for seeds {SEEDS}",
                 "; ".join(self.failure_reason(self.run_dir("mid", s)) or self.log_tail(f"mid{s}-train")
                           for s in SEEDS if f"mid{s}" in self.failed_steps))
        if not self.needs("midtraining", "mid1"):
            return
        run = self.run_dir("mid", 1)
        record = json.loads((run / "train_args.json").read_text())
        records = read_run(run).records
        out = "".join(p.read_text(errors="replace") for p in sorted(run.glob("train-*.out")))
        n = record["train_iters"]
        first = records[0]

        # starts at iteration 1 of its own iterations, consumed samples counted from 0
        consumed = first.get("consumed_samples")
        self.row("starts_at_step_0", first.iteration == 1 and first.train_iters == n and consumed == GLOBAL_BATCH,
                 f"first logged iteration {first.iteration}/{first.train_iters}, consumed samples {consumed:.0f} "
                 f"after it (= 1 x global batch {GLOBAL_BATCH})")

        # the first loss continues the base's last, far below a random model's
        base_tail = self.base_losses[-10:]
        base_mean = sum(base_tail) / len(base_tail)
        loss = first.get("lm_loss")
        ln_vocab = math.log(self.vocab)
        self.row("loss_continues_base", abs(loss - base_mean) <= LOSS_CONTINUES_WITHIN and loss < ln_vocab - 2,
                 f"first loss {loss:.3f}; base's last 10 mean {base_mean:.3f} (last {self.base_losses[-1]:.3f}); "
                 f"ln(vocab) {ln_vocab:.3f}")

        # the weights and the optimizer state were loaded from the start (Megatron's log line and Adam's step)
        loaded = LOADED.findall(out)
        info = subprocess.run([sys.executable, str(REPO / "scripts" / "ckpt_info.py"), "--ckpt",
                               str(run / "checkpoints"), "--json"], capture_output=True, text=True)
        step = json.loads(info.stdout).get("optimizer_common_step") if info.returncode == 0 else None
        from_start = [(path, int(it)) for path, it in loaded if "/start" in path]
        want_step = self.base_iters + n
        self.row("optimizer_loaded", bool(from_start) and from_start[0][1] == 0 and step == want_step,
                 f"Megatron: 'successfully loaded checkpoint from {from_start[0][0] if from_start else '?'} ... at "
                 f"iteration {from_start[0][1] if from_start else '?'}'; Adam step of the final save {step} "
                 f"(= base {self.base_iters} + mid {n}: {want_step})")

        # the LR schedule of the params: linear from lr to 0 over the run, no warmup
        lr = record["schedule"]["lr"]
        worst = max(abs(r.get("learning_rate") - lr * (1 - r.iteration / n)) for r in records)
        self.row("lr_schedule", worst <= lr * 1e-5 and records[-1].get("learning_rate") == 0.0,
                 f"{len(records)} logged LRs vs {lr:g} x (1 - i/{n}): max deviation {worst:.2e}; "
                 f"first {records[0].get('learning_rate'):.6e}, last {records[-1].get('learning_rate'):g}")

        # as many iterations as the mixture says
        tokens = record["total_tokens"]
        derived = math.ceil(tokens / (128 * GLOBAL_BATCH))
        saved = (run / "checkpoints" / "latest_checkpointed_iteration.txt").read_text().strip()
        self.row("iterations", records[-1].iteration == n == derived and saved == str(n),
                 f"ran {records[-1].iteration}, --train-iters {n}, ceil({tokens:,} / 128 / {GLOBAL_BATCH}) = "
                 f"{derived}, saved iteration {saved}")

    def convert_and_compare(self) -> None:
        for seed in SEEDS:
            if f"mid{seed}" in self.failed_steps or not self.make(
                    f"convert{seed}", "convert", SIZE="mid", SEED=str(seed), DATA_LIST=self.data_list("mid"),
                    CONVERTER="native", HF_TOKENIZER_DIR=str(self.hf_tokenizer), CONVERT_DTYPE="fp32"):
                self.failed_steps.add(f"convert{seed}")
        if not self.needs("logits_vs_megatron", "mid1", "convert1"):
            return
        import torch
        run = self.run_dir("mid", 1)
        n = json.loads((run / "train_args.json").read_text())["train_iters"]
        hf = run / "checkpoints_hf" / f"iter_{n:07d}"
        ids = self.sample_ids(run)
        torch.save(ids, self.work / "ids.pt")
        args = [a for a in (run / "train_args.txt").read_text().splitlines()]
        args = drop_pairs(args, {"--load", "--save", "--save-interval", "--wandb-project", "--wandb-entity",
                                 "--wandb-exp-name", "--wandb-save-dir"})
        args += ["--load", str(run / "checkpoints"), "--no-load-optim", "--no-load-rng"]
        env = dict(os.environ, MEGATRON_PATH=str(self.megatron))
        for line in (run / "train_env.txt").read_text().splitlines():
            action, name, *value = line.split()
            if action == "unset":
                env.pop(name, None)
            else:
                env[name] = value[0]
        log = self.work / "logs" / "megatron-forward.log"
        with open(log, "w") as handle:
            forward = REPO / "tests" / "gpu" / "megatron_forward.py"
            result = subprocess.run([self.train_python, "-m", "torch.distributed.run", "--nproc-per-node", "1",
                                     "--master-port", str(self.port + 1), str(forward),
                                     str(self.work / "ids.pt"), str(self.work / "megatron_logits.pt"), *args],
                                    stdout=handle, stderr=subprocess.STDOUT, env=env, cwd=self.work)
        if result.returncode != 0:
            self.row("logits_vs_megatron", False, "-", self.log_tail("megatron-forward"))
            return
        reference = torch.load(self.work / "megatron_logits.pt")
        from transformers import LlamaForCausalLM
        torch.backends.cuda.matmul.allow_tf32 = False
        model = LlamaForCausalLM.from_pretrained(str(hf), dtype=torch.float32,
                                                 attn_implementation="eager").cuda().eval()
        with torch.no_grad():
            logits = model(ids.cuda()).logits.float().cpu()
        megatron = reference["logits"][..., :self.vocab]
        diff = (logits - megatron).abs().max().item()
        agree = (logits.argmax(-1) == megatron.argmax(-1)).float().mean().item()
        self.row("logits_vs_megatron", diff <= LOGIT_TOLERANCE,
                 f"max abs logit difference {diff:.2e} (fp32, {tuple(ids.shape)} tokens, logits up to "
                 f"{megatron.abs().max().item():.1f}); argmax agreement {agree:.4f}; "
                 f"iteration {reference['iteration']}")

    def sample_ids(self, run: Path):
        """Two sequences of the run's data: the first tokens of its first data file."""
        import numpy as np
        import torch
        from pipeline.datalist import data_path_args, read_list
        from pipeline.indexed import read_header
        prefix = data_path_args(read_list(Path(self.data_list("mid"))), self.work / "exp")[1]
        header = read_header(f"{prefix}.idx")
        tokens = np.fromfile(f"{prefix}.bin", dtype=header.dtype, count=2 * 128)
        return torch.from_numpy(tokens.astype(np.int64)).view(2, 128)

    def soup_report_status(self) -> None:
        if self.needs("soup", "convert1", "convert2"):
            ok = self.make("soup", "soup-config", "soup", SIZE="mid", SEEDS=" ".join(map(str, SEEDS)),
                           SOUP_NAME="gpu-check-soup", SOUP_DTYPE="float32")
            record = self.work / "exp" / "soups" / "gpu-check-soup" / "soup.json"
            verified = json.loads(record.read_text()).get("verification", {}) if record.is_file() else {}
            if not ok:
                self.failed_steps.add("soup")
            self.row("soup", ok and bool(verified),
                     f"mergekit linear of seeds {SEEDS}: {verified.get('tensors_checked', '?')} tensors checked, "
                     f"max abs error {verified.get('max_abs_error', '?')} "
                     f"({verified.get('exact_float32_tensors', '?')} exact in float32)" if ok else "-",
                     "" if ok else self.log_tail("soup"))
        if self.needs("tokenizer_loss", "convert1", "convert2", "soup"):
            self.tokenizer_loss()
        if self.needs("report_status", "mid1", "mid2"):
            ok = self.make("report", "report", SIZE="mid", SEEDS=" ".join(map(str, SEEDS)), REPORT_NAME="gpu-check")
            ok = self.make("status", "status") and ok
            status = (self.work / "logs" / "status.log").read_text(errors="replace")
            self.row("report_status", ok and "seed1" in status,
                     f"report in {self.work / 'exp' / 'reports' / 'gpu-check'}; status lists "
                     f"{status.count('seed')} run rows" if ok else "-", "" if ok else self.log_tail("report"))


    def tokenizer_loss(self) -> None:
        """The converted seeds and the soup scored on held-out sample text: through their own Hugging Face
        tokenizer (what a user, and the evaluation, feeds them) and through SentencePiece's ids (what Megatron
        trained on); the two losses must agree, and be near the runs' last training losses."""
        from pipeline.sample import texts
        models = {f"seed{seed}": self.converted(seed) for seed in SEEDS}
        models["soup"] = self.work / "exp" / "soups" / "gpu-check-soup"
        last = {}
        for seed in SEEDS:
            records = read_run(self.run_dir("mid", seed)).records if self.run_dir("mid", seed).is_dir() else []
            tail = [r.get("lm_loss") for r in records[-10:] if r.get("lm_loss") is not None]
            last[f"seed{seed}"] = sum(tail) / len(tail) if tail else None
        known = [v for v in last.values() if v is not None]
        last["soup"] = sum(known) / len(known) if len(known) == len(SEEDS) else None
        held_out = texts(HELD_OUT_DOCS, HELD_OUT_SEED)
        figures, ok = [], True
        for name, folder in models.items():
            scored = tokenization_losses(folder, self.tokenizer, held_out)
            agree = abs(scored["hf"] - scored["sp"]) <= TOKENIZATION_LOSS_TOLERANCE
            near = last[name] is None or abs(scored["sp"] - last[name]) <= LOSS_CONTINUES_WITHIN
            ok = ok and agree and near
            reference = f", Megatron's last 10 {last[name]:.3f}" if last[name] is not None else ""
            figures.append(f"{name} {scored['hf']:.4f} / {scored['sp']:.4f}{reference} "
                           f"({scored['equal_documents']}/{len(held_out)} docs id-equal)")
        self.row("tokenizer_loss", ok, f"loss per token on {len(held_out)} held-out documents, own Hugging Face "
                 f"tokenizer / SentencePiece ids (tolerance {TOKENIZATION_LOSS_TOLERANCE:g}, training losses within "
                 f"{LOSS_CONTINUES_WITHIN:g}): " + "; ".join(figures))

    def converted(self, seed: int) -> Path:
        folders = sorted((self.run_dir("mid", seed) / "checkpoints_hf").glob("iter_*"))
        return folders[-1] if folders else self.run_dir("mid", seed) / "checkpoints_hf" / "missing"


def tokenization_losses(folder: Path, sp_model: Path, texts: list[str], device: str | None = None) -> dict:
    """Mean next-token loss of the Hugging Face model in `folder` on `texts` laid out as Megatron trains (each
    document [BOS] + pieces + [EOD], concatenated, cut into windows of the model's context length), once with
    the ids of the folder's own tokenizer (tokenizer(text) + EOS) and once with SentencePiece's (Megatron's
    Llama2Tokenizer documents, pipeline.tokenization)."""
    import numpy as np
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from pipeline.tokenization import Llama2Engine, TokenizerSpec
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).to(device).eval()
    window = model.config.max_position_embeddings
    own = [tokenizer(text)["input_ids"] + [tokenizer.eos_token_id] for text in texts]
    flat, lengths = Llama2Engine(TokenizerSpec("Llama2Tokenizer", str(sp_model))).encode(texts)
    ends = np.cumsum(lengths)
    trained = [flat[end - length:end].tolist() for end, length in zip(ends, lengths)]

    def loss(documents: list[list[int]]) -> float:
        stream = torch.tensor([i for doc in documents for i in doc], dtype=torch.long)
        usable = stream[:len(stream) // window * window].view(-1, window)
        total, count = 0.0, 0
        with torch.no_grad():
            for batch in usable.split(16):
                logits = model(batch.to(device)).logits.float()
                nll = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]),
                                                        batch[:, 1:].reshape(-1).to(device), reduction="sum")
                total += float(nll)
                count += batch[:, 1:].numel()
        return total / count

    return {"hf": loss(own), "sp": loss(trained), "equal_documents": sum(a == b for a, b in zip(own, trained)),
            "tokens": sum(map(len, trained))}


def drop_pairs(args: list[str], flags: set[str]) -> list[str]:
    kept, skip = [], False
    for arg in args:
        if skip:
            skip = False
        elif arg in flags:
            skip = True
        else:
            kept.append(arg)
    return kept


def megatron_description(megatron: Path, python: str) -> str:
    from pipeline.megatron_features import probe
    try:
        return probe(megatron, python).describe()
    except Exception as exc:  # noqa: BLE001 (shown in the table)
        return f"cannot ask its parser: {exc}"


def render(rows: list[Row]) -> str:
    width = max(len(r.name) for r in rows)
    return "\n".join(f"{r.status:4}  {r.name:{width}}  {r.figure}" + (f"\n      {'':{width}}  {r.detail}"
                                                                      if r.detail else "") for r in rows)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--megatron-path", required=True, type=Path, help="MEGATRON_PATH: the Megatron-LM checkout")
    parser.add_argument("--work-dir", required=True, type=Path, help="everything is written here (emptied first)")
    parser.add_argument("--tokenizer-model", default="", help="TOKENIZER_MODEL (default: one trained on the sample)")
    parser.add_argument("--hf-tokenizer-dir", default="", help="HF_TOKENIZER_DIR: a published Hugging Face folder of "
                        "TOKENIZER_MODEL, used after the check (default: make hf-tokenizer builds one)")
    parser.add_argument("--train-python", default="", help="TRAIN_PYTHON: the Python that runs Megatron (default: "
                        "ENV_DIR's venv python, else python3)")
    parser.add_argument("--env-dir", default="", help="ENV_DIR: a training environment (make env) whose activate.sh "
                        "the jobs source")
    parser.add_argument("--json", default="", help="also write the rows and versions here")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    work = args.work_dir.absolute()
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    env_dir = Path(args.env_dir).absolute() if args.env_dir else None
    python = args.train_python or (str(env_dir / "venv" / "bin" / "python") if env_dir else "python3")
    check = Check(work, args.megatron_path.absolute(), Path(args.tokenizer_model).absolute()
                  if args.tokenizer_model else None, python, env_dir,
                  Path(args.hf_tokenizer_dir).absolute() if args.hf_tokenizer_dir else None,
                  port=20000 + 2 * (os.getpid() % 10000))
    print(f"gpu-check: Megatron-LM {check.megatron}; work folder {work}", flush=True)
    started = time.monotonic()
    check.data()
    check.pretrain_base()
    check.midtrain()
    check.convert_and_compare()
    check.soup_report_status()
    versions = versions_here(check)
    print(f"\ngpu-check results ({time.monotonic() - started:.0f} s): {versions}")
    print(render(check.rows))
    if args.json:
        Path(args.json).write_text(json.dumps({"versions": versions, "rows": [asdict(r) for r in check.rows],
                                               "seconds": round(time.monotonic() - started)}, indent=2) + "\n")
    return 1 if any(r.status != "PASS" for r in check.rows) else 0


def versions_here(check: Check) -> str:
    probe = subprocess.run([check.train_python, "-c", "import torch; print(torch.__version__, "
                            "torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU')"],
                           capture_output=True, text=True)
    return f"{megatron_description(check.megatron, check.train_python)}; torch/GPU: {probe.stdout.strip()}"


if __name__ == "__main__":
    sys.exit(main())
