"""The steps of make gpu-check that need no GPU run here too: a break there (a renamed knob, a partial sample)
would otherwise show only on the GPU machine."""
from __future__ import annotations

from pathlib import Path

from gpu.gpu_check import SEEDS, Check, hf_tokenizer_folder

UPSTREAM = Path(__file__).resolve().parent / "data" / "upstream_ckpt"


def test_gpu_check_data_step_passes_on_cpu(tmp_path):
    check = Check(tmp_path / "work", tmp_path / "no-megatron", None, "python3")
    check.data()
    rows = {r.name: r for r in check.rows}
    assert rows["data"].status == "PASS", rows["data"]
    assert "mid" in rows["data"].figure and "base" in rows["data"].figure
    assert not check.failed_steps


def test_gpu_check_soup_step_passes_on_cpu(tmp_path):
    """The soup row on two runs converted from checkpoints upstream Megatron-LM wrote (its GPU steps' output)."""
    from pipeline.convert_native import convert_checkpoint
    check = Check(tmp_path / "work", tmp_path / "no-megatron", None, "python3")
    tokenizer = hf_tokenizer_folder(UPSTREAM / "tokenizer.model", tmp_path / "hf-tokenizer")
    for seed in SEEDS:
        convert_checkpoint(UPSTREAM / f"mid-seed{seed}", check.run_dir("mid", seed) / "checkpoints_hf" / "iter_0000050",
                           tokenizer=tokenizer, dtype="fp32", show_progress=False, log=lambda _: None)
    check.failed_steps |= {"mid1", "mid2"}     # no training logs here: the report row is skipped
    check.soup_report_status()
    rows = {r.name: r for r in check.rows}
    assert rows["soup"].status == "PASS", rows["soup"]
    assert rows["report_status"].status == "SKIP"
