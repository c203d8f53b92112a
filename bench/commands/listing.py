"""`bench list`: the studies in studies/ with their description, size, architectures and data;
`bench list --components`: every component a study may name, with its options."""

import argparse
import dataclasses
from pathlib import Path

from rich.console import Console
from rich.table import Table

from bench.errors import BenchError
from bench.study import STUDIES_DIR, available_studies, load_study, value_text
from casdm.components import ENTRY_POINT_GROUP, kinds, loaded_plugins, registry
from casdm.config import field_default
from casdm.errors import InputError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--dir",
        type=Path,
        help="the folder of study files to list (default: studies/ under the current folder, "
        "as in the casdm-bench checkout)",
    )
    parser.add_argument(
        "--components",
        action="store_true",
        help="list the components instead (architectures, metric losses, samplers, datasets, "
        "evaluators, scores: built-in and from plugins) with their options and defaults",
    )


def run(args: argparse.Namespace) -> int:
    if args.components:
        return list_components()
    folder = args.dir or STUDIES_DIR
    where = f"{folder}/" if folder.is_absolute() else f"{folder}/ ({folder.resolve()})"
    if not folder.is_dir():
        raise BenchError(
            f"no study folder {where}; run bench from the casdm-bench checkout (its studies/ "
            "holds the shipped studies), pass --dir PATH, or run a study file directly with "
            "`bench run --study PATH.toml`"
        )
    names = available_studies(folder)
    console = Console()
    if not names:
        console.print(
            f"no studies: {where} holds no *.toml file; pass --dir PATH for another folder",
            highlight=False,
            soft_wrap=True,  # never break the path
        )
        return 0
    study_arg = "NAME" if args.dir is None else f"{folder}/NAME.toml"
    table = Table(title=f"studies in {folder}/ (bench run --study {study_arg})")
    for column in ("name", "description", "size", "architectures", "dataset"):
        table.add_column(
            column,
            justify="right" if column == "size" else "left",
            no_wrap=column in ("name", "size"),
        )
    for name in names:
        try:
            study = load_study(name if args.dir is None else str(folder / f"{name}.toml"))
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


# Each kind's heading and the keys that name one.
HEADINGS = {
    "architecture": ("architectures", "architecture.name"),
    "metric": ("metric losses", "metric.name"),
    "sampler": ("samplers", "sample.sampler"),
    "dataset": ("datasets", "data.dataset"),
    "schedule": ("noise schedules", "diffusion.schedule"),
    "evaluator": ("evaluators", "eval.evaluator"),
    "score": ("scores", "[table] scores, objective.score"),
}


def list_components() -> int:
    """One table per kind: name, its options with their defaults, what it is, where from."""
    import bench.evaluation  # noqa: F401  (defines the evaluator and score kinds)

    console = Console()
    for kind in kinds():
        components = registry(kind)
        heading, keys = HEADINGS.get(kind, (f"{kind}s", kind))
        title = f"{heading} (set with {keys})"
        table = Table(title=title, title_justify="left")
        for column in ("name", "options (default)", "what", "from"):
            table.add_column(column, no_wrap=column == "name", overflow="fold")
        for name in components:
            component = components.get(name)
            options = ", ".join(
                f"{f.name}={value_text(field_default(f))}"
                for f in dataclasses.fields(component.options)
            )
            module = component.target.split(":")[0]
            origin = "built-in" if module.split(".")[0] in ("casdm", "bench") else module
            table.add_row(name, options or "-", component.summary, origin)
        console.print(table)
    plugins = loaded_plugins()
    console.print(
        f"plugins: {', '.join(plugins) if plugins else 'none'} (entry-point group "
        f"{ENTRY_POINT_GROUP!r}, or bench --plugin MODULE)",
        highlight=False,
    )
    return 0
