"""Sub-commands of `bench`: each module has add_arguments(parser) and run(args) -> exit code."""

import argparse
from pathlib import Path


def add_overrides(parser: argparse.ArgumentParser, note: str = "repeatable") -> None:
    """The `--set KEY=VALUE` option shared by the commands that build a RunConfig."""
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help=f"override a config key, e.g. --set train.steps=100 ({note})",
    )


def add_study_storage(parser: argparse.ArgumentParser, holds: str = "the default storage") -> None:
    """`--storage` and `--results` for the commands that read a finished or running study."""
    parser.add_argument(
        "--storage", help="the Optuna storage URL the study ran in (default: RESULTS/optuna.db)"
    )
    parser.add_argument(
        "--results",
        type=Path,
        default=Path("results"),
        help=f"folder holding {holds} (default: results)",
    )
