"""Megatron-LM's own forward pass on a saved checkpoint: the reference the converted model is compared with.

Run by tests/gpu/gpu_check.py on one GPU, with the Python that runs Megatron:

    python -m torch.distributed.run --nproc-per-node 1 tests/gpu/megatron_forward.py IDS.pt OUT.pt \\
        <the run's Megatron arguments, --load <run>/checkpoints> --no-load-optim --no-load-rng

It parses the arguments with Megatron's parser, builds the model with Megatron's own model provider,
loads the checkpoint with Megatron's own `load_checkpoint` (as training does, in the run's precision),
then casts the model to fp32 and runs it on the token ids of IDS.pt ([batch, seq] int64). OUT.pt gets
the logits ([batch, seq, padded vocab], fp32) and the iteration loaded. Works with upstream Megatron
(core >= 0.13: parse_and_validate_args, model_provider + gpt_builder) and the older layout
(initialize_megatron parses, pretrain_gpt.model_provider).
"""
from __future__ import annotations

import os
import sys
from functools import partial


def main() -> None:
    ids_path, out_path = sys.argv[1], sys.argv[2]
    sys.argv = [sys.argv[0], *sys.argv[3:]]
    megatron = os.environ["MEGATRON_PATH"]
    sys.path.insert(0, megatron)
    import torch
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False

    from megatron.core.enums import ModelType
    from megatron.training import get_args
    from megatron.training.checkpointing import load_checkpoint
    from megatron.training.initialize import initialize_megatron
    from megatron.training.training import get_model

    try:
        from megatron.training.arguments import parse_and_validate_args   # upstream: parse, then initialise
    except ImportError:
        parse_and_validate_args = None
    if parse_and_validate_args is not None:
        from gpt_builders import gpt_builder
        from model_provider import model_provider
        parse_and_validate_args(args_defaults={"tokenizer_type": "GPT2BPETokenizer"})
        initialize_megatron()
        provider = partial(model_provider, gpt_builder)
    else:
        from pretrain_gpt import model_provider
        initialize_megatron(args_defaults={"tokenizer_type": "GPT2BPETokenizer"})
        provider = model_provider
    args = get_args()
    model = get_model(provider, ModelType.encoder_or_decoder, wrap_with_ddp=False)
    iteration = load_checkpoint(model, None, None)
    iteration = iteration[0] if isinstance(iteration, tuple) else iteration
    gpt = model[0]
    while hasattr(gpt, "module"):   # Float16Module (and DDP) wrappers
        gpt = gpt.module
    # an fp32 forward of the model trained in bf16: its weights upcast exactly; the softmax modules were built
    # to cast their output back to the training precision, which must not happen here
    gpt = gpt.float().eval()
    for module in gpt.modules():
        for flag in ("input_in_fp16", "input_in_bf16", "input_in_float16"):
            if hasattr(module, flag):
                setattr(module, flag, False)
    for config in {id(m.config): m.config for m in gpt.modules() if hasattr(m, "config")}.values():
        config.bf16 = config.fp16 = False
        config.params_dtype = torch.float32

    ids = torch.load(ids_path).cuda()
    batch, seq = ids.shape
    positions = torch.arange(seq, device=ids.device).unsqueeze(0).expand(batch, -1)
    mask = torch.triu(torch.ones(seq, seq, dtype=torch.bool, device=ids.device), diagonal=1)[None, None]
    with torch.no_grad():
        logits = gpt(ids, positions, mask)
    if logits.shape[0] == seq and logits.shape[1] == batch:   # [s, b, v] in some versions
        logits = logits.transpose(0, 1)
    torch.save({"logits": logits.float().cpu(), "iteration": iteration, "padded_vocab": args.padded_vocab_size,
                "load": args.load}, out_path)
    print(f"megatron_forward: iteration {iteration}, logits {tuple(logits.shape)} -> {out_path}")
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
