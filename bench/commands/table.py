"""`bench table STUDY`: the study's results as LaTeX, Markdown and CSV tables."""

import argparse
import sys
from pathlib import Path

from bench.commands import add_study_storage
from bench.errors import BenchError
from bench.evaluation import scores as score_registry
from bench.findings import Findings, render_markdown
from bench.per_trial import trials_csv
from bench.results import (
    Records,
    check_one_evaluator_build,
    describe_storage,
    read_records,
    storage_url_for,
)
from bench.study import Study, load_study
from bench.table_render import TEXT_WIDTH_PT, choose_fit
from bench.tables import FORMATS, build_table, render, write_table


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
    parser.add_argument(
        "--layout",
        choices=("auto", "wide", "long"),
        help="wide: a column group per column label; long: one row per cell, the axes as "
        "leading columns; auto: whichever fits a two-column paper (default: the study's "
        "[table] layout, else auto)",
    )
    parser.add_argument(
        "--scores",
        help="comma-separated score names or display names shown instead of the study's "
        "[table] scores, e.g. fid,sfid,is (`bench list --components` lists the scores)",
    )
    parser.add_argument(
        "--findings",
        action="store_true",
        help="print the findings generated from the study's declared questions ([questions]: "
        "every declared contrast on the primary score, decided at the family-wise level) "
        "instead of the table; findings.md is written beside the table either way",
    )
    # The old name of --scores, still accepted.
    parser.add_argument("--metrics", dest="old_metrics", help=argparse.SUPPRESS)
    add_study_storage(parser, "the default storage and tables")


def parse_scores(text: str, option: str = "--scores") -> tuple[str, ...]:
    """ "fid,sFID,is" -> ("fid", "sfid", "is_mean"): score names or display names, any case."""
    registered = score_registry.scores()
    names = {score.name: score.name for score in registered}
    names.update({score.display.lower(): score.name for score in registered})
    chosen = []
    for word in (w.strip() for w in text.split(",")):
        name = names.get(word.lower())
        if name is None:
            raise BenchError(
                f"{option}: unknown score {word!r}; valid: "
                f"{', '.join(s.name for s in registered)} (or their display names: "
                f"{', '.join(s.display for s in registered)})"
            )
        if name in chosen:
            raise BenchError(f"{option}: {word!r} is listed twice")
        chosen.append(name)
    return tuple(chosen)


def run(args: argparse.Namespace) -> int:
    study = load_study(args.study)
    if args.scores and args.old_metrics:
        raise BenchError("--metrics is the old name of --scores; give only --scores")
    if args.old_metrics:
        scores = parse_scores(args.old_metrics, "--metrics")
    else:
        scores = parse_scores(args.scores) if args.scores else None
    storage = args.storage or storage_url_for(args.results)
    results = read_records(study, storage)
    check_one_evaluator_build(results)  # scores of different evaluator builds do not compare
    if not results.complete:
        states = ", ".join(f"{n} {s.lower()}" for s, n in sorted(results.states.items()))
        raise BenchError(
            f"study {study.name!r} has no complete trial in {describe_storage(storage)} "
            f"({states or 'no trials'}); run `bench run --study {args.study}` first"
        )
    formats = (args.format,) if args.format else FORMATS
    out = args.out if args.out is not None else study.results_dir(args.results)
    table = build_table(results, study, scores=scores, layout=args.layout)
    paths = write_table(table, Path(out), formats)
    findings = table.findings
    if not args.format:  # a folder: the per-trial values and the findings go beside the table
        paths += write_companions(results, study, Path(out), findings)
    if args.findings:
        if findings is None:
            raise BenchError(
                f"study {study.name!r} declares no question: add a [questions] section (or a "
                "[table] baseline, which every cell is then compared against) to its file"
            )
        print(render_markdown(findings), end="")
    else:
        print(render(table, args.format or "markdown"), end="")
    # To stderr, so that `bench table NAME --format csv > table.csv` stays a clean CSV.
    print("wrote " + ", ".join(str(p) for p in paths), file=sys.stderr)
    fit = choose_fit(table)
    if fit.width_pt > TEXT_WIDTH_PT and "latex" in formats:
        print(
            f"warning: the LaTeX table does not fit a two-column page: {fit.width_pt:.0f} pt "
            f"in \\footnotesize across both columns, against a \\textwidth of "
            f"{TEXT_WIDTH_PT:.0f} pt (estimated from Computer Modern's metrics in the standard "
            "article class; other fonts or classes differ); to narrow it, show fewer scores "
            "(--scores fid,sfid,is), drop cost columns ([table] cost), or try --layout wide",
            file=sys.stderr,
        )
    return 0


def write_companions(
    results: "Records", study: "Study", out: Path, findings: Findings | None
) -> list[Path]:
    """trials.csv (every trial's values) and, if the study declares questions, findings.md."""
    from casdm.files import atomic_write_text

    texts = {out / "trials.csv": trials_csv(results, study)}
    if findings is not None:
        texts[out / "findings.md"] = render_markdown(findings)
    for path, text in texts.items():
        atomic_write_text(path, text)
    return list(texts)
