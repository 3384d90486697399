"""Load what `make init` wrote with a Megatron-LM checkout's own dist-checkpointing loader (CPU, gloo).

    python tests/gpu/megatron_load_start.py MEGATRON_PATH START_ITER_DIR      # prints one JSON line

Megatron's `load_common_state_dict` (common.pt, or the in-shard entry) and `load_plain_tensors` (every
tensor, optimizer moments included) on the start folder; run with the Python that runs that Megatron.
"""
import json
import os
import sys


def main() -> None:
    megatron, start = sys.argv[1], sys.argv[2]
    sys.path.insert(0, megatron)
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(20000 + os.getpid() % 20000))
    import torch.distributed as dist
    dist.init_process_group("gloo", rank=0, world_size=1)
    from megatron.core import dist_checkpointing
    from megatron.core.dist_checkpointing.serialization import load_plain_tensors
    common = dist_checkpointing.load_common_state_dict(start)
    tensors = load_plain_tensors(start)
    args = common.get("args")
    print(json.dumps({"loader": dist_checkpointing.__file__, "iteration": common.get("iteration"),
                      "args_iteration": getattr(args, "iteration", None),
                      "consumed_train_samples": getattr(args, "consumed_train_samples", None),
                      "scheduler_num_steps": (common.get("opt_param_scheduler") or {}).get("num_steps"),
                      "tensors": sorted(k for k in tensors if hasattr(tensors[k], "shape"))}))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
