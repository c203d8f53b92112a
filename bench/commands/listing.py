"""`bench list`: the studies in studies/ with their description, size, architectures and data."""

import argparse

from rich.console import Console
from rich.table import Table

from bench.study import STUDIES_DIR, available_studies, load_study, value_text
from casdm.errors import InputError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    del parser  # no options: it lists studies/ under the current folder


def run(args: argparse.Namespace) -> int:
    names = available_studies()
    console = Console()
    if not names:
        console.print(f"no studies: {STUDIES_DIR}/ holds no *.toml file (run from the repo root)")
        return 0
    table = Table(title=f"studies in {STUDIES_DIR}/ (bench run --study NAME)")
    for column in ("name", "description", "size", "architectures", "dataset"):
        table.add_column(
            column,
            justify="right" if column == "size" else "left",
            no_wrap=column in ("name", "size"),
        )
    for name in names:
        try:
            study = load_study(name)
        except InputError as err:
            # One broken file must not hide the others; its error says what to fix.
            table.add_row(name, f"[red]invalid: {err}[/red]", "", "", "")
            continue
        size = f"{study.size} cells" if study.is_grid else f"{study.size} trials (TPE)"
        table.add_row(
            name,
            study.description,
            size,
            ", ".join(map(value_text, study.values("architecture.name"))),
            ", ".join(
                f"{value_text(d)} {value_text(r)}px"
                for d in study.values("data.dataset")
                for r in study.values("data.resolution")
            ),
        )
    console.print(table)
    return 0
