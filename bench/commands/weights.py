"""`bench weights status|fetch`: the pretrained files the project can use, and getting them."""

import argparse

from rich.console import Console
from rich.progress import DownloadColumn, Progress, TransferSpeedColumn
from rich.table import Table

from casdm import weights
from casdm.errors import MissingWeightsError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    actions.add_parser(
        "status",
        help="list every weights file: present, missing or corrupt, with its path",
        description="list every weights file: present, missing or corrupt, with its path",
    )
    fetch = actions.add_parser(
        "fetch",
        help="download weights into the torch hub cache (hash-checked, atomic)",
        description="download weights into the torch hub cache ($TORCH_HOME/hub/checkpoints); "
        "each file is hash-checked and renamed into place only when complete",
    )
    fetch.add_argument("names", nargs="*", metavar="NAME", help="which files (default: all)")
    fetch.add_argument("--force", action="store_true", help="download even files already present")
    fetch.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    return _status() if args.action == "status" else _fetch(args.names, args.force, args.quiet)


def _status() -> int:
    styles = {"present": "green", "unverified": "cyan", "missing": "yellow", "corrupt": "bold red"}
    table = Table(title=f"pretrained weights in {weights.hub_dir()}")
    for column in ("name", "status", "used by"):
        table.add_column(column)
    table.add_column("path", overflow="fold")  # shown whole: it is what the user acts on
    states = {name: weights.status(name) for name in weights.WEIGHTS}
    for name, state in states.items():
        table.add_row(
            name,
            f"[{styles[state]}]{state}[/]",
            weights.WEIGHTS[name].used_by,
            str(weights.weights_path(name)),
        )
    console = Console()
    console.print(table)
    absent = [name for name, state in states.items() if not weights.usable(state)]
    if absent:
        console.print(f"get them with: bench weights fetch {' '.join(absent)}", highlight=False)
    if "unverified" in states.values():
        console.print(
            "unverified: no hash is published for the file; its SHA-256 is recorded with every "
            "score made with it",
            highlight=False,
        )
    return 0


def _fetch(names: list[str], force: bool, quiet: bool) -> int:
    names = names or list(weights.WEIGHTS)
    for name in names:
        weights.entry(name)  # unknown names fail before any download
    console = Console(stderr=True)
    failures = []
    with Progress(
        *Progress.get_default_columns(),
        DownloadColumn(),
        TransferSpeedColumn(),
        console=console,
        disable=quiet,
    ) as bars:
        for name in names:
            path = weights.weights_path(name)
            if not force and weights.usable(weights.status(name)):
                bars.console.print(f"{name}: present at {path}", highlight=False)
                continue
            task = bars.add_task(name, total=None)

            def tick(done: int, total: int | None, task=task) -> None:
                bars.update(task, completed=done, total=total)

            try:
                weights.fetch(name, progress=tick)
            except (OSError, MissingWeightsError) as err:
                entry = weights.entry(name)
                failures.append(f"{name}: {entry.url} -> {path} failed ({err})")
                continue
            bars.console.print(f"{name}: fetched to {path}", highlight=False)
    if failures:
        raise MissingWeightsError(
            "could not fetch: "
            + "; ".join(failures)
            + ". Nothing partial was left behind. Retry on a machine with network access, or "
            "download each URL by hand into the folder shown (set TORCH_HOME to choose another)."
        )
    return 0
