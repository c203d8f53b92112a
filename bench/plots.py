"""A study's figures: sweeps, grouped bars, training curves, samples, quality vs cost.

Every number comes from the study's table (bench.tables.build_table: means over seeds, their 95%
intervals, the baseline tests with Holm's correction), so a figure and the table never disagree;
the training curves come from the MLflow runs and the samples from each trial's samples.npz.
Figures are matplotlib `Figure` objects (no pyplot, no global state), sized for a two-column
paper: one column (COLUMN_IN) or the full text width (TEXT_IN), with fonts legible at that size.
Each architecture keeps one colour across every figure (Okabe-Ito, colour-blind safe).
"""

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.evaluation import scores as score_registry
from bench.study import Study, value_text
from bench.tables import Cell, Table
from casdm.components import registry

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from bench.findings import Findings
    from bench.results import Results

COLUMN_IN = 3.3  # one column of a two-column paper, inches
TEXT_IN = 6.9  # both columns
FORMATS = ("pdf", "png", "svg")
PNG_DPI = 300
# Okabe & Ito (2008), "Color Universal Design": distinguishable under every common colour-vision
# deficiency. Black is left out: it is the colour of single-series figures.
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442")
SINGLE = "#000000"
LINESTYLES = ("-", "--", ":", "-.")
MARKERS = ("o", "s", "^", "D", "v", "P")
SERIES_AXIS = "architecture.name"  # one colour per value of this axis
TRAIN_PREFIX = "train/"
NOT_LOSS_TERMS = ("lr", "images_per_s", "grad_norm")  # training records that are not loss terms
SAMPLE_PANEL_IMAGES = 16  # images per cell in the samples figure (4 x 4)
STYLE = {
    "font.size": 8,
    "axes.titlesize": 8,
    "axes.labelsize": 8,
    "xtick.labelsize": 7,
    "ytick.labelsize": 7,
    "legend.fontsize": 7,
    "legend.frameon": False,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "lines.linewidth": 1.2,
    "lines.markersize": 4,
    "pdf.fonttype": 42,  # TrueType in PDFs: editable text, accepted by every publisher
    "svg.fonttype": "none",
}


@dataclass(frozen=True)
class Point:
    """One cell of the table (its axes but the seed): scores over seeds and mean costs."""

    params: dict[str, Any]  # axis -> raw value, every table axis
    scores: dict[str, Cell]  # score -> the table's Cell
    costs: dict[str, float | None]
    seeds: dict[str, dict[int, float]] = field(default_factory=dict)  # score -> seed -> value


def points(table: Table) -> list[Point]:
    """Every filled cell of `table` as a Point, rows then column groups."""
    out = []
    for r, (_, row) in enumerate(table.rows):
        for g, (_, group) in enumerate(table.groups):
            scores = {m: table.cells[r, g, m] for m in table.scores}
            if any(cell.n for cell in scores.values()):
                seeds = {m: table.seed_values.get((r, g, m), {}) for m in table.scores}
                costs = table.costs.get((r, g), {})
                out.append(Point({**row, **group}, scores, costs, seeds))
    return out


def colours(study: Study) -> dict[str, str]:
    """Value text of the series axis -> colour, the same for an architecture in every study."""

    known = registry("architecture").names()
    extra = [value_text(v) for v in study.values(SERIES_AXIS) if value_text(v) not in known]
    return {name: PALETTE[i % len(PALETTE)] for i, name in enumerate(known + extra)}


def is_numeric_axis(study: Study, key: str) -> bool:
    """A grid axis of numbers (not booleans) with at least two values: drawn as an x axis."""
    values = study.grid.get(key, [])
    return len(values) >= 2 and all(
        isinstance(v, int | float) and not isinstance(v, bool) for v in values
    )


def score_label(name: str, table: Table) -> str:
    """ "FID ↓", scaled as in the table ("KID ×10³ ↓")."""
    score = score_registry.get(name)
    hint = {"minimize": " ↓", "maximize": " ↑"}.get(score.direction or "", "")
    return f"{score.header()}{hint}"


def _series_style(study: Study, params: Mapping[str, Any]) -> dict[str, Any]:
    if SERIES_AXIS in params and len(study.values(SERIES_AXIS)) > 1:
        return {"color": colours(study).get(value_text(params[SERIES_AXIS]), SINGLE)}
    return {"color": SINGLE}


def _label(study: Study, params: Mapping[str, Any], keys: Sequence[str]) -> str:
    return ", ".join(study.value_label(k, params[k]) for k in keys if k in params) or study.name


def _varying(table: Table, study: Study) -> list[str]:
    """The table's axes that take more than one value among its filled cells."""
    axes = [*table.row_axes, *table.column_axes]
    filled = points(table)
    return [a for a in axes if len({value_text(p.params[a]) for p in filled}) > 1]


def _scaled(cell: Cell, score: str) -> tuple[float, tuple[float, float]]:
    """(mean, (below, above)): the displayed value and its interval's distances from it (a
    proportion's interval is asymmetric, bench.intervals), in display units."""
    scale = score_registry.get(score).scale
    ends = cell.interval()
    if ends is None:
        return cell.mean * scale, (0.0, 0.0)
    return cell.mean * scale, ((cell.mean - ends[0]) * scale, (ends[1] - cell.mean) * scale)


def _new_figure(width: float, height: float) -> "Figure":
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def _interval_note(table: Table) -> str:
    return "mean ± 95% CI over seeds" if table.seeds > 1 else "± 1.96 bootstrap s.e."


# --- the figures ----------------------------------------------------------------------------


def sweep_figure(table: Table, study: Study, axis: str, score: str) -> "Figure":
    """`score` against the numeric `axis`: a line per other-axes combination, CI band."""
    figure = _new_figure(COLUMN_IN, 2.4)
    ax = figure.add_subplot()
    others = [a for a in _varying(table, study) if a != axis]
    lines: dict[tuple[str, ...], list[Point]] = {}
    for point in points(table):
        if point.scores[score].mean is not None:
            key = tuple(value_text(point.params[a]) for a in others)
            lines.setdefault(key, []).append(point)
    styles = _other_styles(study, others, [pts[0].params for pts in lines.values()])
    for key, pts in lines.items():
        pts.sort(key=lambda p: float(p.params[axis]))
        x = [float(p.params[axis]) for p in pts]
        y, errors = zip(*(_scaled(p.scores[score], score) for p in pts), strict=True)
        style = {**_series_style(study, pts[0].params), **styles[key]}
        ax.plot(x, y, label=_label(study, pts[0].params, others), **style)
        low = [m - e[0] for m, e in zip(y, errors, strict=True)]
        high = [m + e[1] for m, e in zip(y, errors, strict=True)]
        ax.fill_between(x, low, high, color=style["color"], alpha=0.18, linewidth=0)
    ax.set_xlabel(_axis_name(table, axis))
    ax.set_ylabel(score_label(score, table))
    ax.set_xticks(sorted({float(v) for v in study.grid[axis]}))
    ax.set_title(f"{_interval_note(table)}", loc="left", fontsize=7)
    if len(lines) > 1:
        ax.legend()
    return figure


def bars_figure(table: Table, study: Study, score: str) -> "Figure":
    """Grouped bars: a group per combination of the other axes, a bar per series value.

    Error bars are the table's intervals; a bar the findings decide better (worse) than its
    baseline carries the table's marker, the baseline is hatched.
    """
    varying = _varying(table, study)
    series = SERIES_AXIS if SERIES_AXIS in varying else None
    group_axes = [a for a in varying if a != series]
    pts = [p for p in points(table) if p.scores[score].mean is not None]
    groups = list(dict.fromkeys(tuple(value_text(p.params[a]) for a in group_axes) for p in pts))
    members = list(dict.fromkeys(value_text(p.params[series]) if series else "" for p in pts))
    width_in = COLUMN_IN if len(groups) * len(members) <= 12 else TEXT_IN
    figure = _new_figure(width_in, 2.4)
    ax = figure.add_subplot()
    from matplotlib.patches import Patch

    bar = 0.8 / max(len(members), 1)
    legend = []
    for m, member in enumerate(members):
        xs, ys, errs, cells, shown = [], [], [], [], []
        for p in pts:
            if series and value_text(p.params[series]) != member:
                continue
            g = groups.index(tuple(value_text(p.params[a]) for a in group_axes))
            mean, error = _scaled(p.scores[score], score)
            xs.append(g - 0.4 + bar * (m + 0.5))
            ys.append(mean)
            errs.append(error)
            cells.append(p.scores[score])
            shown.append(p)
        example = next(p for p in pts if not series or value_text(p.params[series]) == member)
        label = study.value_label(series, example.params[series]) if series else study.name
        style = _series_style(study, example.params)
        legend.append((style["color"], label))
        error = {"linewidth": 0.8}
        yerr = [[e[0] for e in errs], [e[1] for e in errs]]  # below, above
        drawn = ax.bar(
            xs, ys, bar * 0.9, yerr=yerr, label=label, capsize=2, error_kw=error, **style
        )
        # Every seed's value, the points the interval and the paired tests were made from.
        scale = score_registry.get(score).scale
        for x, p in zip(xs, shown, strict=True):
            if len(p.seeds[score]) > 1:
                values = [v * scale for v in p.seeds[score].values()]
                ax.scatter(
                    [x] * len(values), values, s=3, color="black", alpha=0.6, zorder=3,
                    linewidths=0,
                )  # fmt: skip
        for patch, cell, x, y, (_, e) in zip(drawn.patches, cells, xs, ys, errs, strict=True):
            if cell.baseline:
                patch.set_hatch("///")
                patch.set_edgecolor("white")
            if cell.marker:
                ax.annotate(
                    cell.marker,  # the table's ⁺/⁻: the findings' decision
                    (x, y + e),
                    xytext=(0, 1),
                    textcoords="offset points",
                    ha="center",
                    va="bottom",
                    fontsize=8,
                )
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels(
        [_label(study, dict(zip(group_axes, g, strict=True)), group_axes) for g in groups]
    )
    for text in ax.get_xticklabels():
        text.set_fontsize(7)
    ax.set_ylabel(score_label(score, table))
    ax.margins(y=0.08)  # room above the tallest bar for its marker
    note = _interval_note(table) + ("; dots: seeds" if table.seeds > 1 else "")
    if any(c.baseline for p in pts for c in p.scores.values()):
        if score == table.primary:
            note += (
                "\nvs the hatched baseline: ⁺ better, ⁻ worse, as decided over the declared "
                "contrasts (findings.md)"
            )
        else:
            note += "\nvs the hatched baseline: exploratory, not tested (no markers)"
    ax.set_title(note, loc="left", fontsize=6)
    if len(members) > 1:
        # Plain swatches: the first bar of a series may be a hatched baseline.
        handles = [Patch(color=c, label=t) for c, t in legend]
        # Below the axes: inside, it would cover bars of some group.
        figure.legend(handles=handles, loc="outside lower center", ncols=min(len(members), 3))
    return figure


def curves_figure(
    study: Study,
    frame: Any,
    histories: Mapping[int, Mapping[str, Sequence[tuple[int, float]]]],
) -> "Figure":
    """Training loss terms vs step: a line per cell (mean over its seeds), a 95% band.

    `histories`: trial number -> MLflow key ("train/loss") -> [(step, value)].
    """
    from bench.analysis import t_interval

    terms = sorted(
        {k.removeprefix(TRAIN_PREFIX) for h in histories.values() for k in h} - set(NOT_LOSS_TERMS),
        key=lambda t: (t != "loss", t),
    )
    axes_keys = [a for a in _study_axes(study) if a != "seed"]
    cells: dict[tuple[str, ...], list[int]] = {}
    params: dict[tuple[str, ...], dict[str, Any]] = {}
    for _, row in frame.iterrows():
        if int(row["trial"]) in histories:
            key = tuple(value_text(row[a]) for a in axes_keys)
            cells.setdefault(key, []).append(int(row["trial"]))
            params[key] = {a: row[a] for a in axes_keys}
    varying = [a for i, a in enumerate(axes_keys) if len({k[i] for k in cells}) > 1]
    others = [a for a in varying if a != SERIES_AXIS]
    n = max(len(terms), 1)
    ncols = min(n, 3)
    nrows = math.ceil(n / ncols)
    figure = _new_figure(TEXT_IN, 1.9 * nrows + 0.4)
    grid = figure.subplots(nrows, ncols, squeeze=False)
    styles = _other_styles(
        study,
        others,
        [params[k] for k in cells],
        key=lambda p: tuple(value_text(p[a]) for a in others),
    )
    for i, term in enumerate(terms):
        ax: Axes = grid[i // ncols][i % ncols]
        for key, trials in cells.items():
            per_step: dict[int, list[float]] = {}
            for trial in trials:
                for step, value in histories[trial].get(TRAIN_PREFIX + term, ()):
                    if math.isfinite(value):
                        per_step.setdefault(int(step), []).append(float(value))
            if not per_step:
                continue
            steps = sorted(per_step)
            intervals = [t_interval(per_step[s]) for s in steps]
            mean = [iv.mean for iv in intervals]
            style = {
                **_series_style(study, params[key]),
                **styles[tuple(value_text(params[key][a]) for a in others)],
            }
            ax.plot(steps, mean, label=_label(study, params[key], varying), **style)
            if any(iv.half_width for iv in intervals):
                half = [iv.half_width or 0.0 for iv in intervals]
                ax.fill_between(
                    steps,
                    [m - h for m, h in zip(mean, half, strict=True)],
                    [m + h for m, h in zip(mean, half, strict=True)],
                    color=style["color"],
                    alpha=0.18,
                    linewidth=0,
                )
        ax.set_title(term)
        ax.set_xlabel("step")
        if term != "r" and all(v > 0 for line in ax.get_lines() for v in line.get_ydata()):
            ax.set_yscale("log")
    for j in range(len(terms), nrows * ncols):
        grid[j // ncols][j % ncols].set_visible(False)
    handles, labels = grid[0][0].get_legend_handles_labels()
    if len(labels) > 1:
        figure.legend(handles, labels, loc="outside lower center", ncols=min(len(labels), 4))
    return figure


def samples_figure(study: Study, frame: Any) -> "Figure":
    """A panel of SAMPLE_PANEL_IMAGES samples per cell, from the cell's lowest seed.

    Every trial samples from the same noise (the seed), so panels differ by the cell only;
    pixels are drawn as blocks (nearest neighbour), never smoothed.
    """
    import numpy as np

    axes_keys = [a for a in _study_axes(study) if a != "seed"]
    chosen = sample_trials(study, frame)
    varying = [a for i, a in enumerate(axes_keys) if len({k[i] for k in chosen}) > 1]
    row_axis = SERIES_AXIS if SERIES_AXIS in varying else None
    col_axes = [a for a in varying if a != row_axis]
    row_keys = list(
        dict.fromkeys(value_text(r[row_axis]) if row_axis else "" for r in chosen.values())
    )
    col_keys = list(
        dict.fromkeys(tuple(value_text(r[a]) for a in col_axes) for r in chosen.values())
    )
    if len(row_keys) == 1 and len(col_keys) > 4:  # one long row: wrap it
        ncols = 4
        slots = {k: divmod(i, ncols) for i, k in enumerate(chosen)}
        nrows = math.ceil(len(chosen) / ncols)
    else:
        ncols, nrows = len(col_keys), len(row_keys)
        slots = {
            k: (
                row_keys.index(value_text(r[row_axis]) if row_axis else ""),
                col_keys.index(tuple(value_text(r[a]) for a in col_axes)),
            )
            for k, r in chosen.items()
        }
    width = TEXT_IN if ncols > 2 else COLUMN_IN
    panel = width / max(ncols, 1)
    figure = _new_figure(width, panel * nrows + 0.25 * nrows)
    grid = figure.subplots(max(nrows, 1), max(ncols, 1), squeeze=False)
    for ax in grid.flat:
        ax.set_axis_off()
    for key, row in chosen.items():
        with np.load(Path(row["workdir"]) / "samples.npz", allow_pickle=False) as npz:
            images = npz["arr_0"][:SAMPLE_PANEL_IMAGES]
        r, c = slots[key]
        ax = grid[r][c]
        ax.imshow(
            _mosaic(images), interpolation="nearest", cmap="gray" if images.shape[-1] == 1 else None
        )
        ax.set_title(_label(study, {a: row[a] for a in axes_keys}, varying), fontsize=7)
    return figure


def sample_trials(study: Study, frame: Any) -> dict[tuple[str, ...], Any]:
    """Cell (its axes but the seed) -> the row of its lowest-seed trial with a samples.npz."""
    axes_keys = [a for a in _study_axes(study) if a != "seed"]
    chosen: dict[tuple[str, ...], Any] = {}
    order = frame.sort_values("seed") if "seed" in frame else frame
    for _, row in order.iterrows():
        key = tuple(value_text(row[a]) for a in axes_keys)
        workdir = row.get("workdir")
        if key in chosen or not isinstance(workdir, str):
            continue
        if (Path(workdir) / "samples.npz").is_file():
            chosen[key] = row
    return chosen


def _mosaic(images: Any) -> Any:
    """[N, H, W, C] uint8 -> one [rows*H, cols*W(, C)] image with 1-pixel white gutters."""
    import numpy as np

    n, h, w, c = images.shape
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    out = np.full((rows * (h + 1) - 1, cols * (w + 1) - 1, c), 255, dtype=np.uint8)
    for i, image in enumerate(images):
        y, x = divmod(i, cols)
        out[y * (h + 1) : y * (h + 1) + h, x * (w + 1) : x * (w + 1) + w] = image
    return out[..., 0] if c == 1 else out


def cost_figure(table: Table, study: Study, score: str, cost: str) -> "Figure":
    """`score` against a cost per cell, the Pareto front (nothing both cheaper and better)."""
    from bench.costs import COSTS

    figure = _new_figure(COLUMN_IN, 2.4)
    ax = figure.add_subplot()
    varying = _varying(table, study)
    others = [a for a in varying if a != SERIES_AXIS]
    pts = [p for p in points(table) if p.scores[score].mean is not None and p.costs.get(cost)]
    markers = _other_styles(study, others, [p.params for p in pts], marker=True)
    xy = []
    for p in pts:
        mean, (below, above) = _scaled(p.scores[score], score)
        x = float(p.costs[cost])
        style = {
            **_series_style(study, p.params),
            **markers[tuple(value_text(p.params[a]) for a in others)],
        }
        label = _label(study, p.params, varying)
        ax.errorbar(
            [x], [mean], yerr=[[below], [above]], linestyle="none", capsize=2, label=label, **style
        )
        xy.append((x, mean))
    front = pareto_front(
        xy, cheaper=cost != "train_images_per_s", better=score_registry.direction(score)
    )
    if len(front) > 1:
        fx, fy = zip(*front, strict=True)
        ax.plot(fx, fy, color="0.5", linestyle="--", linewidth=0.8, zorder=0, label="Pareto front")
    ax.set_xlabel(COSTS[cost].name)
    ax.set_ylabel(score_label(score, table))
    if len(pts) > 1:
        ax.legend(fontsize=6, ncols=2 if len(pts) > 6 else 1)
    return figure


def pareto_front(
    points_xy: Sequence[tuple[float, float]], *, cheaper: bool, better: str | None
) -> list[tuple[float, float]]:
    """The points no other point beats on both cost and score, sorted by cost.

    cheaper: lower x is better (hours) or not (images/s); better: "minimize" or "maximize" y.
    """
    sign_x = 1 if cheaper else -1
    sign_y = -1 if better == "maximize" else 1
    keyed = sorted(points_xy, key=lambda p: (sign_x * p[0], sign_y * p[1]))
    front: list[tuple[float, float]] = []
    for x, y in keyed:
        if not front or sign_y * y < sign_y * front[-1][1]:
            front.append((x, y))
    return front


# --- writing --------------------------------------------------------------------------------


def _study_axes(study: Study) -> list[str]:
    return list(study.grid) if study.is_grid else list(study.search)


def _axis_name(table: Table, axis: str) -> str:
    return table.axis_titles.get(axis, axis)


def _other_styles(
    study: Study,
    others: Sequence[str],
    params: Sequence[Mapping[str, Any]],
    *,
    marker: bool = False,
    key: Callable[[Mapping[str, Any]], tuple[str, ...]] | None = None,
) -> dict[tuple[str, ...], dict[str, Any]]:
    """A line style (or marker) per combination of the non-series axes, in order of appearance."""
    key = key or (lambda p: tuple(value_text(p[a]) for a in others))
    combos = list(dict.fromkeys(key(p) for p in params))
    if marker:
        return {c: {"marker": MARKERS[i % len(MARKERS)]} for i, c in enumerate(combos)}
    return {
        c: {"linestyle": LINESTYLES[i % len(LINESTYLES)], "marker": MARKERS[i % len(MARKERS)]}
        for i, c in enumerate(combos)
    }


DECISION_COLOURS = {  # Okabe-Ito: better blue-green, worse vermillion, the rest grey
    "better": "#009E73",
    "worse": "#D55E00",
    "no meaningful difference": "#0072B2",
}


def contrasts_figure(findings: "Findings") -> "Figure":
    """The estimation figure of the declared family: each contrast's paired difference (cell
    minus baseline, in the primary score's unit) with its 95% CI and every seed's difference,
    against zero and the band of +-min_effect; coloured by the findings' decision."""
    info = score_registry.get(findings.score)
    shown = [f for f in findings.primary if f.estimate is not None]
    figure = _new_figure(TEXT_IN, 0.6 + 0.22 * len(shown))
    ax = figure.add_subplot()
    if findings.min_effect:
        band = findings.min_effect * info.scale
        ax.axvspan(-band, band, color="0.9", zorder=0)
    ax.axvline(0, color="0.4", linewidth=0.8, zorder=1)
    for y, finding in enumerate(reversed(shown)):
        e = finding.estimate
        colour = DECISION_COLOURS.get(finding.decision, "0.45")
        diff = e.difference * info.scale
        ax.errorbar(
            [diff], [y],
            xerr=[[diff - e.ci_low * info.scale], [e.ci_high * info.scale - diff]],
            fmt="o", color=colour, markersize=3, capsize=2, linewidth=1, zorder=3,
        )  # fmt: skip
        ax.scatter(
            [d * info.scale for d in e.differences], [y] * e.n, s=4, color="black", alpha=0.5,
            linewidths=0, zorder=2,
        )  # fmt: skip
        ax.annotate(
            finding.decision, (1.01, y), xycoords=("axes fraction", "data"), fontsize=6,
            color=colour, va="center",
        )  # fmt: skip
    ax.set_yticks(range(len(shown)))
    ax.set_yticklabels([f.label for f in reversed(shown)], fontsize=6)
    better = "lower" if info.direction == "minimize" else "higher"
    shaded = f"; shaded: |Δ| < {findings.min_effect * info.scale:g}" if findings.min_effect else ""
    ax.set_xlabel(
        f"Δ {info.display} (cell − baseline; {better} is better), 95% CI; dots: seeds{shaded}"
    )
    ax.set_title(
        f"{len(findings.primary)} declared contrasts, one family: paired t, Holm, "
        f"α = {findings.alpha:g}",
        loc="left", fontsize=6,
    )  # fmt: skip
    # Symmetric-log x: large harms and small gains in one panel, linear within +-min_effect.
    ax.set_xscale("symlog", linthresh=max(abs(findings.min_effect or 1.0) * info.scale, 1e-9))
    from matplotlib.ticker import FuncFormatter

    ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    return figure


def build_figures(
    results: "Results",
    study: Study,
    histories: Mapping[int, Mapping[str, Sequence[tuple[int, float]]]] | None = None,
) -> dict[str, "Figure"]:
    """Every figure the study's results allow, by file stem (e.g. "sweep-metric.weight-fid")."""
    import matplotlib

    from bench.costs import COSTS
    from bench.tables import build_table

    figures: dict[str, Figure] = {}
    with matplotlib.rc_context(STYLE):
        table = build_table(results, study)
        numeric = [a for a in _varying(table, study) if is_numeric_axis(study, a)]
        for score in table.scores:
            for axis in numeric:
                figures[f"sweep-{axis}-{score}"] = sweep_figure(table, study, axis, score)
            figures[f"bars-{score}"] = bars_figure(table, study, score)
        if histories:
            figures["curves"] = curves_figure(study, results.frame, histories)
        if "workdir" in results.frame and sample_trials(study, results.frame):
            figures["samples"] = samples_figure(study, results.frame)
        findings = table.findings
        if findings is not None and any(f.estimate for f in findings.primary):
            figures[f"contrasts-{findings.score}"] = contrasts_figure(findings)
        objective = study.objective_score if study.objective_score in table.scores else None
        for cost in ("device_hours", "train_images_per_s"):
            has_cost = any(p.costs.get(cost) for p in points(table))
            if objective and cost in COSTS and has_cost:
                figures[f"cost-{cost}-{objective}"] = cost_figure(table, study, objective, cost)
    return figures


def write_figures(
    figures: Mapping[str, "Figure"], out: Path, formats: Sequence[str] = ("pdf", "png")
) -> list[Path]:
    """Each figure as out/STEM.FORMAT (PNG at PNG_DPI); returns the paths written."""
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for stem, figure in figures.items():
        for fmt in formats:
            path = out / f"{stem}.{fmt}"
            figure.savefig(path, format=fmt, dpi=PNG_DPI if fmt == "png" else None)
            paths.append(path)
    return paths
