"""Build a tiny GPT with megatron-core, run its forward pass, save it with Megatron's dist-checkpointing.

Run as a script (its own process: Megatron needs a process group and its parallel state):

    python tests/megatron_gpt_helper.py cuda|cpu OUT_DIR

writes OUT_DIR/checkpoints/{latest_checkpointed_iteration.txt, iter_0000005/} in `torch_dist` format
(megatron-core's `dist_checkpointing.save` of `GPTModel.sharded_state_dict()`, the common state with
the arguments Megatron saves in common.pt) and OUT_DIR/megatron_logits.pt (token ids and logits of
Megatron's forward pass). The model: GQA (8 heads, 2 query groups), untied embeddings, a vocabulary
of 250 padded to 256, RMSNorm, SwiGLU, RoPE base 500000, fp32; megatron-core's local layer spec
(no TransformerEngine needed). On the CPU, the three CUDA-only calls on the path are stubbed.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import sys
import types

ARCH = dict(num_layers=3, hidden_size=64, ffn_hidden_size=160, num_attention_heads=8, num_query_groups=2,
            kv_channels=16, true_vocab=250, padded_vocab=256, max_position_embeddings=128, rotary_base=500000,
            norm_epsilon=1e-5)
ITERATION = 5
SEQ, BATCH = 24, 2


def main(device: str, out: str) -> None:
    import torch
    import torch.distributed as dist

    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(29500 + os.getpid() % 1000))
    if device == "cpu":
        torch.cuda.synchronize = lambda *a, **k: None
        torch.cuda.current_device = lambda: "cpu"
    else:
        torch.cuda.set_device(0)
    dist.init_process_group("nccl" if device == "cuda" else "gloo", rank=0, world_size=1)
    from megatron.core import dist_checkpointing, parallel_state, tensor_parallel
    from megatron.core.models.gpt import GPTModel
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec
    from megatron.core.transformer.transformer_config import TransformerConfig

    parallel_state.initialize_model_parallel(1, 1)
    torch.manual_seed(0)
    if device == "cuda":
        tensor_parallel.model_parallel_cuda_manual_seed(0)
    else:  # attention dropout runs under the CUDA RNG tracker, which needs CUDA
        tracker = types.SimpleNamespace(fork=lambda *a, **k: contextlib.nullcontext())
        tensor_parallel.get_cuda_rng_tracker = lambda *a, **k: tracker
    a = ARCH
    config = TransformerConfig(
        num_layers=a["num_layers"], hidden_size=a["hidden_size"], ffn_hidden_size=a["ffn_hidden_size"],
        num_attention_heads=a["num_attention_heads"], num_query_groups=a["num_query_groups"],
        kv_channels=a["kv_channels"], normalization="RMSNorm", layernorm_epsilon=a["norm_epsilon"],
        gated_linear_unit=True, activation_func=torch.nn.functional.silu, add_bias_linear=False,
        hidden_dropout=0.0, attention_dropout=0.0, params_dtype=torch.float32, use_cpu_initialization=True,
        bias_activation_fusion=False, bias_dropout_fusion=False, persist_layer_norm=False, apply_rope_fusion=False,
        masked_softmax_fusion=False, init_method_std=0.05)
    model = GPTModel(config=config, transformer_layer_spec=get_gpt_layer_local_spec(normalization="RMSNorm"),
                     vocab_size=a["padded_vocab"], max_sequence_length=a["max_position_embeddings"],
                     position_embedding_type="rope", rotary_base=a["rotary_base"],
                     share_embeddings_and_output_weights=False).to(device).eval()
    with torch.no_grad():  # trained norms are not all ones
        for name, param in model.named_parameters():
            if "layernorm" in name or "layer_norm" in name:
                param.copy_(1.0 + 0.1 * torch.randn_like(param))
    ids = torch.randint(0, a["true_vocab"], (BATCH, SEQ), generator=torch.Generator().manual_seed(1)).to(device)
    positions = torch.arange(SEQ, device=device).unsqueeze(0).expand(BATCH, -1)
    mask = torch.triu(torch.ones(SEQ, SEQ, dtype=torch.bool, device=device), diagonal=1)[None, None]
    with torch.no_grad():
        logits = model(ids, positions, mask)

    args = argparse.Namespace(
        num_layers=a["num_layers"], hidden_size=a["hidden_size"], ffn_hidden_size=a["ffn_hidden_size"],
        num_attention_heads=a["num_attention_heads"], group_query_attention=True,
        num_query_groups=a["num_query_groups"], kv_channels=a["kv_channels"],
        max_position_embeddings=a["max_position_embeddings"], seq_length=a["max_position_embeddings"],
        position_embedding_type="rope", rotary_base=a["rotary_base"], rotary_percent=1.0, normalization="RMSNorm",
        norm_epsilon=a["norm_epsilon"], swiglu=True, add_bias_linear=False, untie_embeddings_and_output_weights=True,
        padded_vocab_size=a["padded_vocab"], make_vocab_size_divisible_by=128, params_dtype=torch.float32,
        tensor_model_parallel_size=1, pipeline_model_parallel_size=1, iteration=ITERATION)
    root = os.path.join(out, "checkpoints")
    iter_dir = os.path.join(root, f"iter_{ITERATION:07d}")
    os.makedirs(iter_dir, exist_ok=True)
    dist_checkpointing.save({"model": model.sharded_state_dict(), "args": args, "iteration": ITERATION,
                             "checkpoint_version": 3.0}, iter_dir)
    with open(os.path.join(root, "latest_checkpointed_iteration.txt"), "w") as handle:
        handle.write(str(ITERATION))
    torch.save({"ids": ids.cpu(), "logits": logits.float().cpu(), "arch": ARCH},
               os.path.join(out, "megatron_logits.pt"))
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
