"""`bench plot STUDY`: the study's figures (sweeps, bars, curves, samples, cost) as PDF/PNG/SVG."""

import argparse
import sys
from pathlib import Path

from bench.commands import add_study_storage


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("study", help="a study name (studies/NAME.toml) or a .toml path")
    parser.add_argument(
        "--out", type=Path, help="folder for the figures (default: RESULTS/STUDY/figures)"
    )
    parser.add_argument(
        "--format",
        default="pdf,png",
        help="comma-separated file formats among pdf, png, svg (default: pdf,png)",
    )
    parser.add_argument(
        "--tracking-uri",
        help="the MLflow store the study logged to, read for training curves and given the "
        "figures (default sqlite:///RESULTS/mlflow.db)",
    )
    add_study_storage(parser, "the default storages and the figures")


def parse_formats(text: str) -> tuple[str, ...]:
    """ "pdf,png" -> ("pdf", "png"), or BenchError naming the valid formats."""
    from bench.errors import BenchError
    from bench.plots import FORMATS

    formats = tuple(dict.fromkeys(w.strip().lower() for w in text.split(",") if w.strip()))
    wrong = [f for f in formats if f not in FORMATS]
    if wrong or not formats:
        raise BenchError(
            f"--format {text!r}: {', '.join(wrong) or 'no format'} is not one of "
            f"{', '.join(FORMATS)}; e.g. --format pdf,png"
        )
    return formats


def load_study_results(args: argparse.Namespace):
    """(study, results, tracker or None) for a finished or running study, or BenchError."""
    from bench.errors import BenchError
    from bench.results import describe_storage, load_results, storage_url_for
    from bench.study import load_study
    from bench.tracking import Tracker
    from bench.tracking_backend import sqlite_path, tracking_uri_for

    study = load_study(args.study)
    storage = args.storage or storage_url_for(args.results)
    results = load_results(study, storage)
    if results.frame.empty:
        states = ", ".join(f"{n} {s.lower()}" for s, n in sorted(results.states.items()))
        raise BenchError(
            f"study {study.name!r} has no complete trial in {describe_storage(storage)} "
            f"({states or 'no trials'}); run `bench run --study {args.study}` first"
        )
    tracking_uri = args.tracking_uri or tracking_uri_for(args.results)
    database = sqlite_path(tracking_uri)
    tracker = None
    if database is None or database.is_file():
        tracker = Tracker(tracking_uri, study.name)
    return study, results, tracker


def histories(results, tracker) -> dict[int, dict[str, list[tuple[int, float]]]]:
    """Trial number -> its MLflow training curves ("train/*"), for trials with a run."""
    from bench.plots import TRAIN_PREFIX

    if tracker is None:
        return {}
    out = {}
    for trial, run_id in zip(results.frame["trial"], results.frame["mlflow_run_id"], strict=True):
        if isinstance(run_id, str):
            out[int(trial)] = tracker.histories(run_id, TRAIN_PREFIX)
    return out


def run(args: argparse.Namespace) -> int:
    from bench.plots import build_figures, write_figures

    formats = parse_formats(args.format)
    study, results, tracker = load_study_results(args)
    figures = build_figures(results, study, histories(results, tracker))
    out = args.out if args.out is not None else study.results_dir(args.results) / "figures"
    paths = write_figures(figures, out, formats)
    if tracker is not None:
        summary = tracker.study_run(study.name)
        for path in paths:
            summary.log_artifact(path, artifact_path="figures")
        where = f"; logged to the MLflow run {summary.run_id} ({tracker.tracking_uri})"
    else:
        where = "; no MLflow store found, so no training curves and nothing logged"
    print(f"wrote {len(paths)} files to {out}{where}", file=sys.stderr)
    for path in paths:
        print(path)
    return 0
