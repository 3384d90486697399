"""What the evaluation tests and make gpu-check's eval step share: a small multiple-choice dataset repository
(served by tests/hub_server.py, staged by make eval-data), a suite with its task YAML, held-out text of the
built-in sample, and the log-likelihood cross-check between the harness and a model's own forward pass."""
from __future__ import annotations

import io
import json
import math
from pathlib import Path

from hub_server import HubFile, HubRepo

MC_REPO = "pipeline-tests/tiny-mc"
MC_TASK = "tiny_mc"
PPL_TASK = "local_ppl"
# question, choices, index of the answer: plain facts, so that a trained model could do better than chance
MC_ROWS = [
    ("The sky on a clear day is", ["blue", "green", "red"], 0),
    ("Water freezes at a temperature of zero degrees", ["Fahrenheit", "Celsius", "Kelvin"], 1),
    ("The opposite of hot is", ["warm", "cold", "loud"], 1),
    ("Two plus two equals", ["three", "four", "five"], 1),
    ("A week has seven", ["days", "months", "years"], 0),
    ("The capital of Japan is", ["Osaka", "Kyoto", "Tokyo"], 2),
    ("Cats are a kind of", ["animal", "plant", "stone"], 0),
    ("The sun rises in the", ["west", "east", "north"], 1),
]
README = """---
configs:
- config_name: main
  data_files:
  - split: train
    path: main/train.jsonl
  - split: test
    path: main/test.jsonl
---
# tiny-mc

A few multiple-choice questions for the pipeline's evaluation tests.
"""
TASK_YAML = f"""task: {MC_TASK}
dataset_path: {MC_REPO}
dataset_name: main
training_split: train
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{question}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: label
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
  - metric: acc_norm
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
"""


def _jsonl(rows) -> bytes:
    return "".join(json.dumps({"question": q, "choices": c, "label": a}) + "\n" for q, c, a in rows).encode()


def mc_repo(**fields) -> HubRepo:
    """The dataset repository: README (its configs) and main/{train,test}.jsonl."""
    files = {"README.md": HubFile(README.encode()), "main/train.jsonl": HubFile(_jsonl(MC_ROWS[:2])),
             "main/test.jsonl": HubFile(_jsonl(MC_ROWS[2:]))}
    return HubRepo(MC_REPO, files, **fields)


def write_suite(folder: Path, *, device: str = "any", extra: str = "") -> Path:
    """A suite of the tiny multiple-choice task (hub data) and local_ppl (EVAL_TEXT), with its task folder."""
    (folder / "tasks").mkdir(parents=True, exist_ok=True)
    (folder / "tasks" / f"{MC_TASK}.yaml").write_text(TASK_YAML)
    suite = folder / "tiny.yaml"
    suite.write_text(f"""description: a tiny multiple-choice task and the perplexity of held-out text
device: {device}
include: [tasks]
tasks:
  - task: {MC_TASK}
    num_fewshot: 0
    metrics: ["acc,none", "acc_norm,none"]
    dataset: {{repo: {MC_REPO}, revision: null}}
  - task: {PPL_TASK}
    num_fewshot: 0
    metrics: ["bits_per_byte,none", "word_perplexity,none"]
    dataset: EVAL_TEXT
{extra}""")
    return suite


def held_out_text(raw: Path, out: Path, limit: int = 6) -> Path:
    """Held-out documents of the sample (demo/demo_data.py's raw tree): its GSM8K test split, which the dataset
    description leaves out of training (`exclude`), as {"text": ...} lines."""
    import zstandard
    lines = []
    for path in sorted(raw.glob("data/math/gsm8k/*/test/*.jsonl.zst")):
        with open(path, "rb") as handle:
            text = zstandard.ZstdDecompressor().stream_reader(handle).read().decode("utf-8")
        for line in text.splitlines():
            if line.strip():
                lines.append(json.dumps({"text": json.loads(line)["text"]}, ensure_ascii=False))
    if not lines:
        raise FileNotFoundError(f"{raw}: no GSM8K test split (data/math/gsm8k/*/test/*.jsonl.zst)")
    lines.sort(key=len)    # the first, shortest, fits one window of a tiny model: the cross-check scores it
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines[:limit]) + "\n")
    return out


def harness_loglikelihood(result: Path) -> tuple[str, float]:
    """(text, log-likelihood) of the first local_ppl document from the harness's own samples file."""
    samples = sorted(result.glob(f"harness/*/*/samples_{PPL_TASK}_*.jsonl"))
    first = json.loads(io.open(samples[0], encoding="utf-8").readline())
    return first["doc"]["text"], float(first["filtered_resps"][0])


def forward_loglikelihood(model_dir: Path, text: str, device: str = "cpu", dtype: str = "float32") -> float:
    """The converted model's own forward pass over `text` as Megatron trained it: [BOS] + pieces (what
    tokenizer(text) gives), each piece scored after the tokens before it; BOS itself is not scored. The
    harness's rolling log-likelihood of a text that fits one window must equal it."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=getattr(torch, dtype)).to(device).eval()
    ids = tokenizer(text).input_ids
    if ids[:1] != [tokenizer.bos_token_id]:
        raise ValueError(f"{model_dir}: its tokenizer does not start a text with BOS, as Megatron's documents do")
    if len(ids) - 1 > model.config.max_position_embeddings:
        raise ValueError(f"{len(ids) - 1} tokens: longer than one window of the model; choose a shorter text")
    tokens = torch.tensor([ids], device=device)
    with torch.no_grad():
        logits = model(tokens).logits[0, :-1].float()
    total = torch.log_softmax(logits, -1).gather(1, tokens[0, 1:, None]).sum().item()
    if not math.isfinite(total):
        raise ValueError(f"{model_dir}: the forward pass gave {total}")
    return total
