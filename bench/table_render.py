"""Writing a bench.tables.Table out: LaTeX (booktabs), GitHub Markdown and a tidy CSV.

Two layouts: `wide` (one row per row label, a column group per column label, the scores inside
each group) and `long` (one row per cell, the swept axes as leading columns, then the scores).
`auto` takes the first that fits a standard two-column paper (\\documentclass[twocolumn]{article},
10 pt): wide in one column, long in one column, wide across both (`table*`), long across both,
then the same in \\small and \\footnotesize. Widths are estimated from Computer Modern's glyph
widths (bench.latex_width; conservative: tests/test_tables.py measures the real box with
pdflatex).

The CSV is tidy (one line per row x column group x score, the layout pandas' `pivot_table`
takes) with unscaled, unrounded values, whatever the layout: columns `row`, `column` (display
labels), one column per row/column axis holding the raw axis value, then `score` (a score name;
earlier versions named this column `metric`),
`mean`, `std` (over seeds), `n`, `ci_low`, `ci_high` (the ± of the display), `uncertainty`
("t95": Student t over seeds; "bootstrap95": 1.96 bootstrap standard errors of one seed's
score), `bootstrap_se`, `best`, `reference` (true on the real-data lines), `baseline` (the cell
is a baseline), `test` ("paired t" or "Welch t"), `difference` (cell - baseline), `effect_size`
(paired: mean/sd of the differences; Welch: Cohen's d), `p_value`, `p_holm`, `significant`
("better", "worse" or empty), `protocol` (the score's protocol label, if the run stored one),
`caveats` (the components' caveats for the cell, e.g. a random LPIPS trunk; empty if none),
`random_weights`, and every cost (`cost.<key>`, bench.costs; empty if unknown).
"""

import csv
import io
import itertools
from dataclasses import dataclass

from bench.costs import COSTS
from bench.evaluation import scores as score_registry
from bench.latex_width import math_width, text_width
from bench.study import value_text
from bench.tables import BETTER, REFERENCE_LABEL, WORSE, Cell, Format, Table

COLUMN_WIDTH_PT = 229.5  # \columnwidth of \documentclass[twocolumn]{article} at 10 pt
TEXT_WIDTH_PT = 469.0  # its \textwidth
TABCOLSEP_PT = 6.0
# Type sizes and how wide their glyphs are relative to 10 pt: the largest ratio of cmr9's
# (\small) and cmr8's, cmbx8's and cmsy8's (\footnotesize) advance widths to their 10 pt
# designs', rounded up (smaller designs are relatively wider). The column gaps do not shrink.
SIZES = {"normalsize": 1.0, "small": 0.926, "footnotesize": 0.856}
SCRIPTSIZE = 0.815  # \scriptsize (7 pt whatever the table's size): cmr7's largest ratio


@dataclass(frozen=True)
class Fit:
    """How the LaTeX table is set: layout, environment (table or table*), font size, width."""

    layout: str
    environment: str
    size: str
    width_pt: float  # the estimated width of the tabular at that size


def render(table: Table, fmt: Format) -> str:
    fit = choose_fit(table)
    if fmt == "latex":
        return _latex(table, fit)
    if fmt == "markdown":
        return _markdown(table, fit.layout)
    return _csv(table)


# --- layout -------------------------------------------------------------------------------


def _value_columns(table: Table, layout: str) -> list[tuple[int | None, str]]:
    """(group index, key) of each value column; keys are scores or "cost.<key>"."""
    keys = [*table.scores, *("cost." + k for k in table.cost)]
    if layout == "long":
        return [(None, key) for key in keys]
    return list(itertools.product(range(len(table.groups)), keys))


def _lead_headers(table: Table, layout: str) -> list[str]:
    if layout == "long":
        return [table.axis_titles[a] for a in (*table.row_axes, *table.column_axes)] or ["Model"]
    return [table.row_header]


def _body(table: Table, layout: str) -> list[tuple[list[str], int, int | None]]:
    """(leading texts, row index, group index or None) of each body row."""
    if layout == "wide":
        return [([label], r, None) for r, (label, _) in enumerate(table.rows)]
    body = []
    for (r, (label, row)), (g, (_, group)) in itertools.product(
        enumerate(table.rows), enumerate(table.groups)
    ):
        if not any(table.cells[r, g, m].n for m in table.scores):
            continue
        values = {**row, **group}
        axes = (*table.row_axes, *table.column_axes)
        texts = [table.axis_values[a][value_text(values[a])] for a in axes] or [label]
        body.append((texts, r, g))
    return body


def _reference_in_caption(table: Table, layout: str) -> bool:
    """Wide with several column groups would repeat the real-data values per group."""
    return bool(table.reference) and layout == "wide" and len(table.groups) > 1


def caption(table: Table, layout: str) -> str:
    """The table's caption, with what the bold marks and the real-data values in this layout."""
    text = table.caption
    if layout == "long" and table.column_axes:  # bold compares rows sharing the column values
        within = ", ".join(table.axis_titles[a].lower() for a in table.column_axes)
        text = text.replace(
            "Bold: the best value of each score column.",
            f"Bold: the best value of each score column among the rows of the same {within}.",
        )
    if not _reference_in_caption(table, layout):
        return text
    values = ", ".join(
        f"{_score_name(m)} {_number(v, m)}" for m, v in (table.reference or {}).items()
    )
    return f"{text} {REFERENCE_LABEL}: {values}."


def _entry_width(table: Table, r: int, g: int, key: str, size: str) -> float:
    """Width (pt, relative to 10 pt type) of an entry in a table set in `size` type."""
    if key.startswith("cost."):
        return text_width(_cost(table, r, g, key) or "")
    cell = table.cells[r, g, key]
    if cell.mean is None:
        return text_width("--")
    if cell.low is not None:  # the mean, then the wider of its two scripts
        mean, below, above = _bounded_parts(cell, key)
        scripts = max(math_width("+" + above, cell.best), math_width("-" + below, cell.best))
        width = math_width(mean, bold=cell.best) + SCRIPT_SCALE * scripts + SCRIPT_SPACE_PT
    else:
        width = math_width(_value_text(cell, key), bold=cell.best)
    if cell.n < table.seeds:  # " {\scriptsize(n=2)}": a space, then 7 pt type at any size
        width += text_width(" ") + text_width(f"(n={cell.n})") * SCRIPTSIZE / SIZES[size]
    return width  # the significance marker hangs into the column gap (\rlap)


def estimate_width(table: Table, layout: str, size: str = "normalsize") -> float:
    """Estimated width (pt) of the LaTeX tabular in `layout` set in `size` type."""
    text, columns = _text_width(table, layout, size)
    return text * SIZES[size] + 2 * TABCOLSEP_PT * columns


def _text_width(table: Table, layout: str, size: str) -> tuple[float, int]:
    """The text width (pt, relative to 10 pt type) of the tabular's columns set in `size`
    type, and how many columns."""
    columns = _value_columns(table, layout)
    body = _body(table, layout)
    lead = _lead_headers(table, layout)
    widths = [text_width(h) for h in lead]
    for texts, _, _ in body:
        widths = [max(w, text_width(t)) for w, t in zip(widths, texts, strict=True)]
    reference_row = bool(table.reference) and not _reference_in_caption(table, layout)
    if reference_row and len(lead) == 1:
        widths[0] = max(widths[0], text_width(REFERENCE_LABEL))
    value_widths = []
    for g, key in columns:
        width = text_width(_header_text(key))
        for _, r, body_g in body:
            width = max(width, _entry_width(table, r, body_g if g is None else g, key, size))
        if reference_row and key in (table.reference or {}):
            width = max(width, math_width(_number(table.reference[key], key)))
        value_widths.append(width)
    total = sum(widths) + sum(value_widths)
    if reference_row and len(lead) > 1:
        span = sum(widths) + 2 * TABCOLSEP_PT * (len(lead) - 1)
        total += max(0.0, text_width(REFERENCE_LABEL) - span)
    if layout == "wide" and table.column_axes:  # a group label wider than its columns widens it
        per_group = len(columns) // max(1, len(table.groups))
        for g, (label, _) in enumerate(table.groups):
            span = sum(value_widths[g * per_group : (g + 1) * per_group])
            span += 2 * TABCOLSEP_PT * (per_group - 1)
            total += max(0.0, text_width(label) - span)
    return total, len(widths) + len(columns)


def choose_fit(table: Table) -> Fit:
    """The first layout/environment/size that fits (see the module doc); forced layouts keep
    their layout and take the first environment and size that fit it."""
    layouts = ("wide", "long") if table.layout == "auto" else (table.layout,)
    candidates = [
        (layout, env, size, limit)
        for size in SIZES
        for env, limit in (("table", COLUMN_WIDTH_PT), ("table*", TEXT_WIDTH_PT))
        for layout in layouts
    ]
    for layout, env, size, limit in candidates:
        if env == "table" and size != "normalsize":
            continue  # a table narrower in small type still goes in one column
        width = estimate_width(table, layout, size)
        if width <= limit:
            return Fit(layout, env, size, width)
    last = layouts[-1]
    return Fit(last, "table*", "footnotesize", estimate_width(table, last, "footnotesize"))


# --- text of entries ----------------------------------------------------------------------


def _score_name(score: str) -> str:
    return score_registry.get(score).header()


def _number(value: float, score: str) -> str:
    return score_registry.get(score).text(value)


def _arrow(score: str, up: str, down: str) -> str:
    direction = score_registry.direction(score)
    return {"minimize": f" {down}", "maximize": f" {up}"}.get(direction or "", "")


def _header_text(key: str) -> str:
    if key.startswith("cost."):
        return COSTS[key.removeprefix("cost.")].name
    return _score_name(key) + _arrow(key, "↑", "↓")


# TeX sets sub- and superscripts of 10 pt math in 7 pt (cmr7, whose digits are 0.8 of cmr10's
# at that size, relative to 10 pt: 4.0 pt against 5.0), and adds \scriptspace (0.5 pt) after.
SCRIPT_SCALE = 0.8
SCRIPT_SPACE_PT = 0.5


def _bounded_parts(cell: Cell, score: str) -> tuple[str, str, str]:
    """A bounded cell's mean and its interval's distances below and above it, as shown."""
    low, high = cell.interval()
    return (
        _number(cell.mean, score),
        _number(cell.mean - low, score),
        _number(high - cell.mean, score),
    )


def _value_text(cell: Cell, score: str) -> str:
    """ "12.31 ± 0.40" or "12.31" (plain text)."""
    text = _number(cell.mean, score)
    if cell.low is not None:  # a proportion's interval, asymmetric
        low, high = cell.interval()
        text += f" [{_number(low, score)}, {_number(high, score)}]"
    elif cell.half_width is not None:
        text += " ± " + _number(cell.half_width, score)
    return text


def _cost(table: Table, r: int, g: int, key: str) -> str:
    value = table.costs.get((r, g), {}).get(key.removeprefix("cost."))
    if value is None:
        return ""
    return f"{value:,.{COSTS[key.removeprefix('cost.')].decimals}f}"


def _entry(table: Table, r: int, g: int, key: str, latex: bool) -> str:
    """An entry: bold if best, a significance marker, "(n=2)" when seeds are missing."""
    if key.startswith("cost."):
        return _cost(table, r, g, key)
    cell = table.cells[r, g, key]
    if cell.mean is None:
        return "--" if latex else "—"
    if latex:
        if cell.low is not None:  # asymmetric: mean^{+above}_{-below}, compact
            mean, below, above = _bounded_parts(cell, key)
            text = rf"{mean}^{{+{above}}}_{{-{below}}}"
        else:
            text = _value_text(cell, key).replace(" ± ", r" \pm ")
        text = rf"$\mathbf{{{text}}}$" if cell.best else f"${text}$"
        if cell.marker:
            sign = "+" if cell.marker == BETTER else "$-$"
            text += rf"\rlap{{\textsuperscript{{{sign}}}}}"
        if cell.n < table.seeds:
            text += r" {\scriptsize(n=" + str(cell.n) + ")}"
        return text
    text = _value_text(cell, key)
    text = (f"**{text}**" if cell.best else text) + cell.marker
    return text + (f" (n={cell.n})" if cell.n < table.seeds else "")


# --- LaTeX --------------------------------------------------------------------------------


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
    "³": r"$^3$",
    "η": r"$\eta$",
    "λ": r"$\lambda$",
    "ε": r"$\epsilon$",
    "α": r"$\alpha$",
    "↓": r"$\downarrow$",
    "↑": r"$\uparrow$",
    "—": "---",
    "−": "$-$",
    BETTER: r"\textsuperscript{+}",
    WORSE: r"\textsuperscript{$-$}",
}


def latex_escape(text: str) -> str:
    """Text safe in LaTeX: special characters escaped, a few symbols as math."""
    return "".join(_LATEX_SPECIAL.get(ch, ch) for ch in text)


def _latex_header(key: str) -> str:
    if key.startswith("cost."):
        return latex_escape(COSTS[key.removeprefix("cost.")].name)
    score = score_registry.get(key)
    power = str(score.exponent) if score.exponent < 10 else f"{{{score.exponent}}}"
    scale = rf" ($\times 10^{power}$)" if score.exponent else ""
    return latex_escape(score.display) + scale + _arrow(key, r"$\uparrow$", r"$\downarrow$")


def _latex(table: Table, fit: Fit) -> str:
    layout = fit.layout
    columns = _value_columns(table, layout)
    lead = _lead_headers(table, layout)
    env = fit.environment
    lines = [
        f"% Generated by `bench table {table.name}` ({layout} layout, estimated "
        f"{fit.width_pt:.0f} pt wide); needs \\usepackage{{booktabs}}.",
        rf"\begin{{{env}}}[t]",
        r"\centering",
        *([rf"\{fit.size}"] if fit.size != "normalsize" else []),
        rf"\caption{{{latex_escape(caption(table, layout))}}}",
        rf"\label{{tab:{table.name}}}",
        r"\begin{tabular}{" + "l" * len(lead) + "r" * len(columns) + "}",
        r"\toprule",
    ]
    if layout == "wide" and table.column_axes:
        width = len(columns) // len(table.groups)
        spans = [
            rf"\multicolumn{{{width}}}{{c}}{{{latex_escape(label)}}}" for label, _ in table.groups
        ]
        rules = [
            rf"\cmidrule(lr){{{2 + g * width}-{1 + (g + 1) * width}}}"
            for g in range(len(table.groups))
        ]
        lines += [" & ".join(["", *spans]) + r" \\", " ".join(rules)]
    header = [*(latex_escape(h) for h in lead), *(_latex_header(k) for _, k in columns)]
    lines += [" & ".join(header) + r" \\", r"\midrule"]
    for texts, r, body_g in _body(table, layout):
        entries = [
            _entry(table, r, g if g is not None else body_g, key, latex=True) for g, key in columns
        ]
        lines.append(" & ".join([*(latex_escape(t) for t in texts), *entries]) + r" \\")
    if table.reference and not _reference_in_caption(table, layout):
        entries = [
            f"${_number(table.reference[k], k)}$" if k in table.reference else ""
            for _, k in columns
        ]
        label = latex_escape(REFERENCE_LABEL)
        if len(lead) > 1:
            label = rf"\multicolumn{{{len(lead)}}}{{l}}{{{label}}}"
        lines += [r"\midrule", " & ".join([label, *entries]) + r" \\"]
    lines += [r"\bottomrule", r"\end{tabular}", rf"\end{{{env}}}"]
    return "\n".join(lines) + "\n"


# --- Markdown -----------------------------------------------------------------------------


def _md_escape(text: str) -> str:
    for ch in "\\|*_`":
        text = text.replace(ch, "\\" + ch)
    return text


def _markdown(table: Table, layout: str) -> str:
    columns = _value_columns(table, layout)
    lead = _lead_headers(table, layout)
    header = [_md_escape(h) for h in lead]
    for g, key in columns:
        name = _header_text(key)
        group = f"{table.groups[g][0]}: " if g is not None and table.column_axes else ""
        header.append(_md_escape(group + name))
    title = f"{table.name}, partial" if table.partial else table.name
    lines = [
        f"**Table ({_md_escape(title)}).** {_md_escape(caption(table, layout))}",
        "",
        "| " + " | ".join(header) + " |",
        "|" + " :-- |" * len(lead) + " --: |" * len(columns),
    ]
    for texts, r, body_g in _body(table, layout):
        entries = [
            _entry(table, r, g if g is not None else body_g, key, latex=False) for g, key in columns
        ]
        lines.append("| " + " | ".join([*(_md_escape(t) for t in texts), *entries]) + " |")
    if table.reference and not _reference_in_caption(table, layout):
        entries = [
            _number(table.reference[k], k) if k in table.reference else "" for _, k in columns
        ]
        label = [f"*{REFERENCE_LABEL}*", *[""] * (len(lead) - 1)]
        lines.append("| " + " | ".join([*label, *entries]) + " |")
    return "\n".join(lines) + "\n"


# --- CSV ----------------------------------------------------------------------------------

CSV_STATS = (
    "mean", "std", "n", "ci_low", "ci_high", "uncertainty", "bootstrap_se", "best", "reference",
    "baseline", "test", "difference", "effect_size", "p_value", "p_holm", "significant",
    "protocol", "caveats", "random_weights",
)  # fmt: skip


def _csv(table: Table) -> str:
    axes = [*table.row_axes, *table.column_axes]
    costs = ["cost." + key for key in COSTS]
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["row", "column", *axes, "score", *CSV_STATS, *costs])
    for (r, (row, row_values)), (g, (group, group_values)) in itertools.product(
        enumerate(table.rows), enumerate(table.groups)
    ):
        values = {**row_values, **group_values}
        flags = table.flags.get((r, g), {})
        cost = [_raw(table.costs.get((r, g), {}).get(key)) for key in COSTS]
        for score in table.scores:
            cell = table.cells[r, g, score]
            test = cell.comparison
            ends = cell.interval()
            low = _raw(None if ends is None else ends[0])
            high = _raw(None if ends is None else ends[1])
            significant = {BETTER: "better", WORSE: "worse"}.get(cell.marker, "")
            writer.writerow(
                [
                    row,
                    group,
                    *(value_text(values[a]) for a in axes),
                    score,
                    _raw(cell.mean),
                    _raw(cell.std),
                    cell.n,
                    low,
                    high,
                    cell.uncertainty,
                    _raw(cell.bootstrap_se),
                    _bool(cell.best),
                    "false",
                    _bool(cell.baseline),
                    test.test if test else "",
                    _raw(test.difference if test else None),
                    _raw(test.effect_size if test else None),
                    _raw(test.p_value if test else None),
                    _raw(cell.p_holm),
                    significant,
                    table.protocols.get(score, ""),
                    flags.get("caveats", ""),
                    _bool(flags.get("random_weights", False)),
                    *cost,
                ]
            )
    blank = [""] * 6  # test .. significant
    for score, value in (table.reference or {}).items():
        writer.writerow(
            [REFERENCE_LABEL, "", *([""] * len(axes)), score, _raw(value), "", "", "", "", "",
             "", "false", "true", "false", *blank, table.protocols.get(score, ""), "",
             _bool(any(f.get("random_weights") for f in table.flags.values())),
             *([""] * len(costs))]
        )  # fmt: skip
    return out.getvalue()


def _bool(value: bool) -> str:
    return str(bool(value)).lower()


def _raw(value: float | None) -> str:
    return "" if value is None else repr(float(value))
