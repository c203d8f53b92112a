"""`bench show STUDY`: the study's meta, trial states and scores as a rich table."""

import argparse
import math

from rich.console import Console
from rich.table import Table

from bench.commands import add_study_storage
from bench.evaluation import scores as score_registry
from bench.results import read_records, storage_url_for
from bench.study import load_study


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("study", help="a study name (studies/NAME.toml) or a .toml path")
    add_study_storage(parser)


def _number(value: object) -> str:
    if not isinstance(value, int | float) or isinstance(value, bool):
        return ""
    return "" if not math.isfinite(value) else f"{value:.4g}"


# Columns besides the scores, with the widths they need (text + rich's padding and border).
FIXED_WIDTH = 6 + 7 + 4  # trial, time, the table's outer border (state: its longest entry + 3)
CELL_MIN_WIDTH = 18  # the cell name column folds long names at this width


def shown_scores(
    available: list[str], preferred: tuple[str, ...], width: int, state_width: int = 8
) -> list[str]:
    """The score columns that fit `width` terminal columns: the study's table scores first,
    then the other registered scores in registry order."""
    order = [m for m in preferred if m in available]
    order += [m for m in available if m not in order]
    budget = width - FIXED_WIDTH - CELL_MIN_WIDTH - state_width - 3
    shown = []
    for score in order:
        need = max(len(score_registry.display_name(score)), 7) + 3
        if need > budget:
            break
        shown.append(score)
        budget -= need
    return shown


def run(args: argparse.Namespace) -> int:
    study = load_study(args.study)
    results = read_records(study, args.storage or storage_url_for(args.results))
    console = Console()
    console.print(f"[bold]{study.name}[/bold]: {study.description}")
    states = ", ".join(f"{n} {s.lower()}" for s, n in sorted(results.states.items()))
    console.print(f"{results.total} trials planned; {states or 'none run yet'}", highlight=False)
    for key, value in results.meta.items():
        if isinstance(value, dict):  # e.g. protocols: one line per distinct label
            console.print(f"  {key}:", highlight=False)
            by_value: dict[str, list[str]] = {}
            for name, text in value.items():
                by_value.setdefault(str(text), []).append(score_registry.display_name(name))
            for text, names in by_value.items():
                console.print(f"    {', '.join(names)}: {text}", highlight=False)
        elif isinstance(value, list):  # e.g. caveats
            console.print(f"  {key}: {' '.join(map(str, value)) or 'none'}", highlight=False)
        else:
            console.print(f"  {key}: {value}", highlight=False)

    trials = results.trials
    available = [m for m in score_registry.names() if any(m in row for row in trials)]
    shown_states = [
        f"FAIL ({row['failure']})" if row["state"] == "FAIL" else row["state"] for row in trials
    ]
    state_width = max([len("state"), *map(len, shown_states)])
    scores = shown_scores(available, study.table.scores, console.width, state_width)
    table = Table(title=f"objective: {study.direction} {study.objective_score}")
    names = [score_registry.display_name(m) for m in scores]
    for column in ("trial", "state", "cell", "time", *names):
        left = column in ("state", "cell")
        table.add_column(
            column,
            justify="left" if left else "right",
            no_wrap=column != "cell",
            overflow="fold" if column == "cell" else "ellipsis",
            min_width=CELL_MIN_WIDTH - 3 if column == "cell" else None,
        )
    styles = {"COMPLETE": "", "RUNNING": "yellow", "WAITING": "dim", "FAIL": "red"}
    for row, state in zip(trials, shown_states, strict=True):
        duration = row.get("duration_s")
        time = f"{duration:.0f}s" if isinstance(duration, float) and math.isfinite(duration) else ""
        table.add_row(
            str(row["trial"]),
            state,
            row.get("cell", ""),
            time,
            *(_number(row.get(m)) for m in scores),
            style=styles.get(row["state"], "dim"),
        )
    if results.reference:
        table.add_row(
            "",
            "",
            "real data (held out)",
            "",
            *(_number(results.reference.get(m)) for m in scores),
            style="italic",
        )
    console.print(table)
    hidden = [score_registry.display_name(m) for m in available if m not in scores]
    if hidden:
        console.print(
            f"not shown at {console.width} columns: {', '.join(hidden)} (widen the terminal, "
            f"or see `bench table {args.study}`)",
            highlight=False,
            style="dim",
        )
    failed = [row for row in trials if row["state"] == "FAIL"]
    for row in failed:
        console.print(
            f"trial {row['trial']} ({row.get('cell', '')}) failed: {row['error']}",
            style="red",
            highlight=False,
            markup=False,
            soft_wrap=True,
        )
    if any(row["failure"] == "error" for row in failed):
        console.print(
            f"`bench run --study {args.study} --retry-failed` runs the failed cells again; "
            "lost and interrupted ones resume by themselves",
            highlight=False,
        )
    return 0
