"""The report of a mixture (`make mix`): a Markdown table per source, a bar chart, a JSON record.

The numbers come from pipeline.mixture (the weights, the per-source accounting, the iterations);
this module only presents them. Everything is deterministic (no times), so re-runs are identical.
"""
from __future__ import annotations

import json
import os
from fractions import Fraction
from pathlib import Path

from pipeline.atomic import write_if_changed
from pipeline.mixture import Mixture, SourceRow, TaskConfig, iterations, render_mix_list
from pipeline.paths import REPO_DIR


def shown_path(path: str | os.PathLike) -> str:
    """A path for reports: relative to the repository when inside it, else as given."""
    path = Path(path)
    try:
        return str(path.resolve().relative_to(REPO_DIR))
    except ValueError:
        return str(path)


def _label(mix: Mixture, row: SourceRow) -> str:
    return row.source if row.task == mix.task else f"{row.task}:{row.source}"


def report_rows(mix: Mixture) -> list[dict]:
    total = mix.total
    out = []
    for row in mix.rows.values():
        out.append({
            "task": row.task, "source": row.source, "label": _label(mix, row), "files": row.files,
            "tokens_available": row.available, "tokens_used": row.used,
            "source_pct": float(row.repetitions * 100),
            "mix_pct": float(Fraction(row.used, total) * 100) if total else 0.0,
            "target_mix_pct": None if row.target_share is None else float(row.target_share * 100),
            "repetitions": float(row.repetitions),
        })
    return out


def describe_kind(mix: Mixture, config: TaskConfig) -> str:
    size = config.sizes[mix.size]
    if mix.kind == "ratio":
        ratios = ", ".join(f"{s} {float(size.ratios.get(s, size.default_ratio)):g}" for s in config.sources)
        return f"ratio (weight = ceil(tokens x ratio) per file): {ratios}"
    if mix.kind == "share":
        return f"share (OLMo 2 style: target {size.total:,} tokens split by mix %, ratios derived)"
    return f"union of {', '.join(mix.parts)} (weights summed per file)"


def render_report(mix: Mixture, config: TaskConfig, seq_length: int, global_batch_size: int,
                  param: str, list_name: str, chart_name: str) -> str:
    total = mix.total
    iters = iterations(total, seq_length, global_batch_size)
    entries = mix.entries()
    lines = [
        f"# Mixture {mix.task} / {mix.size}",
        "",
        f"- kind: {describe_kind(mix, config)}",
        f"- list: `{list_name}` ({len(entries)} files; files with weight 0 left out)",
        "- from: " + ", ".join(f"`{shown_path(path)}`" for path in mix.lists.values()),
        f"- total: **{total:,} tokens**",
        f"- iterations: **{iters:,}** = ceil({total:,} / ({seq_length:,} x {global_batch_size:,})) "
        f"(seq_length x global_batch_size from {param})",
        "",
        "| source | files | tokens available | source % | tokens used | mix % | target mix % | repetitions |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    available = 0
    for r in report_rows(mix):
        available += r["tokens_available"]
        target = "-" if r["target_mix_pct"] is None else f"{r['target_mix_pct']:.2f}"
        lines.append(f"| {r['label']} | {r['files']} | {r['tokens_available']:,} | {r['source_pct']:.2f} | "
                     f"{r['tokens_used']:,} | {r['mix_pct']:.2f} | {target} | {r['repetitions']:.3f}x |")
    src_pct = f"{total / available * 100:.2f}" if available else "-"
    lines.append(f"| **total** | {sum(r.files for r in mix.rows.values())} | {available:,} | {src_pct} | "
                 f"{total:,} | 100.00 | | |")
    lines += ["", "source % = tokens used / tokens available; mix % = share of the mixture; target mix % = "
              + ("the share size's normalised shares." if mix.kind == "share" else
                 f"the shares of {config.sizes[mix.size].compare} for comparison."
                 if config.sizes[mix.size].compare else "none (no target for this size)."),
              "", f"![mix]({chart_name})", ""]
    return "\n".join(lines)


def render_chart(mix: Mixture, seq_length: int, global_batch_size: int) -> bytes:
    """A horizontal bar chart of the mix % per source (target % as markers); returns PNG bytes."""
    import io

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = report_rows(mix)
    labels = [r["label"] for r in rows][::-1]
    mix_pct = [r["mix_pct"] for r in rows][::-1]
    fig, ax = plt.subplots(figsize=(8, 0.5 * len(rows) + 1.6), dpi=100)
    bars = ax.barh(labels, mix_pct, color="#4C72B0", label="mix %")
    targets = [(i, r["target_mix_pct"]) for i, r in enumerate(rows[::-1]) if r["target_mix_pct"] is not None]
    if targets:
        ax.scatter([t for _, t in targets], [i for i, _ in targets], marker="|", s=400, color="#C44E52",
                   zorder=3, label="target mix %")
    for bar, r in zip(bars, rows[::-1]):
        used = f"{r['tokens_used'] / 1e9:.3g}B" if r["tokens_used"] >= 1e8 else f"{r['tokens_used']:,}"
        ax.text(bar.get_width(), bar.get_y() + bar.get_height() / 2,
                f"  {r['mix_pct']:.2f}%, {used} tokens, {r['repetitions']:.2f}x", va="center", fontsize=8)
    total = mix.total
    ax.set_xlabel("share of the mixture (%)")
    ax.set_xlim(0, max(mix_pct + [t for _, t in targets] + [1]) * 1.5)
    iters = iterations(total, seq_length, global_batch_size)
    ax.set_title(f"{mix.task} / {mix.size}: {total:,} tokens, {iters:,} iteration{'s' * (iters != 1)} "
                 f"(seq {seq_length:,} x batch {global_batch_size:,})", fontsize=10)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", metadata={"Software": None})
    plt.close(fig)
    return buffer.getvalue()


def summary(mix: Mixture, seq_length: int, global_batch_size: int, param: str) -> dict:
    """Machine-readable record of the mix (deterministic: no times, so re-runs are identical)."""
    from pipeline.provenance import sha256_file
    total = mix.total
    return {
        "task": mix.task, "size": mix.size, "kind": mix.kind, "parts": mix.parts,
        "all_lists": {task: {"path": shown_path(path), "sha256": sha256_file(path)}
                      for task, path in mix.lists.items()},
        "total_tokens": total, "files": len(mix.entries()),
        "param": param, "seq_length": seq_length, "global_batch_size": global_batch_size,
        "iterations": iterations(total, seq_length, global_batch_size),
        "sources": report_rows(mix),
    }


def write_mix(mix: Mixture, config: TaskConfig, out_dir: Path, stem: str, seq: int, batch: int,
              param: str) -> tuple[str, dict, list[str]]:
    """<stem>.sh (the list), .md (the report), .json and .png into out_dir, each only if its bytes changed;
    returns the report, the JSON record and the names written."""
    report = render_report(mix, config, seq, batch, param, f"{stem}.sh", f"{stem}.png")
    record = summary(mix, seq, batch, param)
    wrote = [name for name, content in (
        (f"{stem}.sh", render_mix_list(mix)),
        (f"{stem}.md", report),
        (f"{stem}.json", json.dumps(record, indent=2, sort_keys=True) + "\n"),
        (f"{stem}.png", render_chart(mix, seq, batch)),
    ) if write_if_changed(out_dir / name, content)]
    return report, record, wrote
