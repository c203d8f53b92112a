"""`bench table STUDY`: the study's results as LaTeX, Markdown and CSV tables."""

import argparse
import sys
from pathlib import Path

from bench.commands import add_study_storage
from bench.errors import BenchError
from bench.results import describe_storage, load_results, storage_url_for
from bench.study import load_study
from bench.tables import FORMATS, build_table, render, write_tables


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("study", help="a study name (studies/NAME.toml) or a .toml path")
    parser.add_argument(
        "--format",
        choices=("latex", "markdown", "csv"),
        help="write only this format, and print it (default: write all three, print Markdown)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        help="folder for table.{tex,md,csv} (default: RESULTS/STUDY), or with --format a file",
    )
    add_study_storage(parser, "the default storage and tables")


def run(args: argparse.Namespace) -> int:
    study = load_study(args.study)
    storage = args.storage or storage_url_for(args.results)
    results = load_results(study, storage)
    if results.frame.empty:
        states = ", ".join(f"{n} {s.lower()}" for s, n in sorted(results.states.items()))
        raise BenchError(
            f"study {study.name!r} has no complete trial in {describe_storage(storage)} "
            f"({states or 'no trials'}); run `bench run --study {args.study}` first"
        )
    formats = (args.format,) if args.format else FORMATS
    out = args.out if args.out is not None else study.results_dir(args.results)
    paths = write_tables(results, study, out, formats)
    print(render(build_table(results, study), args.format or "markdown"), end="")
    # To stderr, so that `bench table NAME --format csv > table.csv` stays a clean CSV.
    print("wrote " + ", ".join(str(p) for p in paths), file=sys.stderr)
    return 0
