"""A study's results as a paper table: what each cell holds (bench.table_render writes it out).

Rows and column groups come from the study's [table] layout. A cell with several seeds shows
the mean and the half-width of its 95% Student-t confidence interval (bench.analysis), with n
where it falls short of the study's seed count; a single-seed cell shows its score and ±1.96
bootstrap standard errors over its generated samples when the trial stored them (sampling
uncertainty only: bench.evaluation.bootstrap). The best value of each column is bold, judged at
the displayed precision so that visible ties are all bold.

With `[table] baseline = { AXIS = VALUE }` every other cell is compared with the baseline cell
sharing its other axis values (a paired estimate by seed where both hold the same seeds, same
seed: same initial weights and data order; Welch's otherwise), in the CSV. Markers come from the
study's declared questions only (bench.findings): a cell is marked better (worse) when its
declared contrast on the primary score is decided so, Holm over the declared family; every
other comparison is an exploratory estimate without a marker. Costs (bench.costs) are means
over the cell's seeds.

A "Real data (held-out)" line scores the dataset's other split against the same reference
statistics: the floor a perfect model would reach, shown once per score. Every score is shown
as its registered component says (bench.evaluation.scores: display name, decimals, scale).
"""

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from bench.analysis import CONFIDENCE, Comparison, compare, t_interval
from bench.costs import COSTS
from bench.evaluation import scores as score_registry
from bench.findings import Findings, build_findings, cell_key, variance_sources
from bench.intervals import proportion_interval, se_uncertainty
from bench.results import stored_caveats
from bench.rows import Row, column, is_finite, mean, per_seed, select
from bench.study import Study, value_text

if TYPE_CHECKING:
    from bench.results import Records, Results


Format = Literal["latex", "markdown", "csv"]
FORMATS: tuple[Format, ...] = ("latex", "markdown", "csv")
EXTENSIONS: dict[Format, str] = {"latex": "tex", "markdown": "md", "csv": "csv"}
Layout = Literal["wide", "long"]
LAYOUTS: tuple[str, ...] = ("auto", "wide", "long")
REFERENCE_LABEL = "Real data (held-out)"
BOOTSTRAP_Z = 1.959963984540054  # scipy.stats.norm.ppf(0.975): the bootstrap's normal interval
BETTER, WORSE = "⁺", "⁻"  # significance markers (LaTeX: \textsuperscript)


@dataclass(frozen=True)
class Cell:
    """One table entry: a score over the cell's seeds, its uncertainty and its test.

    `half_width` is the ± of the display: the Student-t 95% half-width over seeds (uncertainty
    "t95"), 1.96 bootstrap standard errors of a single seed's score ("bootstrap95"), or None.
    """

    mean: float | None
    std: float | None  # sample standard deviation over seeds (ddof = 1)
    n: int
    half_width: float | None = None
    uncertainty: str = ""  # "t95", "bootstrap95" or ""
    bootstrap_se: float | None = None
    best: bool = False
    baseline: bool = False  # this cell is a baseline the others are tested against
    comparison: Comparison | None = None
    p_holm: float | None = None
    marker: str = ""  # BETTER, WORSE or ""
    # The interval's ends when it is not mean ± half_width (uncertainty "bounded95": a
    # proportion's interval inside [0, 1], bench.intervals.proportion_interval).
    low: float | None = None
    high: float | None = None

    def interval(self) -> tuple[float, float] | None:
        """(low, high) of the shown interval, or None."""
        if self.low is not None and self.high is not None:
            return self.low, self.high
        if self.mean is None or self.half_width is None:
            return None
        return self.mean - self.half_width, self.mean + self.half_width


@dataclass(frozen=True)
class Table:
    """A study's table, independent of the output format."""

    name: str
    caption: str  # everything but the layout-dependent sentences (see `caption_for`)
    partial: bool
    row_header: str
    row_axes: tuple[str, ...]
    column_axes: tuple[str, ...]
    rows: tuple[tuple[str, dict[str, Any]], ...]  # (label, raw axis values)
    groups: tuple[tuple[str, dict[str, Any]], ...]  # column groups, same shape
    scores: tuple[str, ...]
    cells: dict[tuple[int, int, str], Cell]  # (row index, group index, score) -> Cell
    reference: dict[str, float] | None  # score -> real-data value
    seeds: int  # n a complete cell has; fewer is shown as "(n=k)"
    cost: tuple[str, ...] = ()  # cost keys shown as columns (the CSV has them all)
    costs: dict[tuple[int, int], dict[str, float | None]] = field(default_factory=dict)
    axis_values: dict[str, dict[str, str]] = field(default_factory=dict)  # axis -> text -> label
    axis_titles: dict[str, str] = field(default_factory=dict)
    flags: dict[tuple[int, int], dict[str, Any]] = field(default_factory=dict)  # CSV markers
    protocols: dict[str, str] = field(default_factory=dict)  # score key -> protocol label
    layout: str = "auto"  # the study's [table] layout, or --layout
    # (row, group, score) -> {seed: value}: what each cell's interval and test were made from
    seed_values: dict[tuple[int, int, str], dict[int, float]] = field(default_factory=dict)
    primary: str = ""  # the score the declared questions decide (its markers), "" if none
    findings: Findings | None = None  # the declared questions' findings (bench.findings)


def build_table(
    results: "Records | Results",
    study: Study,
    *,
    scores: Sequence[str] | None = None,
    layout: str | None = None,
) -> Table:
    """Aggregate COMPLETE trials over seeds into the study's rows x column groups x scores.

    `scores` and `layout` override the study's [table] scores and layout.
    """
    trials = results.rows
    spec = study.table
    scores = tuple(scores or spec.scores)
    rows = _combos(study, trials, spec.rows)
    groups = _combos(study, trials, spec.columns)
    samples: dict[tuple[int, int, str], dict[int, float]] = {}
    cells: dict[tuple[int, int, str], Cell] = {}
    costs: dict[tuple[int, int], dict[str, float | None]] = {}
    for (r, (_, row)), (g, (_, group)) in itertools.product(enumerate(rows), enumerate(groups)):
        selected = select(trials, {**row, **group})
        for score in scores:
            samples[r, g, score] = per_seed(selected, score)
            cells[r, g, score] = _aggregate(selected, score, results.meta.get("num_samples"))
        costs[r, g] = {key: mean(selected, "cost." + key) for key in COSTS}
    # Only rows and column groups holding at least one finished trial are shown.
    filled = {(r, g) for (r, g, _), cell in cells.items() if cell.n}
    kept_rows = [r for r in range(len(rows)) if any((r, g) in filled for g in range(len(groups)))]
    kept_groups = [g for g in range(len(groups)) if any((r, g) in filled for r in kept_rows)]

    def keep(mapping: dict) -> dict:
        return {
            (kept_rows.index(k[0]), kept_groups.index(k[1]), *k[2:]): v
            for k, v in mapping.items()
            if k[0] in kept_rows and k[1] in kept_groups
        }

    rows = [rows[r] for r in kept_rows]
    groups = [groups[g] for g in kept_groups]
    cells, samples, costs = keep(cells), keep(samples), keep(costs)
    cells = _mark_best(cells, len(rows), len(groups), scores)
    findings = build_findings(results, study)
    cells, tests = _significance(cells, samples, rows, groups, scores, spec.baseline, findings)
    meta = _meta(results, study)
    axes = (*spec.rows, *spec.columns)
    done = len(trials)
    return Table(
        name=study.name,
        caption=_caption(results, study, done, meta, cells, tests, spec.baseline),
        partial=done < results.total,
        row_header=", ".join(_axis_title(k) for k in spec.rows) or "Model",
        row_axes=spec.rows,
        column_axes=spec.columns,
        rows=tuple(rows),
        groups=tuple(groups),
        scores=scores,
        cells=cells,
        reference=_reference(results.reference, scores),
        seeds=len(study.grid.get("seed", [None])),
        cost=spec.cost,
        costs=costs,
        axis_values={a: _value_labels(study, a, [*rows, *groups]) for a in axes},
        axis_titles={a: _axis_title(a) for a in axes},
        flags=_flags(study, meta, rows, groups),
        protocols={k: str(v) for k, v in (meta.get("protocols") or {}).items()},
        layout=layout or spec.layout,
        seed_values=samples,
        primary=study.questions.score if study.questions is not None else "",
        findings=findings,
    )


def render(table: Table, fmt: Format) -> str:
    """The table as LaTeX (a booktabs `table`/`table*` environment), GitHub Markdown or CSV."""
    from bench import table_render

    if fmt not in FORMATS:
        raise ValueError(f"unknown table format {fmt!r}; valid formats: {', '.join(FORMATS)}")
    return table_render.render(table, fmt)


def write_tables(
    results: "Records | Results",
    study: Study,
    out: Path | None = None,
    formats: Sequence[Format] = FORMATS,
    *,
    scores: Sequence[str] | None = None,
    layout: str | None = None,
) -> list[Path]:
    """Build the table and write it atomically in each format; returns the paths written.

    `out` is a folder (default results/STUDY/) receiving table.{tex,md,csv}, or, with a single
    format, a file path (any name with a suffix).
    """
    table = build_table(results, study, scores=scores, layout=layout)
    return write_table(table, study.results_dir() if out is None else Path(out), formats)


def write_table(table: Table, out: Path, formats: Sequence[Format] = FORMATS) -> list[Path]:
    """Write a built table atomically in each format (`out` as in `write_tables`)."""
    from casdm.files import atomic_write_text

    if len(formats) == 1 and out.suffix and not out.is_dir():
        paths = {formats[0]: out}
    else:
        paths = {fmt: out / f"table.{EXTENSIONS[fmt]}" for fmt in formats}
    texts = {fmt: render(table, fmt) for fmt in paths}  # all rendered before anything is written
    for fmt, path in paths.items():
        atomic_write_text(path, texts[fmt])
    return list(paths.values())


# --- building -----------------------------------------------------------------------------


def _combos(
    study: Study, trials: list[Row], keys: Sequence[str]
) -> list[tuple[str, dict[str, Any]]]:
    """(label, {key: value}) for every combination of the axes' values, in study order."""
    values = []
    for key in keys:
        if key in study.grid:
            values.append(study.grid[key])
        else:  # a search axis: the values the trials took
            seen = {value_text(v): v for v in column(trials, key)}
            values.append(sorted(seen.values()))
    combos = [dict(zip(keys, combo, strict=True)) for combo in itertools.product(*values)]
    # No row axes: one row, named after the study.
    return [
        (", ".join(study.value_label(k, v) for k, v in combo.items()) or study.name, combo)
        for combo in combos
    ]


def _aggregate(selected: Any, score: str, num_samples: Any = None) -> Cell:
    values = list(per_seed(selected, score).values())
    if not values:
        return Cell(mean=None, std=None, n=0)
    interval = t_interval(values)
    if interval.half_width is not None:
        if score_registry.get(score).proportion and is_finite(num_samples):
            bounded = proportion_interval(values, int(num_samples))
            return Cell(
                interval.mean, interval.std, interval.n, None, "bounded95",
                low=bounded.low, high=bounded.high,
            )  # fmt: skip
        return Cell(interval.mean, interval.std, interval.n, interval.half_width, "t95")
    se_column = f"bootstrap.{score}.se"
    se = mean(selected, se_column)
    if se is None:
        return Cell(interval.mean, None, 1)
    if score_registry.get(score).proportion and is_finite(num_samples):
        # The bootstrap interval on the logit scale, never narrower than the binomial noise:
        # 0.000 ± 0.000 when no sample counted is not what one seed can show.
        bounded = proportion_interval(values, int(num_samples), sampling_se=se)
        return Cell(
            interval.mean, None, 1, None, "bootstrap95", se, low=bounded.low, high=bounded.high
        )
    return Cell(interval.mean, None, 1, BOOTSTRAP_Z * se, "bootstrap95", se)


def _replace(cell: Cell, **changes: Any) -> Cell:
    return Cell(**{**cell.__dict__, **changes})


def _mark_best(
    cells: dict[tuple[int, int, str], Cell], n_rows: int, n_groups: int, scores: Sequence[str]
) -> dict[tuple[int, int, str], Cell]:
    """Bold the best mean of each column (at displayed precision, so ties are all bold)."""
    marked = dict(cells)
    for g, name in itertools.product(range(n_groups), scores):
        score = score_registry.get(name)
        direction = score.direction
        shown = {
            r: round(cells[r, g, name].mean * score.scale, score.decimals)
            for r in range(n_rows)
            if cells[r, g, name].mean is not None
        }
        if direction is None or len(shown) < 2:
            continue
        best = (min if direction == "minimize" else max)(shown.values())
        for r, value in shown.items():
            if value == best:
                marked[r, g, name] = _replace(cells[r, g, name], best=True)
    return marked


def _significance(
    cells: dict[tuple[int, int, str], Cell],
    samples: dict[tuple[int, int, str], dict[int, float]],
    rows: list[tuple[str, dict[str, Any]]],
    groups: list[tuple[str, dict[str, Any]]],
    scores: Sequence[str],
    baseline: dict[str, Any],
    findings: Findings | None,
) -> tuple[dict[tuple[int, int, str], Cell], int]:
    """Each cell against its baseline cell: the paired estimate on every score; the marker and
    Holm-adjusted p only on the declared family (bench.findings: the declared contrasts on
    the primary score, decided together), never on an exploratory comparison.

    Returns the cells (baseline flags, comparisons, markers) and the size of the family.
    """
    if not baseline:
        return cells, 0
    where = {
        cell_key({**row, **group}): (r, g)
        for (r, (_, row)), (g, (_, group)) in itertools.product(enumerate(rows), enumerate(groups))
    }
    decided = {
        (cell_key(f.cell), cell_key(f.baseline)): f
        for f in (findings.primary if findings is not None else ())
    }
    marked = dict(cells)
    for (r, (_, row)), (g, (_, group)) in itertools.product(enumerate(rows), enumerate(groups)):
        values = {**row, **group}
        if all(value_text(values[k]) == value_text(v) for k, v in baseline.items()):
            for score in scores:
                marked[r, g, score] = _replace(marked[r, g, score], baseline=True)
            continue
        base_values = {**values, **baseline}
        b = where.get(cell_key(base_values))
        if b is None:
            continue
        finding = decided.get((cell_key(values), cell_key(base_values)))
        for score in scores:
            comparison = compare(samples[r, g, score], samples[(*b, score)])
            if comparison is None:
                continue
            changes: dict[str, Any] = {"comparison": comparison}
            if finding is not None and score == finding.score and finding.p_holm is not None:
                changes["p_holm"] = finding.p_holm
                changes["marker"] = {"better": BETTER, "worse": WORSE}.get(finding.decision, "")
            marked[r, g, score] = _replace(marked[r, g, score], **changes)
    tested = any(f.estimate is not None for f in findings.primary) if findings else False
    return marked, len(findings.primary) if tested else 0


def _reference(
    reference: dict[str, float] | None, scores: Sequence[str]
) -> dict[str, float] | None:
    if not reference:
        return None
    shown = {m: float(reference[m]) for m in scores if is_finite(reference.get(m))}
    return shown or None


def _axis_title(key: str) -> str:
    """ "architecture.name" -> "Architecture", "metric.name" -> "Metric loss" (never to be read
    as a score, beside score columns), "metric.weight" -> "Weight"."""
    parent, _, leaf = key.rpartition(".")
    word = parent.rpartition(".")[2] if leaf == "name" and parent else leaf
    return "Metric loss" if word == "metric" else word.replace("_", " ").capitalize()


def _value_labels(
    study: Study, axis: str, combos: list[tuple[str, dict[str, Any]]]
) -> dict[str, str]:
    """Value text -> the label in an axis column: the study's [labels] entry, else the value."""
    labels = {}
    for _, values in combos:
        if axis in values:
            text = value_text(values[axis])
            labels[text] = study.labels.get(axis, {}).get(text, text)
    return labels


def _meta(results: "Records | Results", study: Study) -> dict[str, Any]:
    """Dataset, evaluator, samples, sampler, steps: as run (the runner's meta) or configured."""
    config = study.config(study.cells()[0])
    return {
        "dataset": config.data.dataset,
        "resolution": config.data.resolution,
        "evaluator": config.eval.evaluator
        + (" (random weights)" if config.eval.random_weights else ""),
        "num_samples": config.sample.num_samples,
        "sampler": config.sample.sampler,
        "steps": config.sample.steps,
        "sampler_caption": config.sample.component.describe(config.sample.options),
        "random_weights": config.eval.random_weights,
        "reference_split": config.eval.reference_split,
        **{k: v for k, v in (results.meta or {}).items() if v is not None},
    }


def _flags(
    study: Study,
    meta: dict[str, Any],
    rows: list[tuple[str, dict[str, Any]]],
    groups: list[tuple[str, dict[str, Any]]],
) -> dict[tuple[int, int], dict[str, Any]]:
    """Per cell: its components' caveats (e.g. a random LPIPS trunk) and whether the evaluator
    had random weights (CSV columns)."""
    flags = {}
    for (r, (_, row)), (g, (_, group)) in itertools.product(enumerate(rows), enumerate(groups)):
        params = {**row, **group}
        try:
            config = study.config({**study.cells()[0], **params})
            caveats = config.caveats()
            weights = bool(config.eval.random_weights or meta.get("random_weights"))
        except Exception:  # a search value outside the file's axes: fall back on the meta
            caveats = stored_caveats(meta)
            weights = bool(meta.get("random_weights"))
        flags[r, g] = {"caveats": " ".join(caveats), "random_weights": weights}
    return flags


def _metric_notes(study: Study) -> list[str]:
    """How the study's metric losses see its images, where they resize them (once each)."""
    notes = []
    for params in study.cells():
        config = study.config(params)
        side = config.data.resolution
        notes.append(config.metric.component.caption_note(config.metric.options, side, side))
    return [note for note in dict.fromkeys(notes) if note]


def _caption(
    results: "Records | Results",
    study: Study,
    done: int,
    meta: dict[str, Any],
    cells: dict[tuple[int, int, str], Cell],
    tests: int,
    baseline: dict[str, Any],
) -> str:
    """Setup, what ± means, bold, markers, protocols, smoke-test labels, progress."""
    options = f", {meta['sampler_caption']}" if meta.get("sampler_caption") else ""
    seeds = len(study.grid.get("seed", [None]))
    parts = [
        f"{meta['dataset']} {meta['resolution']}×{meta['resolution']}, "
        f"{meta['evaluator']} evaluator, {int(meta['num_samples']):,} samples per model, "
        f"{meta['sampler'].upper()} sampler with {meta['steps']} steps{options}."
    ]
    kinds = {cell.uncertainty for cell in cells.values()}
    level = f"{CONFIDENCE:.0%}"
    if "t95" in kinds:
        parts.append(
            f"Mean ± half-width of the {level} confidence interval over {seeds} seeds "
            "(Student t); (n=k): a cell with k seeds."
        )
    elif seeds > 1:
        parts.append(f"Mean over up to {seeds} seeds.")
    if any(cell.low is not None for cell in cells.values()):
        parts.append(
            f"Precision and recall, fractions of the {int(meta['num_samples']):,} samples: "
            f"their {level} interval (asymmetric) is built on the logit scale and never "
            "narrower than their binomial sampling noise, so it stays inside [0, 1]."
        )
    if "bootstrap95" in kinds:
        resamples = mean(results.rows, "bootstrap.resamples")
        count = (
            f"{int(resamples)} resamples, so the ± is itself uncertain by about "
            f"±{se_uncertainty(int(resamples)):.0%}"
            if resamples
            else "resamples"
        )
        lead = "Single-seed cells" if seeds > 1 else "One seed per cell;"
        parts.append(
            f"{lead} ± is 1.96 bootstrap standard errors over the generated samples ({count}): "
            "the sampling uncertainty of the score, not the variation between training runs."
        )
        sources = variance_sources(study, results.rows, study.table.scores)
        if sources:
            ratios = ", ".join(
                f"{score_registry.get(k).display} {b / w:.1f}x" for k, (b, w) in sources.items()
            )
            parts.append(
                "In this study's multi-seed cells the SD between seeds was, as a multiple of "
                f"the bootstrap SE (medians): {ratios}."
            )
    elif seeds == 1:
        parts.append("One seed per cell, no uncertainty shown.")
    parts.append("Bold: the best value of each score column.")
    if baseline:
        named = ", ".join(
            f"{_axis_title(k)} = {study.labels.get(k, {}).get(value_text(v), value_text(v))}"
            for k, v in baseline.items()
        )
        if tests and study.questions is not None:
            primary = score_registry.get(study.questions.score).display
            parts.append(
                f"{BETTER}/{WORSE}: {primary} better/worse than the baseline ({named}), decided "
                f"over the study's {tests} declared contrasts on {primary} as one family "
                f"(paired t-tests by seed, Holm-corrected, family-wise α = "
                f"{study.questions.alpha:g}; findings.md lists every one); no marker: undecided "
                "or not tested. Other columns are exploratory estimates, never marked."
            )
        else:
            parts.append(
                f"Baseline: {named}; no test is possible with fewer than 2 seeds per cell."
            )
    held_out = "test" if meta.get("reference_split", "train") == "train" else "train"
    parts.append(
        f"{REFERENCE_LABEL}: the {held_out} split, scored against the "
        f"{meta.get('reference_split', 'train')}-split reference like the samples."
    )
    shown_scores = {score for _, _, score in cells}
    by_label: dict[str, list[str]] = {}
    for key, label in (meta.get("protocols") or {}).items():
        if key in shown_scores:
            by_label.setdefault(str(label), []).append(score_registry.display_name(key))
    if by_label:
        shown = "; ".join(f"{', '.join(names)}: {label}" for label, names in by_label.items())
        parts.append(f"Protocols: {shown}.")
    notes = _metric_notes(study)
    if notes:
        parts.append(f"Metric losses: {'; '.join(notes)}.")
    parts.extend(stored_caveats(meta))
    if done < results.total:
        failed = results.states.get("FAIL", 0) if results.states else 0
        note = f"; {failed} failed" if failed else ""
        parts.append(f"Partial: {done} of {results.total} cells done{note}.")
    return " ".join(parts)
