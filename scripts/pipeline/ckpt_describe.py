"""What a Megatron-LM checkpoint holds, read on the CPU without Megatron (`make ckpt-info`).

Reads the tracker, the common state (common.pt, or the common_state object inside the torch_dist
shards of newer Megatron; for the `torch` format rank 0's model_optim_rng.pt, memory-mapped) and
gives iteration, consumed samples, tensor / pipeline / data parallel sizes, the LR-scheduler state,
the optimizer step, format and size, as a dict (`describe`) or a table (`render`). A start folder
made by `make init` says so.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from pipeline.megatron_ckpt import (TRACKER, available_iterations, check_complete, common_state_layout,
                                    common_state_summary, load_common_state, load_torch_format_state, read_tracker,
                                    resolve_checkpoint)
from pipeline.midtrain import INIT_RECORD
from pipeline.units import human_binary

ARG_FIELDS = ("num_layers", "hidden_size", "ffn_hidden_size", "num_attention_heads", "num_query_groups",
              "seq_length", "max_position_embeddings", "padded_vocab_size", "micro_batch_size", "global_batch_size",
              "train_iters", "lr", "min_lr", "lr_decay_style", "lr_warmup_iters", "lr_decay_iters", "seed",
              "ckpt_format", "params_dtype", "tokenizer_type", "tokenizer_model", "use_distributed_optimizer",
              "context_parallel_size")
SCHEDULER_FIELDS = ("num_steps", "max_lr", "min_lr", "warmup_steps", "decay_steps", "decay_style",
                    "start_wd", "end_wd", "wd_incr_style", "wd_incr_steps")


def checkpoints_folder(path: str | os.PathLike) -> Path:
    """CKPT as given; for a run folder its checkpoints/, else its start/ (whichever has a tracker)."""
    path = Path(path)
    if path.is_dir() and not (path / TRACKER).is_file() and not path.name.startswith("iter_"):
        for inner in ("checkpoints", "start"):
            if (path / inner / TRACKER).is_file():
                return path / inner
    return path


def _plain(value: Any) -> Any:
    """JSON-friendly: stand-ins and dtypes as their repr, containers recursively."""
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return repr(value)


def describe(path: str | os.PathLike, iteration: int | None = None) -> dict:
    ckpt = resolve_checkpoint(path, iteration)
    check_complete(ckpt)
    state = load_common_state(ckpt.iter_dir) if ckpt.format == "torch_dist" else load_torch_format_state(ckpt)
    summary = common_state_summary(state)
    args = state.get("args")
    files = ckpt.shard_files()
    links = sum(1 for p in files if p.is_symlink())
    scheduler = state.get("opt_param_scheduler")
    info: dict[str, Any] = {
        "path": str(ckpt.iter_dir),
        "format": ckpt.format,
        "common_state_layout": common_state_layout(ckpt.iter_dir) if ckpt.format == "torch_dist" else None,
        "folder_iteration": ckpt.iteration,
        "tracker": read_tracker(ckpt.root) if ckpt.root is not None and (ckpt.root / TRACKER).is_file() else None,
        "iterations_present": available_iterations(ckpt.root) if ckpt.root is not None else [],
        "files": len(files),
        "symlinked_files": links,
        "size_bytes": ckpt.size_bytes(),
        **summary,
        "args_iteration": getattr(args, "iteration", None),
        "scheduler": {k: scheduler.get(k) for k in SCHEDULER_FIELDS if k in scheduler}
        if isinstance(scheduler, dict) else None,
        "args": {k: getattr(args, k) for k in ARG_FIELDS if hasattr(args, k)},
        "keys": sorted(map(str, state)),
    }
    dp = info.get("data_parallel_size")
    if dp is None and isinstance(info.get("world_size"), int):
        mp = 1
        for key in ("tensor_model_parallel_size", "pipeline_model_parallel_size"):
            mp *= info.get(key) or 1
        mp *= info["args"].get("context_parallel_size") or 1
        info["data_parallel_size"] = info["world_size"] // mp if mp else None
    init_record = ckpt.root / INIT_RECORD if ckpt.root is not None else None
    if init_record is not None and init_record.is_file():   # a start folder made by make init
        made = json.loads(init_record.read_text(encoding="utf-8"))
        info["made_by_init"] = {"source": (made.get("source") or {}).get("iter_dir"),
                                "source_iteration": (made.get("source") or {}).get("iteration"),
                                "changes": made.get("changes", [])}
    return _plain(info)


def render(info: dict) -> str:
    def fmt(value: Any) -> str:
        return "?" if value is None else f"{value:,}" if isinstance(value, int) and not isinstance(value, bool) \
            else str(value)

    lines = [f"checkpoint   {info['path']}",
             f"format       {info['format']}, {info['files']} files, {human_binary(info['size_bytes'])}"
             + (f" ({info['symlinked_files']} symlinked)" if info["symlinked_files"] else "")
             + (f"; common state: {info['common_state_layout']}" if info.get("common_state_layout") else "")]
    present = info["iterations_present"]
    shown = ", ".join(map(str, present[-5:])) + (f" ({len(present)} in all)" if len(present) > 5 else "")
    lines.append(f"tracker      {fmt(info['tracker'])}" + (f"; iteration folders: {shown}" if present else ""))
    lines.append(f"iteration    {fmt(info['iteration'])} (common state; folder {fmt(info['folder_iteration'])}, "
                 f"args.iteration {fmt(info['args_iteration'])})")
    lines.append(f"consumed     train {fmt(info['consumed_train_samples'])} samples, "
                 f"valid {fmt(info['consumed_valid_samples'])}")
    lines.append(f"parallel     TP {fmt(info['tensor_model_parallel_size'])}, "
                 f"PP {fmt(info['pipeline_model_parallel_size'])}, DP {fmt(info['data_parallel_size'])} "
                 f"(world size {fmt(info['world_size'])})")
    sched = info.get("scheduler")
    if sched:
        lines.append("scheduler    " + ", ".join(f"{k} {fmt(v)}" for k, v in sched.items()))
    else:
        lines.append("scheduler    none in the checkpoint")
    lines.append(f"optimizer    step {fmt(info['optimizer_common_step'])}")
    if info.get("floating_point_operations_so_far") is not None:
        lines.append(f"flops        {info['floating_point_operations_so_far']:.4g} so far")
    if info["args"]:
        lines.append("args         " + ", ".join(f"{k}={v}" for k, v in info["args"].items()))
    made = info.get("made_by_init")
    if made:
        lines.append(f"start        made by make init from {made['source']} "
                     f"(iteration {fmt(made['source_iteration'])}); "
                     f"{'; '.join(made['changes']) or 'counters were already 0'}")
    return "\n".join(lines)
