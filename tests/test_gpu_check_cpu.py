"""The steps of make gpu-check that need no GPU run here too: a break there (a renamed knob, a partial sample)
would otherwise show only on the GPU machine."""
from __future__ import annotations

import math
from pathlib import Path

import pytest

from gpu.gpu_check import SEEDS, TOKENIZATION_LOSS_TOLERANCE, Check, tokenization_losses

UPSTREAM = Path(__file__).resolve().parent / "data" / "upstream_ckpt"


def test_gpu_check_data_step_passes_on_cpu(tmp_path):
    check = Check(tmp_path / "work", tmp_path / "no-megatron", None, "python3")
    check.data()
    rows = {r.name: r for r in check.rows}
    assert rows["data"].status == "PASS", rows["data"]
    assert "mid" in rows["data"].figure and "base" in rows["data"].figure
    assert rows["hf_tokenizer"].status == "PASS", rows["hf_tokenizer"]
    assert "40 probes + 60 documents" in rows["hf_tokenizer"].figure
    assert (check.hf_tokenizer / "tokenizer.json").is_file(), "built by make hf-tokenizer"
    assert not check.failed_steps


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """make gpu-check's soup step and its tokenizer rows on two runs converted from checkpoints upstream Megatron-LM
    wrote (its GPU steps' output), with the folder make hf-tokenizer builds for their tokenizer."""
    from pipeline.convert_native import convert_checkpoint
    from pipeline.hf_tokenizer import write_hf_tokenizer
    work = tmp_path_factory.mktemp("gpu-check") / "work"
    check = Check(work, work / "no-megatron", UPSTREAM / "tokenizer.model", "python3")
    check.hf_tokenizer = work / "hf-tokenizer"
    write_hf_tokenizer(UPSTREAM / "tokenizer.model", check.hf_tokenizer)
    for seed in SEEDS:
        convert_checkpoint(UPSTREAM / f"mid-seed{seed}", check.run_dir("mid", seed) / "checkpoints_hf" / "iter_0000050",
                           tokenizer=check.hf_tokenizer, dtype="fp32", show_progress=False, log=lambda _: None)
    check.failed_steps |= {"mid1", "mid2"}     # no training logs here: the report row is skipped
    check.soup_report_status()
    return check


def test_gpu_check_soup_step_passes_on_cpu(converted):
    rows = {r.name: r for r in converted.rows}
    assert rows["soup"].status == "PASS", rows["soup"]
    assert rows["report_status"].status == "SKIP"


def test_gpu_check_tokenizer_loss_row_on_cpu(converted):
    """The seeds and the soup give the same loss through their own tokenizer as through SentencePiece's ids, far
    below a random model's (there are no training logs here, so the closeness to Megatron's last losses is the
    GPU run's to show)."""
    rows = {r.name: r for r in converted.rows}
    row = rows["tokenizer_loss"]
    assert row.status == "PASS", row
    for name in ("seed1", "seed2", "soup"):
        assert f"{name} " in row.figure and "60/60 docs id-equal" in row.figure
    from pipeline.sample import texts
    from gpu.gpu_check import HELD_OUT_DOCS, HELD_OUT_SEED
    scored = tokenization_losses(converted.converted(1), UPSTREAM / "tokenizer.model",
                                 texts(HELD_OUT_DOCS, HELD_OUT_SEED), device="cpu")
    assert abs(scored["hf"] - scored["sp"]) <= TOKENIZATION_LOSS_TOLERANCE
    assert scored["sp"] < math.log(546) - 2, "a trained model: well below ln(vocabulary)"
