#!/usr/bin/env python3
"""Evaluate models with lm-evaluation-harness: make eval, eval-data, eval-report, eval-text.

    eval.py submit --suite quick --exp-dir exp --task T --param P --size 50B --seeds "42 666" [--soup-name S]
    eval.py submit --suite olmo2 --models "/path/a /path/b" --scheduler pbs --group g --queue rt_HG
    eval.py run    --plan exp/eval/plans/quick-....json --index 0 --python .venv/bin/python   (in pbs/eval.pbs)
    eval.py data   --suite olmo2 --exp-dir exp [--endpoint URL]        (where the network is)
    eval.py report --suite olmo2 --exp-dir exp --task T --param P --size 50B --seeds "42 666"
    eval.py text   --exp-dir exp --task T --size 50B --out exp/eval/text/T_50B.jsonl

The checks, the plan and the job are pipeline/eval_submit.py and eval_job.py; staging pipeline/eval_data.py;
the report pipeline/eval_report.py; held-out text pipeline/eval_text.py. submit prints the job id (PBS, Slurm).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pipeline.errors import run_main
from pipeline.paths import eval_dir, exp_dir


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from pipeline.eval_submit import add_eval_arguments
    from pipeline.scheduler import add_scheduler_arguments

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    submit = commands.add_parser("submit", help="check, then submit one array job (one index per model)")
    add_eval_arguments(submit)
    add_scheduler_arguments(submit)
    run = commands.add_parser("run", help="evaluate the model of one array index of a plan (the job)")
    run.add_argument("--plan", required=True, type=Path)
    run.add_argument("--index", type=int, default=0, help="PBS_ARRAY_INDEX (0 without an array)")
    run.add_argument("--python", default=sys.executable, help="the Python that runs the harness")
    data = commands.add_parser("data", help="stage the suite's datasets under EXP_DIR (needs the network)")
    data.add_argument("--suite", required=True)
    data.add_argument("--exp-dir", default=None)
    data.add_argument("--endpoint", default="", help="HF_ENDPOINT: a hub mirror")
    report = commands.add_parser("report", help="table, Markdown, CSV and chart of a suite's results")
    add_eval_arguments(report)
    report.add_argument("--exp-dir", default=None)
    report.add_argument("--name", default="", help="REPORT_NAME (default: SOUP_NAME, or 'models')")
    text = commands.add_parser("text", help="held-out documents of TASK's sources not in the SIZE mixture")
    text.add_argument("--exp-dir", default=None)
    text.add_argument("--task", required=True)
    text.add_argument("--size", required=True)
    text.add_argument("--out", default="", help="output JSONL (default EXP_DIR/eval/text/<TASK>_<SIZE>.jsonl)")
    text.add_argument("--docs", type=int, default=50, help="EVAL_TEXT_DOCS: documents per source")
    text.add_argument("--seed", type=int, default=0, help="sampling seed")
    text.add_argument("--data-list", default="", help="DATA_LIST: the mixture list (default the task's)")
    return parser.parse_args(argv)


def report_models(args: argparse.Namespace, exp: Path):
    from pipeline.eval_models import experiment_models, folder_models
    from pipeline.params import param_name
    from pipeline.soup import default_name, parse_ingredients, parse_iteration

    if args.models.strip():
        return folder_models(args.models.split()), args.name or "models"
    soup = args.soup_name or default_name(args.task, param_name(args.param), parse_ingredients(args.seeds, args.size))
    models = experiment_models(exp, task=args.task, param=param_name(args.param), size=args.size, seeds=args.seeds,
                               soup_name=soup, base_hf=args.base_hf, iteration=parse_iteration(args.iter, "ITER"))
    return models, args.name or soup


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.command == "submit":
        from pipeline.eval_submit import prepare, submit_plan
        job_id = submit_plan(prepare(args), args, args.depend)
        if job_id:
            print(job_id)
        return 0
    if args.command == "run":
        from pipeline.eval_job import run_item
        return run_item(args.plan.absolute(), args.index, args.python)
    exp = exp_dir(args.exp_dir)
    if args.command == "data":
        from pipeline.eval_data import stage
        from pipeline.eval_suite import load_suite
        stage(exp, load_suite(args.suite), args.endpoint or None)
        return 0
    if args.command == "report":
        from pipeline.eval_report import write_report
        from pipeline.eval_suite import load_suite
        from pipeline.paths import eval_report_dir
        suite = load_suite(args.suite)
        models, name = report_models(args, exp)
        write_report(exp, suite, models, eval_report_dir(exp, suite.name, name))
        return 0
    from pipeline.eval_text import write_held_out
    out = Path(args.out) if args.out else eval_dir(exp) / "text" / f"{args.task}_{args.size}.jsonl"
    counts = write_held_out(exp, args.task, args.size, out, args.docs, args.seed, args.data_list)
    for source, count in counts.items():
        print(f"eval-text: {source}: {count} held-out document(s)" if count else
              f"eval-text: {source}: every file is in the mixture: no held-out document", file=sys.stderr)
    print(out)
    return 0


if __name__ == "__main__":
    run_main(main)
