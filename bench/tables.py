"""A study's results as a paper table: LaTeX (booktabs), Markdown (GitHub) and CSV.

Rows and column groups come from the study's [table] layout; every cell is the mean ± sample
standard deviation (ddof = 1) over the seeds that completed, with n shown where it falls short
of the study's seed count. The best value of each column (each metric within each column group)
is bold, judged at the displayed precision so that visible ties are all bold. A "Real data
(held-out)" row scores the dataset's other split against the same reference statistics: the
floor a perfect model would reach.

The CSV is tidy (one line per row x column group x metric, the layout pandas' `pivot_table`
takes) with unscaled, unrounded values: columns `row`, `column` (display labels), one column
per row/column axis holding the raw axis value, then `metric` (a score key), `mean`, `std`,
`n`, `best` and `reference` (true on the real-data lines, whose `std` and axis columns are empty).
"""

import csv
import io
import itertools
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from bench.study import Study, natural_direction, value_text

if TYPE_CHECKING:
    from bench.results import Results

Format = Literal["latex", "markdown", "csv"]
FORMATS: tuple[Format, ...] = ("latex", "markdown", "csv")
EXTENSIONS: dict[Format, str] = {"latex": "tex", "markdown": "md", "csv": "csv"}
REFERENCE_LABEL = "Real data (held-out)"


@dataclass(frozen=True)
class MetricFormat:
    """How one score key is shown: display name, scale (KID x 10^3) and decimals."""

    name: str
    decimals: int
    scale: int = 1


def metric_formats() -> dict[str, MetricFormat]:
    """Display rules of every score key, in one place (names from bench.evaluation)."""
    from bench.evaluation import METRIC_NAMES

    decimals = {
        "fid": 2,
        "sfid": 2,
        "is_mean": 2,
        "is_std": 2,
        "kid": 2,
        "precision": 3,
        "recall": 3,
    }
    scales = {"kid": 1000}  # KID is ~1e-3: shown x 10^3 with 2 decimals, the header says so
    return {
        key: MetricFormat(name, decimals[key], scales.get(key, 1))
        for key, name in METRIC_NAMES.items()
    }


@dataclass(frozen=True)
class Cell:
    """One table entry: mean and sample std over n seeds (std None when n < 2)."""

    mean: float | None
    std: float | None
    n: int
    best: bool = False


@dataclass(frozen=True)
class Table:
    """A study's table, independent of the output format."""

    name: str
    caption: str
    partial: bool
    row_header: str
    row_axes: tuple[str, ...]
    column_axes: tuple[str, ...]
    rows: tuple[tuple[str, dict[str, Any]], ...]  # (label, raw axis values)
    groups: tuple[tuple[str, dict[str, Any]], ...]  # column groups, same shape
    metrics: tuple[str, ...]
    cells: dict[tuple[int, int, str], Cell]  # (row index, group index, metric) -> Cell
    reference: dict[str, float] | None  # metric -> real-data value
    seeds: int  # n a complete cell has; fewer is shown as "(n=k)"


def build_table(results: "Results", study: Study) -> Table:
    """Aggregate COMPLETE trials over seeds into the study's rows x column groups x metrics."""
    frame = results.frame
    layout = study.table
    rows = _combos(study, frame, layout.rows)
    groups = _combos(study, frame, layout.columns)
    cells: dict[tuple[int, int, str], Cell] = {}
    for (r, (_, row)), (g, (_, group)) in itertools.product(enumerate(rows), enumerate(groups)):
        selected = frame
        for key, value in {**row, **group}.items():
            selected = selected[selected[key].map(value_text) == value_text(value)]
        for metric in layout.metrics:
            values = [float(v) for v in selected[metric].dropna()] if metric in selected else []
            cells[r, g, metric] = _aggregate(values)
    # Only rows and column groups holding at least one finished trial are shown.
    filled = {(r, g) for (r, g, _), cell in cells.items() if cell.n}
    kept_rows = [r for r in range(len(rows)) if any((r, g) in filled for g in range(len(groups)))]
    kept_groups = [g for g in range(len(groups)) if any((r, g) in filled for r in kept_rows)]
    cells = {
        (kept_rows.index(r), kept_groups.index(g), m): cell
        for (r, g, m), cell in cells.items()
        if r in kept_rows and g in kept_groups
    }
    cells = _mark_best(cells, len(kept_rows), len(kept_groups), layout.metrics)
    done = len(frame)
    return Table(
        name=study.name,
        caption=_caption(results, study, done),
        partial=done < results.total,
        row_header=", ".join(_axis_title(k) for k in layout.rows) or "Model",
        row_axes=layout.rows,
        column_axes=layout.columns,
        rows=tuple(rows[r] for r in kept_rows),
        groups=tuple(groups[g] for g in kept_groups),
        metrics=layout.metrics,
        cells=cells,
        reference=_reference(results.reference, layout.metrics),
        seeds=len(study.grid.get("seed", [None])),
    )


def render(table: Table, fmt: Format) -> str:
    """The table as LaTeX (a booktabs `table` environment), GitHub Markdown or tidy CSV."""
    if fmt == "latex":
        return _latex(table)
    if fmt == "markdown":
        return _markdown(table)
    if fmt == "csv":
        return _csv(table)
    raise ValueError(f"unknown table format {fmt!r}; valid formats: {', '.join(FORMATS)}")


def write_tables(
    results: "Results",
    study: Study,
    out: Path | None = None,
    formats: Sequence[Format] = FORMATS,
) -> list[Path]:
    """Write the table atomically in each format; returns the paths written.

    `out` is a folder (default results/STUDY/) receiving table.{tex,md,csv}, or, with a single
    format, a file path (any name with a suffix).
    """
    from casdm.files import atomic_write_text

    table = build_table(results, study)
    out = study.results_dir() if out is None else Path(out)
    if len(formats) == 1 and out.suffix and not out.is_dir():
        paths = {formats[0]: out}
    else:
        paths = {fmt: out / f"table.{EXTENSIONS[fmt]}" for fmt in formats}
    for fmt, path in paths.items():
        atomic_write_text(path, render(table, fmt))
    return list(paths.values())


# --- building -----------------------------------------------------------------------------


def _combos(study: Study, frame: Any, keys: Sequence[str]) -> list[tuple[str, dict[str, Any]]]:
    """(label, {key: value}) for every combination of the axes' values, in study order."""
    values = []
    for key in keys:
        if key in study.grid:
            values.append(study.grid[key])
        else:  # a search axis: the values the trials took
            seen = {value_text(v): v for v in frame[key]} if key in frame else {}
            values.append(sorted(seen.values()))
    combos = [dict(zip(keys, combo, strict=True)) for combo in itertools.product(*values)]
    # No row axes: one row, named after the study.
    return [
        (", ".join(study.value_label(k, v) for k, v in combo.items()) or study.name, combo)
        for combo in combos
    ]


def _aggregate(values: list[float]) -> Cell:
    if not values:
        return Cell(mean=None, std=None, n=0)
    std = statistics.stdev(values) if len(values) > 1 else None
    return Cell(mean=statistics.fmean(values), std=std, n=len(values))


def _mark_best(
    cells: dict[tuple[int, int, str], Cell], n_rows: int, n_groups: int, metrics: Sequence[str]
) -> dict[tuple[int, int, str], Cell]:
    """Bold the best mean of each column (at displayed precision, so ties are all bold)."""
    formats = metric_formats()
    marked = dict(cells)
    for g, metric in itertools.product(range(n_groups), metrics):
        direction = natural_direction(metric)
        shown = {
            r: round(cells[r, g, metric].mean * formats[metric].scale, formats[metric].decimals)
            for r in range(n_rows)
            if cells[r, g, metric].mean is not None
        }
        if direction is None or len(shown) < 2:
            continue
        best = (min if direction == "minimize" else max)(shown.values())
        for r, value in shown.items():
            if value == best:
                cell = cells[r, g, metric]
                marked[r, g, metric] = Cell(cell.mean, cell.std, cell.n, best=True)
    return marked


def _reference(
    reference: dict[str, float] | None, metrics: Sequence[str]
) -> dict[str, float] | None:
    if not reference:
        return None
    return {m: float(reference[m]) for m in metrics if reference.get(m) is not None}


def _axis_title(key: str) -> str:
    """ "architecture.name" -> "Architecture", "metric.weight" -> "Weight"."""
    parent, _, leaf = key.rpartition(".")
    word = parent.rpartition(".")[2] if leaf == "name" and parent else leaf
    return word.replace("_", " ").capitalize()


def _caption(results: "Results", study: Study, done: int) -> str:
    """Dataset, evaluator, samples, sampler and steps: as run (the runner's meta) or configured."""
    config = study.config(study.cells()[0])
    meta = {
        "dataset": config.data.dataset,
        "resolution": config.data.resolution,
        "evaluator": config.eval.evaluator
        + (" (random weights)" if config.eval.random_weights else ""),
        "num_samples": config.sample.num_samples,
        "sampler": config.sample.sampler,
        "steps": config.sample.steps,
        "eta": config.sample.eta,
        **{k: v for k, v in (results.meta or {}).items() if v is not None},
    }
    eta = f", η = {value_text(float(meta['eta']))}" if meta["sampler"] == "ddim" else ""
    seeds = len(study.grid.get("seed", [None]))
    held_out = "test" if config.eval.reference_split == "train" else "train"
    parts = [
        f"{meta['dataset']} {meta['resolution']}×{meta['resolution']}, "
        f"{meta['evaluator']} evaluator, {int(meta['num_samples']):,} samples per model, "
        f"{meta['sampler'].upper()} sampler with {meta['steps']} steps{eta}.",
        f"Mean ± std over {seeds} seeds; best per column in bold."
        if seeds > 1
        else "One seed per cell; best per column in bold.",
        f"{REFERENCE_LABEL}: the {held_out} split, scored against the {config.eval.reference_split}"
        "-split reference like the samples.",
    ]
    if meta.get("lpips_trunk") == "random":
        parts.append("LPIPS used a random (untrained) trunk: a smoke test, not a result.")
    if done < results.total:
        failed = results.states.get("FAIL", 0) if results.states else 0
        note = f"; {failed} failed" if failed else ""
        parts.append(f"Partial: {done} of {results.total} cells done{note}.")
    return " ".join(parts)


# --- rendering ----------------------------------------------------------------------------


def _number(value: float, metric: str) -> str:
    fmt = metric_formats()[metric]
    return f"{value * fmt.scale:.{fmt.decimals}f}"


def _arrow(metric: str, up: str, down: str) -> str:
    direction = natural_direction(metric)
    return {"minimize": f" {down}", "maximize": f" {up}"}.get(direction or "", "")


def _entry(table: Table, cell: Cell, metric: str, latex: bool) -> str:
    """ "12.31 ± 0.40", bold if best, with "(n=2)" when seeds are missing; a dash if empty."""
    if cell.mean is None:
        return "--" if latex else "—"
    pm = r" \pm " if latex else " ± "
    text = _number(cell.mean, metric) + (
        pm + _number(cell.std, metric) if cell.std is not None else ""
    )
    if latex:
        text = rf"$\mathbf{{{text}}}$" if cell.best else f"${text}$"
    elif cell.best:
        text = f"**{text}**"
    if cell.n < table.seeds:
        text += r" {\scriptsize(n=" + str(cell.n) + ")}" if latex else f" (n={cell.n})"
    return text


def _columns(table: Table) -> list[tuple[int, str]]:
    return list(itertools.product(range(len(table.groups)), table.metrics))


_LATEX_SPECIAL = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
    "±": r"$\pm$",
    "×": r"$\times$",
    "η": r"$\eta$",
    "λ": r"$\lambda$",
    "ε": r"$\epsilon$",
    "↓": r"$\downarrow$",
    "↑": r"$\uparrow$",
    "—": "---",
}


def latex_escape(text: str) -> str:
    """Text safe in LaTeX: special characters escaped, a few symbols as math."""
    return "".join(_LATEX_SPECIAL.get(ch, ch) for ch in text)


def _latex_header(metric: str) -> str:
    fmt = metric_formats()[metric]
    scale = r" ($\times 10^3$)" if fmt.scale == 1000 else ""
    return latex_escape(fmt.name) + scale + _arrow(metric, r"$\uparrow$", r"$\downarrow$")


def _latex(table: Table) -> str:
    columns = _columns(table)
    lines = [
        f"% Generated by `bench table {table.name}`; needs \\usepackage{{booktabs}}.",
        r"\begin{table}[t]",
        r"\centering",
        rf"\caption{{{latex_escape(table.caption)}}}",
        rf"\label{{tab:{table.name}}}",
        r"\begin{tabular}{l" + "c" * len(columns) + "}",
        r"\toprule",
    ]
    width = len(table.metrics)
    if table.column_axes:
        spans = [
            rf"\multicolumn{{{width}}}{{c}}{{{latex_escape(label)}}}" for label, _ in table.groups
        ]
        rules = [
            rf"\cmidrule(lr){{{2 + g * width}-{1 + (g + 1) * width}}}"
            for g in range(len(table.groups))
        ]
        lines += [" & ".join(["", *spans]) + r" \\", " ".join(rules)]
    header = [latex_escape(table.row_header), *(_latex_header(m) for _, m in columns)]
    lines += [" & ".join(header) + r" \\", r"\midrule"]
    for r, (label, _) in enumerate(table.rows):
        entries = [_entry(table, table.cells[r, g, m], m, latex=True) for g, m in columns]
        lines.append(" & ".join([latex_escape(label), *entries]) + r" \\")
    if table.reference:
        entries = [
            f"${_number(table.reference[m], m)}$" if m in table.reference else "--"
            for _, m in columns
        ]
        lines += [r"\midrule", " & ".join([latex_escape(REFERENCE_LABEL), *entries]) + r" \\"]
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
    return "\n".join(lines) + "\n"


def _md_escape(text: str) -> str:
    for ch in "\\|*_`":
        text = text.replace(ch, "\\" + ch)
    return text


def _markdown(table: Table) -> str:
    columns = _columns(table)
    formats = metric_formats()
    header = [_md_escape(table.row_header)]
    for g, metric in columns:
        fmt = formats[metric]
        name = fmt.name + (" ×10³" if fmt.scale == 1000 else "") + _arrow(metric, "↑", "↓")
        group = table.groups[g][0]
        header.append(_md_escape(f"{group}: {name}" if table.column_axes else name))
    title = f"{table.name}, partial" if table.partial else table.name
    lines = [
        f"**Table ({_md_escape(title)}).** {_md_escape(table.caption)}",
        "",
        "| " + " | ".join(header) + " |",
        "| :-- |" + " --: |" * len(columns),
    ]
    for r, (label, _) in enumerate(table.rows):
        entries = [_entry(table, table.cells[r, g, m], m, latex=False) for g, m in columns]
        lines.append("| " + " | ".join([_md_escape(label), *entries]) + " |")
    if table.reference:
        entries = [
            _number(table.reference[m], m) if m in table.reference else "—" for _, m in columns
        ]
        lines.append("| " + " | ".join([f"*{REFERENCE_LABEL}*", *entries]) + " |")
    return "\n".join(lines) + "\n"


def _csv(table: Table) -> str:
    axes = [*table.row_axes, *table.column_axes]
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["row", "column", *axes, "metric", "mean", "std", "n", "best", "reference"])
    for (r, (row, row_values)), (g, (group, group_values)) in itertools.product(
        enumerate(table.rows), enumerate(table.groups)
    ):
        values = {**row_values, **group_values}
        for metric in table.metrics:
            cell = table.cells[r, g, metric]
            writer.writerow(
                [
                    row,
                    group,
                    *(value_text(values[a]) for a in axes),
                    metric,
                    _raw(cell.mean),
                    _raw(cell.std),
                    cell.n,
                    str(cell.best).lower(),
                    "false",
                ]
            )
    for metric, value in (table.reference or {}).items():
        writer.writerow(
            [REFERENCE_LABEL, "", *([""] * len(axes)), metric, _raw(value), "", "", "false", "true"]
        )
    return out.getvalue()


def _raw(value: float | None) -> str:
    return "" if value is None else repr(float(value))
