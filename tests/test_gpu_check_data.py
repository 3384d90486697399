"""The data step of make gpu-check runs without a GPU: a break there would only show on the GPU machine."""
from __future__ import annotations

from gpu.gpu_check import Check


def test_gpu_check_data_step_passes_on_cpu(tmp_path):
    check = Check(tmp_path / "work", tmp_path / "no-megatron", None, "python3")
    check.data()
    rows = {r.name: r for r in check.rows}
    assert rows["data"].status == "PASS", rows["data"]
    assert "mid" in rows["data"].figure and "base" in rows["data"].figure
    assert not check.failed_steps
