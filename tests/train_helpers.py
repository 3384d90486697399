"""Fixtures for the training-step tests: a real torch_dist checkpoint, tokenized data, fake launchers.

Writing a checkpoint with megatron-core costs seconds, so `pretrained_checkpoint` builds one per
pytest process and hands out the same folder (tests must not modify it: they only read it, as
make init does). Everything else is written fresh into each test's tmp_path.
"""
from __future__ import annotations

import argparse
import json
import math
import textwrap
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch

from megatron_fixture import write_torch_dist
from pipeline.datalist import Entry, read_list, write_list
from pipeline.indexed import IndexedDatasetWriter
from conftest import write_executable

MEGATRON_OPTIONS = Path(__file__).resolve().parent / "data" / "megatron_options"
PRETRAIN_ITER = 30
CONSUMED = 240
_CACHE: dict[str, Path] = {}

# the LLM-jp 50B ratios: weight = ceil(tokens x ratio)
RATIOS_50B = {"dclm": Fraction("0.0323"), "flan": Fraction("0.5"), "pes2o": Fraction("0.0515")}


def megatron_options(name: str):
    """What a real Megatron-LM parser accepts: the saved answer of scripts/pipeline/megatron_probe.py for
    `upstream` (NVIDIA main, core 0.20) or `llmjp-v4` (core 0.10); the source commit is in the file."""
    from pipeline.megatron_features import MegatronFeatures
    found = json.loads((MEGATRON_OPTIONS / f"{name}.json").read_text(encoding="utf-8"))
    return MegatronFeatures(found["source"], found["core_version"], frozenset(found["options"]))


def common_state(iteration: int = PRETRAIN_ITER) -> dict:
    from megatron.core.transformer.enums import AttnBackend
    args = argparse.Namespace(num_layers=2, hidden_size=8, ffn_hidden_size=16, num_attention_heads=2,
                              seq_length=16, global_batch_size=8, micro_batch_size=1, train_iters=iteration,
                              consumed_train_samples=CONSUMED, consumed_valid_samples=16, skipped_train_samples=0,
                              iteration=iteration, attention_backend=AttnBackend.flash,
                              params_dtype=torch.bfloat16, tensor_model_parallel_size=1,
                              pipeline_model_parallel_size=1, data_parallel_size=1, world_size=1, lr=3e-4,
                              lr_decay_style="cosine")
    return {"args": args, "iteration": iteration, "checkpoint_version": 3.0,
            "opt_param_scheduler": {"max_lr": 3e-4, "min_lr": 3e-5, "warmup_steps": 80, "decay_steps": 2400,
                                    "decay_style": "cosine", "num_steps": CONSUMED},
            "optimizer": {"optimizer": {"state": {"common_step": iteration}, "param_groups": []}},
            "num_floating_point_operations_so_far": 1.5e12}


TENSORS = {"decoder.layers.self_attention.linear_qkv.weight": torch.arange(24.0).reshape(2, 3, 4),
           "optimizer.state.exp_avg.decoder.layers.self_attention.linear_qkv.weight": torch.full((2, 3, 4), 0.5)}


def pretrained_checkpoint(factory, *, common_in_shards: bool = False) -> Path:
    """A real torch_dist checkpoints folder at iteration 30 (built once per process; read-only)."""
    key = "shards" if common_in_shards else "legacy"
    if key not in _CACHE:
        root = factory.mktemp(f"pretrain-{key}") / "checkpoints"
        write_torch_dist(root, PRETRAIN_ITER, TENSORS, common_state(), common_in_shards=common_in_shards)
        _CACHE[key] = root
    return _CACHE[key]


def snapshot(folder: Path) -> dict[str, tuple[int, int, bytes]]:
    """(size, mtime_ns, content) of every file below `folder`, to prove it was left untouched."""
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns, p.read_bytes())
            for p in sorted(folder.rglob("*")) if p.is_file()}


def write_tokenized(exp: Path, prefixes: dict[str, int], seed: int = 0) -> list[Entry]:
    """Tiny valid Megatron datasets `<exp>/<prefix>.{bin,idx}`; returns list entries with their token counts."""
    rng = np.random.default_rng(seed)
    entries = []
    for prefix, tokens in prefixes.items():
        with IndexedDatasetWriter(exp / prefix, np.int32) as writer:
            left = tokens
            while left > 0:
                n = min(left, 7)
                writer.add_document(rng.integers(3, 1000, n))
                left -= n
            writer.finalize()
        entries.append(Entry(tokens, prefix))
    return entries


def data_list(path: Path, entries: list[Entry]) -> Path:
    write_list(path, entries, "test mixture")
    return path


def llmjp_50b_list(all_list: Path, out: Path) -> Path:
    """The LLM-jp 50B mixture built from the real all-files list: weight = ceil(tokens x ratio)."""
    entries = [Entry(math.ceil(e.weight * RATIOS_50B.get(e.prefix.split("/")[1], Fraction(1))), e.prefix)
               for e in read_list(all_list)]
    return data_list(out, entries)


def write_fake_parser(megatron: Path, options: str = "llmjp-v4") -> None:
    """Give a stand-in checkout a parser with exactly the options of the real one named
    (tests/data/megatron_options), so a job's probe of it, and what the job decides from that, are
    those of that Megatron."""
    training = megatron / "megatron" / "training"
    training.mkdir(parents=True, exist_ok=True)
    (training / "arguments.py").write_text(textwrap.dedent(f"""\
        import argparse, json
        def parse_args(ignore_unknown_args=False):
            found = json.load(open({str(MEGATRON_OPTIONS / f"{options}.json")!r}))
            parser = argparse.ArgumentParser(allow_abbrev=False)
            for option in set(found["options"]) - {{"--help"}}:
                parser.add_argument(option, nargs="?")
            return parser.parse_known_args()[0]
        """))


def fake_megatron(folder: Path, options: str = "llmjp-v4") -> Path:
    """A stand-in checkout for launch tests (the job runs mpirun/torchrun stand-ins, never it)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "pretrain_gpt.py").write_text("raise SystemExit('not the real Megatron')\n")
    write_fake_parser(folder, options)
    return folder


def distributed_megatron(folder: Path, options: str = "upstream") -> Path:
    """A stand-in checkout whose pretrain_gpt.py does what every Megatron rank does with its launch, without a
    model: joins the torch.distributed group (gloo) that torchrun's variables describe, sums each rank's number
    across it, and writes what it saw to launch-rank<N>.json in its working folder. Rank 0 then "trains": it
    saves the checkpoint it was told to --load as the iteration of --train-iters under --save, with the
    tracker, as Megatron's save would, so the jobs after training (convert, soup) have a real one to read.
    Started by torchrun or by mpirun through pbs/rank_env.sh (then GROUP_RANK, torchrun's node rank, is None)."""
    megatron = fake_megatron(folder, options)
    (megatron / "pretrain_gpt.py").write_text(textwrap.dedent("""\
        import json, os, shutil, socket, sys
        from pathlib import Path
        import torch
        import torch.distributed as dist

        dist.init_process_group("gloo")
        rank, world = dist.get_rank(), dist.get_world_size()
        total = torch.tensor([rank + 1])
        dist.all_reduce(total)
        seen = {"rank": rank, "world_size": world, "sum": int(total), "local_rank": os.environ["LOCAL_RANK"],
                "node_rank": os.environ.get("GROUP_RANK"), "node": os.environ.get("SLURMD_NODENAME"),
                "host": socket.gethostname(), "local_world_size": os.environ.get("LOCAL_WORLD_SIZE"),
                "master_addr": os.environ["MASTER_ADDR"], "master_port": os.environ["MASTER_PORT"]}
        Path(f"launch-rank{rank}.json").write_text(json.dumps(seen))
        args = sys.argv[1:]
        if rank == 0:
            load, save, iters = (Path(args[args.index(f) + 1]) for f in ("--load", "--save", "--train-iters"))
            loaded = (load / "latest_checkpointed_iteration.txt").read_text().strip()
            shutil.copytree(load / f"iter_{int(loaded):07d}", save / f"iter_{int(str(iters)):07d}")
            (save / "latest_checkpointed_iteration.txt").write_text(str(iters))
        dist.barrier()
        dist.destroy_process_group()
        """))
    return megatron


def fake_mpirun(bin_dir: Path) -> Path:
    """An `mpirun` that records its argv and environment to $FAKE_MPIRUN_RECORD and prints a line."""
    return write_executable(bin_dir / "mpirun", textwrap.dedent("""\
        #!/usr/bin/env python3
        import json, os, sys
        if len(sys.argv) > 1 and sys.argv[1].endswith("megatron_probe.py"):   # the job asking the parser
            os.execv(sys.executable, [sys.executable, *sys.argv[1:]])
        keys = ("MASTER_ADDR", "MASTER_PORT", "CUDA_DEVICE_MAX_CONNECTIONS", "NVTE_FLASH_ATTN", "NVTE_FUSED_ATTN",
                "NVTE_UNFUSED_ATTN", "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "FROM_ACTIVATE")
        with open(os.environ["FAKE_MPIRUN_RECORD"], "w") as handle:
            json.dump({"argv": sys.argv[1:], "cwd": os.getcwd(), "env": {k: os.environ.get(k) for k in keys}}, handle)
        print(" [2026-01-01 00:00:00] iteration        1/       4 | consumed samples:            8 | "
              "lm loss: 9.9E+00 |")
        print("fake megatron warning", file=sys.stderr)
        sys.exit(int(os.environ.get("FAKE_MPIRUN_STATUS", "0")))
        """))


def fake_env_dir(folder: Path, megatron: Path) -> Path:
    """An ENV_DIR whose activate.sh exports what the real one does (without modules or a venv)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "activate.sh").write_text(textwrap.dedent(f"""\
        export ENV_DIR={str(folder)!r}
        export MEGATRON_PATH={str(megatron)!r}
        export TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1
        export FROM_ACTIVATE=yes
        """))
    return folder


def read_json(path: Path) -> dict:
    return json.loads(Path(path).read_text())



V4 = "7.7b_v4_3.5t_tokenizer_v3.1"
TASK = "v4-dolmino-mix-1124"
PREFIXES = {"dolmino-mix-1124-v3.1-tokenized/dclm/dclm-0000-0009_text_document": 40,
            "dolmino-mix-1124-v3.1-tokenized/math/gsm8k-all_text_document": 25,
            "dolmino-mix-1124-v3.1-tokenized/wiki/wiki-all_text_document": 9}


class TrainSetup:
    """What make train needs in tests: tokenized data and its list, a tokenizer file, a fake Megatron, and
    runs initialised from a pretrained checkpoint (the `setup` fixture of conftest.py)."""

    def __init__(self, exp, tmp, pretrained):
        self.exp, self.tmp, self.pretrained = exp, tmp, pretrained
        self.list = data_list(tmp / "train_data_50B.sh", write_tokenized(exp, PREFIXES))
        self.tokenizer = tmp / "tok" / "llm-jp-tokenizer-100k.ver3.1.model"
        self.tokenizer.parent.mkdir()
        self.tokenizer.write_bytes(b"sentencepiece")
        self.megatron = fake_megatron(tmp / "Megatron-LM")

    def knobs(self, **extra) -> list[str]:
        values = {"TASK": TASK, "PARAM": V4, "SIZE": "50B", "DATA_LIST": str(self.list),
                  "TOKENIZER_MODEL": str(self.tokenizer), "MEGATRON_PATH": str(self.megatron), **extra}
        return [f"{k}={v}" for k, v in values.items()]

    def run(self, seed, task=TASK, param=V4, size="50B"):
        return self.exp / "runs" / task / param / size / f"seed{seed}"

    def init(self, *seeds, **kw):
        from pipeline.midtrain import init_run
        for seed in seeds:
            init_run(self.run(seed, **kw), self.pretrained)


def fake_launch(bin_dir: Path, env_root: Path, record: Path) -> dict[str, str]:
    """A fake mpirun and python in bin_dir, and an ENV_DIR whose activate.sh sets MEGATRON_PATH; returns the
    environment changes that put them first on PATH and make the launch recorded into `record`."""
    import os
    fake_mpirun(bin_dir)
    write_executable(bin_dir / "python", (bin_dir / "mpirun").read_text())
    fake_env_dir(env_root, fake_megatron(env_root / "src" / "Megatron-LM"))
    return {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "FAKE_MPIRUN_RECORD": str(record)}
