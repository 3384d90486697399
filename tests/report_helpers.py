"""Generated Megatron-LM training log text, in the format of megatron/training/training.py."""
from __future__ import annotations

from pathlib import Path


def args_dump(**args) -> str:
    """Megatron's `_print_args`: dots pad each name to 48 columns, sorted, between two rulers."""
    lines = ["------------------------ arguments ------------------------"]
    for name in sorted(args, key=str.lower):
        lines.append(f"  {name} {'.' * (48 - len(name))} {args[name]}")
    lines.append("-------------------- end of arguments ---------------------")
    return "\n".join(lines) + "\n"


def iteration_line(iteration: int, train_iters: int, consumed: int, elapsed_ms: float, lr: float, batch: int,
                   loss: float | None, grad_norm: float | None = 0.5, tflops: float | None = 400.0,
                   skipped: int = 0, nan: int = 0, timestamp: str | None = "2025-01-01 00:00:00",
                   loss_scale: float = 1.0) -> str:
    """One line as Megatron's training_log() prints it; None leaves a field out like Megatron does."""
    text = f" [{timestamp}]" if timestamp else ""
    text += " iteration {:8d}/{:8d} |".format(iteration, train_iters)
    text += " consumed samples: {:12d} |".format(consumed)
    text += " elapsed time per iteration (ms): {:.1f} |".format(elapsed_ms)
    if tflops is not None:
        text += f" throughput per GPU (TFLOP/s/GPU): {tflops:.1f} |"
    text += f" learning rate: {lr:.6E} |"
    text += f" global batch size: {batch:5d} |"
    if loss is not None:
        text += " {}: {:.6E} |".format("lm loss", loss)
    text += f" loss scale: {loss_scale:.1f} |"
    if grad_norm is not None:
        text += f" grad norm: {grad_norm:.3f} |"
    text += " number of skipped iterations: {:3d} |".format(skipped)
    text += " number of nan iterations: {:3d} |".format(nan)
    return text + "\n"


WARNING = ("/env/lib/python3.10/site-packages/torch/distributed/c10d_logger.py:83: UserWarning: "
           "TypedStorage is deprecated.\n  warnings.warn(\n")


def saved_line(iteration: int) -> str:
    return (f"  successfully saved checkpoint from iteration {iteration:7d} to /ckpt "
            "[ t 1/1, p 1/1 ]\n")


def write_log(folder: Path, job: str, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"train-{job}.out"
    path.write_text(text)
    (folder / f"train-{job}.err").write_text(WARNING)
    return path
