"""make eval-report: the harness's results of an experiment's models on one suite, side by side.

Rows are (task, metric) of the suite (its `metrics`, else the first metric the harness reported), columns
the models (base, seeds, soup; or EVAL_MODELS), each cell `value ± stderr` with the difference to the base;
then the soup against the mean and against the best of its ingredients (the seeds). One line says whether
the soup beats its best ingredient on the suite average (each task's first metric; where higher-is-better
and lower-is-better metrics mix, only the higher-is-better ones are averaged, and the line says so).
Printed, and written as report.md, report.csv (one line per task, metric and model) and report.png
(one panel per row: grouped bars with error bars, the soup hatched) under
EXP_DIR/eval/reports/<suite>/<name>/.
"""
from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.atomic import atomic_output, write_text
from pipeline.errors import fail
from pipeline.eval_models import EvalModel
from pipeline.eval_results import harness_results, read_record, result_dir
from pipeline.eval_suite import Suite


@dataclass
class Cell:
    value: float | None
    stderr: float | None


@dataclass
class Row:
    task: str
    metric: str                     # the harness's results key, e.g. acc_norm,none
    higher_is_better: bool | None
    cells: dict[str, Cell] = field(default_factory=dict)   # model label -> cell


def _number(value) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) \
        else None


def _metric_keys(results: dict) -> list[str]:
    return [k for k, v in results.items() if "," in k and "_stderr," not in k and _number(v) is not None]


def collect(exp: Path, suite: Suite, models: list[EvalModel]) -> tuple[list[Row], dict[str, dict], list[str]]:
    """(rows, each evaluated model's record, the labels not evaluated on this suite)."""
    records, merged, missing = {}, {}, []
    for model in models:
        folder = result_dir(exp, suite.name, model.folder)
        record = read_record(folder)
        if record is None:
            missing.append(model.label)
            continue
        records[model.label] = record
        merged[model.label] = harness_results(folder, record)
    if not records:
        fail(f"no model here was evaluated on suite {suite.name} (under {exp / 'eval' / 'results' / suite.name}): "
             "run make eval first")
    rows = []
    for task in suite.tasks:
        found = [m["results"][task.task] for m in merged.values() if task.task in m["results"]]
        metrics = list(task.metrics) or (_metric_keys(found[0])[:1] if found else [])
        for metric in metrics:
            name, _, filter_ = metric.partition(",")
            direction = None
            for data in merged.values():
                direction = (data["higher_is_better"].get(task.task) or {}).get(name, direction)
            row = Row(task.task, metric, direction)
            for label, data in merged.items():
                values = data["results"].get(task.task, {})
                row.cells[label] = Cell(_number(values.get(metric)),
                                        _number(values.get(f"{name}_stderr,{filter_}")))
            rows.append(row)
    return rows, records, missing


def _better(a: float, b: float, higher: bool | None) -> bool:
    return a > b if higher is not False else a < b


@dataclass
class Comparison:
    soup_vs_mean: float | None
    soup_vs_best: float | None
    best: str | None


def compare(row: Row, ingredients: list[str], soup: str | None) -> Comparison:
    values = {label: row.cells[label].value for label in ingredients
              if label in row.cells and row.cells[label].value is not None}
    soup_value = row.cells[soup].value if soup in row.cells else None
    if soup_value is None or not values:
        return Comparison(None, None, None)
    best = max(values, key=values.get) if row.higher_is_better is not False else min(values, key=values.get)
    return Comparison(soup_value - sum(values.values()) / len(values), soup_value - values[best], best)


def suite_verdict(rows: list[Row], ingredients: list[str], soup: str | None, suite: str) -> str:
    """The one line: does the soup beat its best ingredient on the suite average?"""
    if soup is None or not ingredients:
        return f"suite {suite}: no soup and ingredients among these models: no soup verdict"
    primary, seen = [], set()
    for row in rows:
        if row.task not in seen:
            seen.add(row.task)
            primary.append(row)
    directions = {row.higher_is_better is not False for row in primary}
    note = ""
    if len(directions) > 1:
        primary = [row for row in primary if row.higher_is_better is not False]
        note = " (higher-is-better metrics only)"
    higher = primary[0].higher_is_better is not False if primary else True

    def average(label: str) -> float | None:
        values = [row.cells[label].value for row in primary if label in row.cells]
        return None if not values or any(v is None for v in values) else sum(values) / len(values)

    soup_avg = average(soup)
    scored = {label: a for label in ingredients if (a := average(label)) is not None}
    if soup_avg is None or not scored:
        return f"suite {suite}: the soup or its ingredients lack results on some task: no soup verdict"
    best = max(scored, key=scored.get) if higher else min(scored, key=scored.get)
    beats = _better(soup_avg, scored[best], higher)
    return (f"suite {suite}: the soup {'BEATS' if beats else 'does NOT beat'} its best ingredient {best} on the suite "
            f"average of {len(primary)} task(s){note}: {soup_avg:.4f} vs {scored[best]:.4f} "
            f"({'higher' if higher else 'lower'} is better; mean of the ingredients "
            f"{sum(scored.values()) / len(scored):.4f})")


def _fmt(value: float | None, digits: int = 4) -> str:
    if value is None:
        return "-"
    return f"{value:.{digits}g}" if abs(value) >= 1000 else f"{value:.{digits}f}"


def _signed(value: float | None) -> str:
    return "-" if value is None else ("+" if value >= 0 else "") + _fmt(value)


def table(rows: list[Row], labels: list[str], base: str | None, ingredients: list[str],
          soup: str | None) -> tuple[list[str], list[list[str]]]:
    header = ["task", "metric", *labels]
    if soup and ingredients:
        header += ["soup - mean", "soup - best (which)"]
    body = []
    for row in rows:
        arrow = {True: " ^", False: " v"}.get(row.higher_is_better, "")
        line = [row.task, row.metric + arrow]
        base_value = row.cells[base].value if base in row.cells else None
        for label in labels:
            cell = row.cells.get(label)
            if cell is None or cell.value is None:
                line.append("-")
                continue
            text = _fmt(cell.value) + (f" ± {_fmt(cell.stderr)}" if cell.stderr is not None else "")
            if base and label != base and base_value is not None:
                text += f" ({_signed(cell.value - base_value)})"
            line.append(text)
        if soup and ingredients:
            comparison = compare(row, ingredients, soup)
            line += [_signed(comparison.soup_vs_mean),
                     f"{_signed(comparison.soup_vs_best)} ({comparison.best})" if comparison.best else "-"]
        body.append(line)
    return header, body


def render_text(header: list[str], body: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in [header, *body]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines) + "\n"


def render_markdown(header: list[str], body: list[list[str]]) -> str:
    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"
    return "\n".join([line(header), line(["---"] * len(header)), *map(line, body)]) + "\n"


def write_csv(path: Path, rows: list[Row], models: list[EvalModel], base: str | None) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["task", "metric", "higher_is_better", "model", "role", "value", "stderr", "delta_vs_base"])
    roles = {m.label: m.role for m in models}
    for row in rows:
        base_value = row.cells[base].value if base in row.cells else None
        for label, cell in row.cells.items():
            delta = cell.value - base_value if cell.value is not None and base_value is not None else None
            writer.writerow([row.task, row.metric, row.higher_is_better, label, roles.get(label, ""),
                             "" if cell.value is None else repr(cell.value),
                             "" if cell.stderr is None else repr(cell.stderr), "" if delta is None else repr(delta)])
    write_text(path, buffer.getvalue())


def write_chart(path: Path, rows: list[Row], labels: list[str], roles: dict[str, str], title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    columns = min(3, len(rows))
    lines = math.ceil(len(rows) / columns)
    figure, axes = plt.subplots(lines, columns, figsize=(4.2 * columns, 3.4 * lines), squeeze=False)
    colours = plt.get_cmap("tab10")
    for index, row in enumerate(rows):
        ax = axes[index // columns][index % columns]
        for position, label in enumerate(labels):
            cell = row.cells.get(label)
            if cell is None or cell.value is None:
                continue
            soup = roles.get(label) == "soup"
            ax.bar(position, cell.value, yerr=cell.stderr, capsize=4, color=colours(position % 10),
                   hatch="//" if soup else None, edgecolor="black", linewidth=2.0 if soup else 0.6)
        ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right", fontsize=8)
        arrow = {True: " (higher is better)", False: " (lower is better)"}.get(row.higher_is_better, "")
        ax.set_title(f"{row.task}\n{row.metric}{arrow}", fontsize=9)
    for index in range(len(rows), lines * columns):
        axes[index // columns][index % columns].axis("off")
    if "soup" in roles.values():
        figure.legend(handles=[Patch(facecolor="white", edgecolor="black", hatch="//", label="soup")],
                      loc="upper right")
    figure.suptitle(title)
    figure.tight_layout()
    with atomic_output(path, "wb") as handle:
        figure.savefig(handle, format="png", dpi=110)
    plt.close(figure)


def write_report(exp: Path, suite: Suite, models: list[EvalModel], out_dir: Path) -> str:
    """Print and write the report; returns the verdict line."""
    rows, records, missing = collect(exp, suite, models)
    labels = [m.label for m in models if m.label in records]
    roles = {m.label: m.role for m in models}
    base = next((m.label for m in models if m.role == "base" and m.label in records), None)
    ingredients = [m.label for m in models if m.role == "seed" and m.label in records]
    soup = next((m.label for m in models if m.role == "soup" and m.label in records), None)
    header, body = table(rows, labels, base, ingredients, soup)
    verdict = suite_verdict(rows, ingredients, soup, suite.name)
    text = render_text(header, body)
    notes = [f"not evaluated on suite {suite.name}: {', '.join(missing)}"] if missing else []
    print(f"Suite {suite.name}: {suite.description}\n")
    print(text)
    print(verdict)
    for note in notes:
        print(f"note: {note}")
    details = ["| model | role | folder | lm-eval | dtype | seconds |", "| --- | --- | --- | --- | --- | --- |"]
    for label in labels:
        record = records[label]
        details.append(f"| {label} | {roles[label]} | `{record['model']['folder']}` | {record['harness']['version']} "
                       f"| {record['harness']['dtype']} | {record['seconds']:.0f} |")
    commands = [f"- {label}: `{run['command_text']}`" for label in labels for run in records[label]["runs"]]
    markdown = (f"# Evaluation: suite {suite.name}\n\n{suite.description}\n\n{render_markdown(header, body)}\n"
                f"**{verdict}**\n\n" + "".join(f"Note: {n}\n\n" for n in notes)
                + "Cells: value ± the harness's standard error (difference to the base). ^ higher is better, "
                  "v lower is better.\n\n![chart](report.png)\n\n## Models\n\n" + "\n".join(details)
                + "\n\n## Harness commands\n\n" + "\n".join(commands) + "\n")
    out_dir.mkdir(parents=True, exist_ok=True)
    write_text(out_dir / "report.md", markdown)
    write_csv(out_dir / "report.csv", rows, models, base)
    if rows:
        write_chart(out_dir / "report.png", rows, labels, roles, f"suite {suite.name}")
    print(f"\nreport: {out_dir / 'report.md'}, report.csv, report.png")
    return verdict
