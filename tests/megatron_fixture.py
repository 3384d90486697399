"""Write real Megatron `torch_dist` checkpoints for the tests, with megatron-core's own saver.

`write_torch_dist(...)` runs megatron-core's `dist_checkpointing.save` in a subprocess (it needs a
process group; world size 1 over gloo on the CPU), so the layout is exactly what Megatron writes:
`iter_NNNNNNN/{.metadata, __0_0.distcp, common.pt, metadata.json}` plus the tracker file.
`common_in_shards=True` instead stores the common state inside the shards as newer Megatron does.

Tensors are plain CPU tensors keyed by their Megatron names (e.g.
`decoder.layers.self_attention.linear_qkv.weight` stacked on a leading layer dimension, or
`optimizer.state.exp_avg.<name>`); each becomes a ShardedTensor of one shard.
"""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent


def write_torch_dist(root: str | os.PathLike, iteration: int, tensors: dict[str, torch.Tensor], common: dict,
                     *, tracker: bool = True, common_in_shards: bool = False) -> Path:
    """Write `root/iter_<iteration>/` (and the tracker); returns the iteration folder."""
    root = Path(root)
    iter_dir = root / f"iter_{iteration:07d}"
    iter_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        payload = Path(tmp) / "payload.pt"
        torch.save({"tensors": tensors, "common": common, "iter_dir": str(iter_dir),
                    "common_in_shards": common_in_shards, "pg_file": str(Path(tmp) / "pg")}, payload)
        result = subprocess.run([sys.executable, str(Path(__file__).resolve()), str(payload)],
                                capture_output=True, text=True, timeout=300)
        if result.returncode != 0:
            raise RuntimeError(f"megatron-core save failed:\n{result.stdout}\n{result.stderr}")
    if tracker:
        (root / "latest_checkpointed_iteration.txt").write_text(str(iteration))
    return iter_dir


def _save(payload_path: str) -> None:
    import io

    import torch.distributed as dist

    payload = torch.load(payload_path, weights_only=False)
    # megatron-core syncs and reduces on the GPU around the write; on a CPU-only machine those two
    # calls are the only obstacle, and they do not change what is written
    torch.cuda.synchronize = lambda *a, **k: None
    torch.cuda.current_device = lambda: "cpu"
    dist.init_process_group("gloo", init_method=f"file://{payload['pg_file']}", rank=0, world_size=1)
    iter_dir = payload["iter_dir"]
    if payload["common_in_shards"]:
        import torch.distributed.checkpoint as dcp
        buffer = io.BytesIO()
        torch.save(payload["common"], buffer)
        buffer.seek(0)
        dcp.save({**payload["tensors"], "common_state": buffer}, checkpoint_id=iter_dir)
    else:
        from megatron.core import dist_checkpointing
        from megatron.core.dist_checkpointing import ShardedTensor
        sharded = {name: ShardedTensor.from_rank_offsets(name, tensor.contiguous(), replica_id=0)
                   for name, tensor in payload["tensors"].items()}
        dist_checkpointing.save({**payload["common"], "sharded": sharded}, iter_dir)
    dist.destroy_process_group()


if __name__ == "__main__":
    _save(sys.argv[1])
