"""`bench report STUDY`: one self-contained HTML file with the table, figures, configurations,
environment, failures and the commands that reproduce the study."""

import argparse
import sys
from pathlib import Path

from bench.commands import add_study_storage


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("study", help="a study name (studies/NAME.toml) or a .toml path")
    parser.add_argument(
        "--out", type=Path, help="the HTML file to write (default: RESULTS/STUDY/report.html)"
    )
    parser.add_argument(
        "--tracking-uri",
        help="the MLflow store the study logged to, read for training curves and given the "
        "report (default sqlite:///RESULTS/mlflow.db)",
    )
    add_study_storage(parser, "the default storages and the report")


def run(args: argparse.Namespace) -> int:
    from bench.commands.plot import histories, load_study_results
    from bench.plots import build_figures
    from bench.report import build_report
    from casdm.files import atomic_write_text

    study, results, tracker = load_study_results(args)
    figures = build_figures(results, study, histories(results, tracker))
    storage_args = []
    if args.results != Path("results"):
        storage_args += ["--results", str(args.results)]
    if args.storage:
        storage_args += ["--storage", args.storage]
    text = build_report(results, study, figures, storage_args)
    out = args.out if args.out is not None else study.results_dir(args.results) / "report.html"
    atomic_write_text(out, text)
    where = ""
    if tracker is not None:
        summary = tracker.study_run(study.name)
        summary.log_artifact(out)
        where = f"; logged to the MLflow run {summary.run_id}"
    print(f"wrote {out} ({len(text) / 1e6:.1f} MB){where}", file=sys.stderr)
    print(out)
    return 0
