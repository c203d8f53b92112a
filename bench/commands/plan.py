"""`bench plan STUDY`: from the seeds a study has finished (all of it, or a pilot), how small an
effect each declared contrast can detect now, and how many seeds it needs for `min_effect`."""

import argparse

from rich import box
from rich.console import Console
from rich.table import Table

from bench import contrasts
from bench.commands import add_study_storage
from bench.errors import BenchError
from bench.evaluation import scores as score_registry
from bench.findings import build_findings
from bench.results import describe_storage, read_records, storage_url_for
from bench.study import load_study

MAX_SEEDS = 100  # seeds_needed looks no further (None beyond: "over 100")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("study", help="a study name (studies/NAME.toml) or a .toml path")
    parser.add_argument(
        "--power",
        type=float,
        default=0.8,
        help="the probability of detecting min_effect that the seeds should give (default 0.8)",
    )
    add_study_storage(parser)


def run(args: argparse.Namespace) -> int:
    if not 0 < args.power < 1:
        raise BenchError(f"--power {args.power}: give a probability between 0 and 1, e.g. 0.8")
    study = load_study(args.study)
    storage = args.storage or storage_url_for(args.results)
    records = read_records(study, storage)
    findings = build_findings(records, study)
    if findings is None:
        raise BenchError(
            f"study {study.name!r} declares no question: add a [questions] section (or a "
            "[table] baseline) to its file; `bench plan` sizes the declared contrasts"
        )
    usable = [f for f in findings.primary if f.estimate is not None]
    if not usable:
        raise BenchError(
            f"study {study.name!r} has no contrast with 2 or more finished seeds on both sides "
            f"in {describe_storage(storage)}; run a pilot with 2-3 seeds first (e.g. `bench run "
            f"--study {args.study}` with seed = [0, 1, 2] in its [grid])"
        )
    score = score_registry.get(findings.score)
    m = len(findings.primary)
    level = findings.alpha / m  # Holm's first step: Bonferroni, the level every test must pass
    effect = findings.min_effect
    console = Console()
    # What every contrast shares is said once, so that a row fits an 80-column terminal.
    suffixes = {f.label.rpartition(" vs ")[2] for f in usable}
    against = f" vs {suffixes.pop()}" if len(suffixes) == 1 else ""
    seeds = {f.estimate.n for f in usable}
    console.print(
        f"[bold]{study.name}[/bold]: {m} declared contrasts on {score.display}"
        f"{f', each{against}' if against else ''}, paired t-tests, Holm over the {m} at "
        f"family-wise α = {findings.alpha:g}. Planned as Bonferroni, α/{m} = {level:.3g} per "
        f"contrast (Holm's first step: the level the strongest contrast must pass), power "
        f"{args.power:.0%}, from the SD of each contrast's paired differences over the "
        + (f"{seeds.pop()} seeds" if len(seeds) == 1 else "seeds")
        + " finished so far (statsmodels' TTestPower).",
        highlight=False,
    )
    scale = score.scale
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False)
    columns = ["contrast", *(["seeds"] if not against or len(seeds) > 1 else [])]
    columns += ["SD of Δ", "Δ now", "MDE", "decided"]
    for column in columns:
        table.add_column(
            column,
            justify="left" if column in ("contrast", "decided") else "right",
            no_wrap=column == "contrast",  # one line a contrast; the other columns give way
            min_width=9 if column == "decided" else None,
        )
    if effect:
        table.add_column("seeds", justify="right")
    needs = []
    for finding in usable:
        e = finding.estimate
        mde = contrasts.minimal_detectable_effect(e.sd, e.n, level, args.power)
        row = [
            finding.label.removesuffix(against) if against else finding.label,
            *([str(e.n)] if "seeds" in columns else []),
            f"{e.sd * scale:.3g}",
            f"{e.difference * scale:+.3g}",
            f"{mde * scale:.3g}",
            finding.decision,
        ]
        if effect and finding.decision != "undecided":
            row.append("–")  # decided already: more seeds would not change the answer's side
        elif effect:
            need = contrasts.seeds_needed(e.sd, effect, level, args.power, max_seeds=MAX_SEEDS)
            needs.append(need)
            row.append(str(need) if need is not None else f"over {MAX_SEEDS}")
        table.add_row(*row)
    console.print(table)
    console.print(
        f"MDE: the smallest true difference the seeds so far detect with {args.power:.0%} "
        "power."
        + (
            f" seeds: the seeds per cell that detect {effect * scale:g} (undecided contrasts)."
            if effect
            else ""
        ),
        highlight=False,
    )
    if effect and not needs:
        console.print("Every declared contrast is decided: more seeds would not change them.")
    elif effect:
        known = sorted(n for n in needs if n is not None)
        worst = f"over {MAX_SEEDS}" if len(known) < len(needs) else str(known[-1])
        console.print(
            f"To detect a difference of {effect * scale:g} with {args.power:.0%} power in each "
            f"of the {len(needs)} undecided contrasts: {worst} seeds per cell (median: "
            f"{known[len(known) // 2] if known else f'over {MAX_SEEDS}'}). Set them in the "
            "study's seed axis (\\[grid] seed) and run it again in a fresh --storage.",
            highlight=False,
        )
    else:
        console.print(
            "No smallest effect that matters is declared: add [questions] min_effect = "
            f"{{ {findings.score} = ... }} (in {score.display}'s unit) to get the seeds needed.",
            highlight=False,
        )
    return 0
