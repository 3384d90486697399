"""Megatron's own model against the converted Hugging Face one: a tiny GPT built and run with megatron-core,
saved with Megatron's dist-checkpointing (torch_dist), converted by pipeline.convert_native (the code of
scripts/convert_to_hf.py), and both
forward passes compared on the same tokens (GQA with query groups < heads, untied embeddings, vocabulary
padding). The `cuda` case runs where an NVIDIA GPU and megatron-core are present and skips elsewhere
(tests/gpu/convert_gpu.sh runs it there); the `cpu` case runs the same check here.
Run with -s to see the max abs difference.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pipeline.convert_native import convert_checkpoint

HELPER = Path(__file__).resolve().parent / "megatron_gpt_helper.py"
TOLERANCE = {"cpu": 1e-5, "cuda": 2e-3}   # fp32; on the GPU the kernels differ (cuBLAS, SDPA, maybe TF32)


def megatron_gpt_available() -> bool:
    try:
        from megatron.core.models.gpt import GPTModel  # noqa: F401
    except Exception:  # ImportError, or a broken optional dependency
        return False
    return True


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_megatron_forward_matches_converted_model(tmp_path, device):
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("no CUDA GPU here")
    if not megatron_gpt_available():
        pytest.skip("megatron-core (GPTModel) is not importable")
    made = subprocess.run([sys.executable, str(HELPER), device, str(tmp_path)], capture_output=True, text=True,
                          timeout=600)
    assert made.returncode == 0, f"megatron-core failed:\n{made.stdout[-3000:]}\n{made.stderr[-5000:]}"
    saved = torch.load(tmp_path / "megatron_logits.pt")
    arch = saved["arch"]
    convert_checkpoint(tmp_path / "checkpoints", tmp_path / "hf", vocab_size=arch["true_vocab"], dtype="fp32",
                       show_progress=False, log=lambda _: None)

    from transformers import LlamaForCausalLM
    model = LlamaForCausalLM.from_pretrained(str(tmp_path / "hf")).to(device).eval()
    assert model.config.num_key_value_heads == arch["num_query_groups"] < model.config.num_attention_heads
    assert not model.config.tie_word_embeddings and model.config.vocab_size == arch["true_vocab"] < arch["padded_vocab"]
    with torch.no_grad():
        logits = model(saved["ids"].to(device)).logits.float().cpu()
    reference = saved["logits"][..., :arch["true_vocab"]]
    diff = (logits - reference).abs().max().item()
    print(f"\n[{device}] Megatron vs Hugging Face logits: max abs diff {diff:.3e} "
          f"(logits up to {reference.abs().max().item():.2f}; "
          f"{torch.cuda.get_device_name(0) if device == 'cuda' else 'CPU'})")
    assert diff < TOLERANCE[device]
    assert torch.equal(logits.argmax(-1), reference.argmax(-1))
