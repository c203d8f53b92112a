"""casdm-bench: ablation studies of diffusion models trained with metric losses (Cas-DM).

Define a study (a grid or search of training configurations) in studies/NAME.toml, then
`bench run --study NAME` trains, samples and scores every cell (FID, sFID, IS, precision,
recall; resumable, several workers may share it), `bench table`, `bench plot` and `bench report`
turn the results into a paper table, figures and an HTML report, and `bench ui` opens the runs
in MLflow. Start with `bench run --study quickstart` (minutes on a laptop CPU).
"""

import argparse
import gc
import importlib
import os
import sys
from collections.abc import Sequence

from bench.errors import EXIT_BAD_INPUT, EXIT_INTERRUPTED
from casdm.errors import InputError

COMMANDS = [
    # (name, module under bench.commands, one-line help)
    ("train", "train", "train one model from a config and save samples (no study)"),
    ("run", "run", "run (or join) an Optuna study defined in studies/NAME.toml"),
    ("table", "table", "write a study's results table as LaTeX, Markdown and CSV"),
    ("plot", "plot", "draw a study's figures (sweeps, bars, curves, samples, cost) for a paper"),
    ("plan", "plan", "how many seeds a study's declared contrasts need (power from its seeds)"),
    ("report", "report", "write a study's self-contained HTML report (table, figures, setup)"),
    ("list", "listing", "list the studies in studies/"),
    ("show", "show", "show a study's trials and their scores"),
    ("ui", "ui", "start the MLflow UI on a study's tracking store"),
    ("eval", "eval", "score a folder or .npz of samples against a dataset (FID, sFID, IS, ...)"),
    ("sample", "sample", "sample images from a checkpoint"),
    ("weights", "weights", "show or fetch the pretrained weights the project uses"),
    ("perf", "perf", "measure training, sampling and evaluation throughput on this machine"),
]


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser with every command listed; `command`'s options (all, if None) filled in."""
    parser = argparse.ArgumentParser(
        prog="bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--plugin",
        action="append",
        metavar="MODULE",
        help="import MODULE first: a package's components (architectures, metric losses, "
        "samplers, datasets, evaluators, scores) that register themselves; repeatable. "
        "Installed packages can instead declare the 'casdm_bench.components' entry-point group",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, module, help_text in COMMANDS:
        p = sub.add_parser(name, help=help_text, description=help_text)
        if command in (None, name):
            mod = importlib.import_module(f"bench.commands.{module}")
            mod.add_arguments(p)
            p.set_defaults(handler=mod.run)
    return parser


def load_plugins(argv: list[str]) -> list[str]:
    """Import the modules of leading `--plugin MODULE` options; the rest of argv.

    They are also put in $CASDM_PLUGINS, so that the processes a command starts (torchrun
    ranks, workers) load the same components.
    """
    modules = []
    while argv and (argv[0] == "--plugin" or argv[0].startswith("--plugin=")):
        if argv[0] == "--plugin":
            if len(argv) < 2:
                raise InputError("--plugin needs a module name: bench --plugin MODULE COMMAND")
            modules.append(argv[1])
            argv = argv[2:]
        else:
            modules.append(argv[0].partition("=")[2])
            argv = argv[1:]
    if modules:
        from casdm import components

        known = [m for m in os.environ.get(components.PLUGINS_ENV, "").split(",") if m]
        os.environ[components.PLUGINS_ENV] = ",".join(dict.fromkeys([*known, *modules]))
        for module in modules:
            components.load_plugin(module)
    return argv


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        argv = load_plugins(argv)
    except InputError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    # The first argument names the command (`bench` itself has no other option than -h and
    # --plugin, taken above).
    command = argv[0] if argv and argv[0] in {name for name, _, _ in COMMANDS} else ""
    args = build_parser(command).parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except InputError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt as err:
        # `bench run` has marked its trial interrupted; the same command resumes it.
        print(
            f"interrupted ({err or 'Ctrl-C'}); run the same command again to resume",
            file=sys.stderr,
        )
        return EXIT_INTERRUPTED


def console() -> None:
    """The `bench` command and `python -m bench`: `main()`, then the process's exit.

    Before the interpreter tears down, every object is moved out of the garbage collector's
    reach (gc.freeze): its last collections would otherwise walk the whole heap (torch's,
    Optuna's, every module's), about a second that the user waits after the last line. Exit
    handlers, and the finalizers of what module teardown releases, run as usual; only garbage
    cycles left at exit are not collected, which Python never promises to finalize anyway.
    """
    code = main()
    gc.freeze()
    sys.exit(code)
