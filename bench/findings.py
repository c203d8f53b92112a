"""Findings generated from a study's declared questions, never picked by hand.

The family is every declared contrast (bench.study.Questions) on the primary score: each cell
against its baseline cell, paired by seed, tested together with Holm's correction at the
family-wise level `alpha`, and each declared better, worse, no meaningful difference (when a
`min_effect` is declared) or undecided (bench.contrasts.decide_family). The same contrasts on the
other scores of the table are exploratory estimates: shown with their intervals, never decided.
"""

import dataclasses
import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from bench import contrasts
from bench.evaluation import scores as score_registry
from bench.results import stored_caveats
from bench.rows import Row, per_seed, select
from bench.study import Study, value_text

if TYPE_CHECKING:
    from bench.results import Records, Results

TOO_FEW = "too few seeds"  # the decision of a contrast with fewer than 2 paired seeds


@dataclass(frozen=True)
class Finding:
    """One contrast on one score: the estimate (None: fewer than 2 common seeds) and, for the
    primary score, its decision and Holm-adjusted p."""

    cell: dict[str, Any]  # the compared cell's axis values (seed excluded)
    baseline: dict[str, Any]  # its baseline cell's
    label: str  # e.g. "Cas-DM, L2 vs no metric loss"
    score: str
    estimate: "contrasts.Contrast | None"
    primary: bool
    decision: str = ""  # primary only: better / worse / no meaningful difference / undecided
    p_holm: float | None = None


@dataclass(frozen=True)
class Findings:
    """Every declared contrast on the primary score (decided) and on the other scores."""

    study: str
    score: str
    alpha: float
    min_effect: float | None  # the primary score's, in its unit
    primary: tuple[Finding, ...]
    exploratory: tuple[Finding, ...]
    seeds: int  # the most seeds any pair holds
    evaluator: str = ""  # the evaluator's label (study meta), e.g. "classifier:digits"
    caveats: tuple[str, ...] = ()  # the components' caveats (e.g. a random LPIPS trunk)
    # Per score: the medians over multi-seed cells of the between-seed SD and of the
    # within-seed bootstrap SE (bench.intervals.variance_components), when both are known.
    variance: dict[str, tuple[float, float]] = dataclasses.field(default_factory=dict)

    def counts(self) -> dict[str, int]:
        """decision -> how many primary contrasts got it."""
        out: dict[str, int] = {}
        for finding in self.primary:
            out[finding.decision] = out.get(finding.decision, 0) + 1
        return out


def contrast_pairs(study: Study) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(cell, baseline cell) for every declared contrast, in grid order, each pair once."""
    if study.questions is None:
        return []
    axes = [k for k in study.grid if k != "seed"]
    cells = [
        dict(zip(axes, combo, strict=True))
        for combo in itertools.product(*(study.grid[k] for k in axes))
    ]
    pairs, seen = [], set()
    for declared in study.questions.contrasts:
        for cell in cells:
            if not all(_same(cell[k], v) for k, v in declared.of.items()):
                continue
            if all(_same(cell[k], v) for k, v in declared.against.items()):
                continue  # a baseline cell itself
            baseline = {**cell, **declared.against}
            key = (cell_key(cell), cell_key(baseline))
            if key not in seen:
                seen.add(key)
                pairs.append((cell, baseline))
    return pairs


def build_findings(results: "Records | Results", study: Study) -> Findings | None:
    """The study's findings from its COMPLETE trials (None: it declares no question)."""
    questions = study.questions
    if questions is None:
        return None
    rows = results.rows
    pairs = contrast_pairs(study)
    primary = [_finding(study, rows, cell, base, questions.score, True) for cell, base in pairs]
    direction = score_registry.direction(questions.score) or study.direction
    min_effect = questions.min_effect.get(questions.score)
    # The family is every declared contrast: one without 2 common seeds stays in it with
    # p = 1 (it counts in Holm's m), and is said to have too few seeds.
    estimates = [f.estimate for f in primary]
    decisions = contrasts.decide_family(
        estimates, alpha=questions.alpha, min_effect=min_effect, direction=direction
    )
    adjusted = contrasts.holm([contrasts.p_or_one(e) for e in estimates])
    primary = [
        dataclasses.replace(f, decision=decision, p_holm=p)
        if f.estimate is not None
        else dataclasses.replace(f, decision=TOO_FEW)
        for f, decision, p in zip(primary, decisions, adjusted, strict=True)
    ]
    others = [s for s in study.table.scores if s != questions.score]
    exploratory = [
        _finding(study, rows, cell, base, score, False) for cell, base in pairs for score in others
    ]
    seeds = max((f.estimate.n for f in primary if f.estimate is not None), default=0)
    return Findings(
        variance=variance_sources(study, rows, study.table.scores),
        evaluator=str(results.meta.get("evaluator", "")),
        caveats=tuple(stored_caveats(results.meta)),
        study=study.name,
        score=questions.score,
        alpha=questions.alpha,
        min_effect=min_effect,
        primary=tuple(primary),
        exploratory=tuple(exploratory),
        seeds=seeds,
    )


def variance_sources(
    study: Study, rows: list[Row], scores: Sequence[str]
) -> dict[str, tuple[float, float]]:
    """score -> (median between-seed SD, median within-seed bootstrap SE) over the cells with
    at least 2 seeds whose trials stored a bootstrap SE."""
    from bench.intervals import variance_components

    axes = [k for k in study.grid if k != "seed"]
    out = {}
    for score in scores:
        between, within = [], []
        for combo in itertools.product(*(study.grid[k] for k in axes)):
            selected = select(rows, dict(zip(axes, combo, strict=True)))
            parts = variance_components(
                per_seed(selected, score), per_seed(selected, f"bootstrap.{score}.se")
            )
            if parts.between_sd is not None and parts.within_sd:
                between.append(parts.between_sd)
                within.append(parts.within_sd)
        if between:
            out[score] = (float(np.median(between)), float(np.median(within)))
    return out


def _finding(
    study: Study,
    rows: list[Row],
    cell: dict[str, Any],
    baseline: dict[str, Any],
    score: str,
    primary: bool,
) -> Finding:
    direction = score_registry.direction(score) or "minimize"
    estimate = contrasts.paired_contrast(
        per_seed(select(rows, cell), score),
        per_seed(select(rows, baseline), score),
        direction=direction,
    )
    return Finding(cell, baseline, contrast_label(study, cell, baseline), score, estimate, primary)


def contrast_label(study: Study, cell: dict[str, Any], baseline: dict[str, Any]) -> str:
    """ "Cas-DM, L2 vs no metric loss": the cell's values, then the baseline's that differ."""
    changed = [k for k in cell if not _same(cell[k], baseline[k])]
    return (
        ", ".join(study.value_label(k, v) for k, v in cell.items())
        + " vs "
        + ", ".join(study.value_label(k, baseline[k]) for k in changed)
    )


def _same(a: Any, b: Any) -> bool:
    return value_text(a) == value_text(b)


def cell_key(values: dict[str, Any]) -> tuple[tuple[str, str], ...]:
    """A cell's axis values as a hashable key (values compared as printed)."""
    return tuple(sorted((k, value_text(v)) for k, v in values.items()))


# --- text ----------------------------------------------------------------------------------


def _number(value: float, score: str) -> str:
    info = score_registry.get(score)
    decimals = info.decimals + 1  # differences are read finer than the scores themselves
    return f"{value * info.scale:+.{decimals}f}"


def _interval(estimate: "contrasts.Contrast", score: str) -> str:
    return (
        f"{_number(estimate.difference, score)} "
        f"[{_number(estimate.ci_low, score)}, {_number(estimate.ci_high, score)}]"
    )


def _p(value: float | None) -> str:
    if value is None or math.isnan(value):
        return "–"
    return f"{value:.2g}" if value >= 0.001 else f"{value:.1e}"


def render_markdown(findings: Findings) -> str:
    """The findings section: what was asked, how it was decided, every declared contrast."""
    score = score_registry.get(findings.score)
    name = score.display
    unit = f" (×{score.scale:g})" if score.scale != 1 else ""
    m = len(findings.primary)
    evaluator = f" ({findings.evaluator})" if findings.evaluator else ""
    lines = [f"## Findings: {findings.study}", ""]
    lines.append(
        f"Generated from the study's declared questions, not selected: every one of the {m} "
        f"declared contrasts on the primary score, {name}{evaluator}, each cell against its "
        "baseline cell with the same seeds (paired). They are one "
        f"family: paired t-tests, Holm-corrected, family-wise α = {findings.alpha:g}. "
        + (
            f"Smallest effect that matters: {findings.min_effect * score.scale:g}{unit}; a "
            "contrast whose interval lies within it is 'no meaningful difference' (TOST)."
            if findings.min_effect
            else "No smallest effect that matters is declared ([questions] min_effect), so no "
            "contrast can be found to make no difference; 'undecided' says only that the data "
            "cannot tell."
        )
    )
    lines.append("")
    if findings.caveats:  # on the findings too: a pasted section keeps them
        lines += ["**Caveats:** " + " ".join(findings.caveats), ""]
    if findings.seeds:
        n = findings.seeds
        first = findings.alpha / max(m, 1)
        smallest = _p(2 / 2**n)
        if contrasts.exact_test_can_reach(n, first):
            text = (
                f"With {n} seeds per cell the exact sign-flip test can reach p = {smallest}, "
                f"below the first Holm level (α/{m} = {first:.3g}): decisions use the t-test, "
                "and the exact p beside it checks them without assuming normality."
            )
        else:
            text = (
                f"With {n} seeds per cell the exact sign-flip test cannot go below p = "
                f"{smallest}, above the first Holm level (α/{m} = {first:.3g}): every decision "
                "rests on the t-test's assumption that the paired differences are normal (the "
                "exact p is shown beside it). `bench plan` says how many seeds would do."
            )
        lines.append(text)
        lines.append("")
    if findings.variance:
        parts = []
        for key, (between, within) in findings.variance.items():
            info = score_registry.get(key)
            parts.append(
                f"{info.display} {between * info.scale:.3g} vs {within * info.scale:.3g} "
                f"({between / within:.1f}x)"
                if within
                else f"{info.display} {between * info.scale:.3g}"
            )
        lines.append(
            "Sources of variance (medians over the cells): the SD between seeds against the "
            "bootstrap SE over one seed's samples: " + "; ".join(parts) + ". A single-seed "
            "± (the bootstrap) leaves out the variation between training runs."
        )
        lines.append("")
    counts = findings.counts()
    lines.append(
        "Summary: "
        + ", ".join(f"{counts[d]} {d}" for d in sorted(counts, key=_decision_order))
        + "."
    )
    lines.append("")
    lines.append(
        f"| Contrast | n | Δ {name}{unit} [95% CI] | d_z | P(better) [95% CI] | p (t) | "
        "p (exact) | p (Holm) | Decision |"
    )
    lines.append("| :-- | --: | --: | --: | --: | --: | --: | --: | :-- |")
    for f in findings.primary:
        e = f.estimate
        if e is None:
            lines.append(f"| {f.label} | – | – | – | – | – | – | – | {f.decision} |")
            continue
        low, high = e.improvement_ci
        lines.append(
            f"| {f.label} | {e.n} | {_interval(e, f.score)} | {e.effect_size:+.2f} | "
            f"{e.improvement_probability:.2f} [{low:.2f}, {high:.2f}] | {_p(e.p_t)} | "
            f"{_p(e.p_exact)} | {_p(f.p_holm)} | **{f.decision}** |"
        )
    if findings.exploratory:
        lines += [
            "",
            "Exploratory estimates (the same contrasts on the other scores; not tested, no "
            "multiplicity control, no decision):",
            "",
            "| Contrast | Score | n | Δ [95% CI] | P(better) |",
            "| :-- | :-- | --: | --: | --: |",
        ]
        for f in findings.exploratory:
            e = f.estimate
            display = score_registry.get(f.score).display
            if e is None:
                lines.append(f"| {f.label} | {display} | – | – | – |")
                continue
            lines.append(
                f"| {f.label} | {display} | {e.n} | {_interval(e, f.score)} | "
                f"{e.improvement_probability:.2f} |"
            )
    return "\n".join(lines) + "\n"


def _decision_order(decision: str) -> int:
    order = ["better", "worse", "no meaningful difference", "undecided", TOO_FEW]
    return order.index(decision) if decision in order else len(order)
