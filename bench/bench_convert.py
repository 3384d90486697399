#!/usr/bin/env python3
"""Benchmark the native Megatron -> Hugging Face converter on a synthetic torch_dist checkpoint.

Writes a Llama-shaped `torch_dist` checkpoint (stacked layer tensors, padded vocabulary, bf16, common.pt
with the arguments), then measures, each in its own process (so peak memory is its own):

  ours       scripts/convert_to_hf.py's code: layer by layer into sharded safetensors
  naive      the whole state dict loaded with torch.distributed.checkpoint, then written by
             safetensors.torch.save_file (what a simple converter does; skipped when it would not fit)
  cp         copying the checkpoint's files (the disk's own speed for the same bytes)

and prints GB/s (checkpoint bytes / seconds) and peak RSS side by side, plus the time a 7.7B checkpoint
would take at our speed. The page cache is warm (the checkpoint was just written): figures are the
CPU-bound upper end; a cold read is bounded by the file system instead.

    bench_convert.py                    # ~1.1B parameters (2.2 GB), about a minute on 2 cores
    bench_convert.py --preset 7.7b      # the LLM-jp v4 7.7B shape (15.6 GB; needs ~35 GB of disk)
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

# torch.distributed.checkpoint says it assumes one process when there is no process group: it is one
warnings.filterwarnings("ignore", message="torch.distributed is disabled")

PRESETS = {
    # name: layers, hidden, ffn, heads, query groups, true vocab, padded vocab
    "tiny": (4, 256, 704, 8, 2, 32000, 32000),
    "1b": (16, 2048, 5504, 16, 4, 98452, 98560),
    "7.7b": (32, 4096, 14336, 32, 8, 98452, 98560),   # LLM-jp v4 7.7B with the v3.1 tokenizer
}
GB = 1e9


def checkpoint_bytes(preset: str) -> int:
    layers, hidden, ffn, heads, groups, _, padded = PRESETS[preset]
    d = hidden // heads
    per_layer = (heads + 2 * groups) * d * hidden + hidden * heads * d + 3 * ffn * hidden + 2 * hidden
    return 2 * (2 * padded * hidden + layers * per_layer + hidden)


def write_checkpoint(root: Path, preset: str) -> int:
    """A synthetic checkpoint in root/iter_0000001 (tensors backed by a sparse file: little memory); its bytes."""
    import argparse as ap

    import torch
    import torch.distributed.checkpoint as dcp

    layers, hidden, ffn, heads, groups, vocab, padded = PRESETS[preset]
    head_dim = hidden // heads
    shapes = {
        "embedding.word_embeddings.weight": (padded, hidden),
        "decoder.layers.self_attention.linear_qkv.weight": (layers, (heads + 2 * groups) * head_dim, hidden),
        "decoder.layers.self_attention.linear_qkv.layer_norm_weight": (layers, hidden),
        "decoder.layers.self_attention.linear_proj.weight": (layers, hidden, heads * head_dim),
        "decoder.layers.mlp.linear_fc1.weight": (layers, 2 * ffn, hidden),
        "decoder.layers.mlp.linear_fc1.layer_norm_weight": (layers, hidden),
        "decoder.layers.mlp.linear_fc2.weight": (layers, hidden, ffn),
        "decoder.final_layernorm.weight": (hidden,),
        "output_layer.weight": (padded, hidden),
    }
    backing = root.parent / "backing.bin"
    total = sum(torch.Size(s).numel() for s in shapes.values())
    with open(backing, "wb") as handle:
        handle.truncate(total * 2)
    flat = torch.from_file(str(backing), shared=False, size=total, dtype=torch.bfloat16)
    tensors, offset = {}, 0
    for name, shape in shapes.items():
        n = torch.Size(shape).numel()
        tensors[name] = flat[offset:offset + n].view(shape)
        offset += n
    iter_dir = root / "iter_0000001"
    iter_dir.mkdir(parents=True)
    dcp.save(tensors, checkpoint_id=str(iter_dir), no_dist=True)
    args = ap.Namespace(num_layers=layers, hidden_size=hidden, ffn_hidden_size=ffn, num_attention_heads=heads,
                        group_query_attention=True, num_query_groups=groups, kv_channels=head_dim,
                        max_position_embeddings=8192, seq_length=8192, position_embedding_type="rope",
                        rotary_base=500000, normalization="RMSNorm", norm_epsilon=1e-5, swiglu=True,
                        add_bias_linear=False, untie_embeddings_and_output_weights=True, padded_vocab_size=padded)
    torch.save({"args": args, "iteration": 1, "checkpoint_version": 3.0}, iter_dir / "common.pt")
    (root / "latest_checkpointed_iteration.txt").write_text("1")
    del flat, tensors
    backing.unlink()
    return total * 2


def peak_rss_bytes() -> int:
    """This process's peak resident memory (VmHWM: unlike ru_maxrss, not inherited across fork + exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def child(mode: str, ckpt: Path, out: Path, vocab: int) -> None:
    """One measurement in this process (imports done before the clock starts); prints seconds and peak RSS."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))  # pipeline/ lives in scripts/
    import torch
    import torch.distributed.checkpoint as dcp
    from safetensors.torch import save_file

    from pipeline.convert_native import convert_checkpoint
    baseline = peak_rss_bytes()
    started = time.perf_counter()
    if mode == "ours":
        convert_checkpoint(ckpt, out, vocab_size=vocab, dtype="bf16", show_progress=False, log=lambda _: None)
    elif mode == "naive":
        iter_dir = ckpt / "iter_0000001"
        metadata = dcp.FileSystemReader(str(iter_dir)).read_metadata()
        state = {k: torch.empty(tuple(v.size), dtype=v.properties.dtype)
                 for k, v in metadata.state_dict_metadata.items() if hasattr(v, "size")}
        dcp.load(state, checkpoint_id=str(iter_dir), no_dist=True)
        out.mkdir(parents=True)
        save_file(state, str(out / "model.safetensors"))
    elif mode == "cp":
        shutil.copytree(ckpt, out)
    seconds = time.perf_counter() - started
    print(json.dumps({"seconds": seconds, "peak_rss": peak_rss_bytes(), "baseline_rss": baseline}))


def measure(mode: str, ckpt: Path, out: Path, vocab: int) -> dict:
    result = subprocess.run([sys.executable, __file__, "--child", mode, "--ckpt", str(ckpt), "--out", str(out),
                             "--vocab", str(vocab)], capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"{mode} failed:\n{result.stderr[-3000:]}")
    shutil.rmtree(out, ignore_errors=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def available_memory() -> int:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="1b", help="checkpoint shape (default 1b)")
    parser.add_argument("--workdir", default="", help="where to write the checkpoint (default: a temporary folder)")
    parser.add_argument("--skip-naive", action="store_true", help="do not run the whole-state-dict reference")
    parser.add_argument("--child", choices=("ours", "naive", "cp"), help=argparse.SUPPRESS)
    parser.add_argument("--ckpt", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--vocab", type=int, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        child(args.child, Path(args.ckpt), Path(args.out), args.vocab)
        return 0
    layers, hidden, ffn, heads, groups, vocab, padded = PRESETS[args.preset]
    work = Path(tempfile.mkdtemp(prefix="bench_convert.", dir=args.workdir or None))
    try:
        started = time.perf_counter()
        size = write_checkpoint(work / "checkpoints", args.preset)
        written_in = time.perf_counter() - started
        print(f"bench_convert: preset {args.preset}: {layers} layers, hidden {hidden}, ffn {ffn}, heads {heads}/"
              f"{groups} groups, vocab {vocab} (padded {padded}); checkpoint {size / GB:.2f} GB bf16 "
              f"(written in {written_in:.1f}s), {os.cpu_count()} CPUs")
        rows = [("ours (layer by layer, sharded)", measure("ours", work / "checkpoints", work / "out", vocab))]
        naive_need = 2.2 * size
        if args.skip_naive:
            rows.append(("naive (whole dict + save_file)", None))
        elif available_memory() and naive_need > available_memory():
            rows.append(("naive (whole dict + save_file)", {"skipped": f"needs ~{naive_need / GB:.0f} GB"}))
        else:
            rows.append(("naive (whole dict + save_file)", measure("naive", work / "checkpoints", work / "out", vocab)))
        rows.append(("cp of the checkpoint files", measure("cp", work / "checkpoints", work / "out", vocab)))
        print(f"{'':34s} {'seconds':>8s} {'GB/s':>7s} {'peak RSS':>10s}   (RSS includes ~"
              f"{rows[0][1]['baseline_rss'] / GB:.2f} GB of imported libraries)")
        for label, row in rows:
            if row is None or "skipped" in row:
                print(f"{label:34s} {'-':>8s} {'-':>7s} {'-':>10s}  {(row or {}).get('skipped', 'skipped')}")
                continue
            print(f"{label:34s} {row['seconds']:8.2f} {size / GB / row['seconds']:7.2f} "
                  f"{row['peak_rss'] / GB:8.2f}GB")
        ours = rows[0][1]
        size_77 = checkpoint_bytes("7.7b")
        largest = 2 * layers * 2 * ffn * hidden  # the stacked MLP input projection, bf16
        print(f"at {size / GB / ours['seconds']:.2f} GB/s a 7.7B checkpoint ({size_77 / GB:.1f} GB bf16) converts in "
              f"~{size_77 / (size / ours['seconds']) / 60:.1f} min (warm cache); the largest stored tensor here is "
              f"{largest / GB:.2f} GB (peak RSS is about twice the largest stored chunk)")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
