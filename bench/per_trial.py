"""The per-trial values behind a table (trials.csv), shipped with it so that anyone can recheck
every interval, test and finding without rerunning the study."""

import csv
import io
from typing import TYPE_CHECKING

from bench.costs import COSTS
from bench.results import COST_PREFIX
from bench.rows import is_finite
from bench.study import Study, value_text

if TYPE_CHECKING:
    from bench.results import Records, Results


def trials_csv(results: "Records | Results", study: Study) -> str:
    """One row per COMPLETE trial, in trial order: its number, cell, every axis (the seed
    included), each of the table's scores with its bootstrap standard error over the samples
    (`<score>_se`, empty when not bootstrapped), the resamples, and every cost."""
    axes = list(study.grid) if study.is_grid else list(study.search)
    scores = list(study.table.scores)
    header = [
        "trial", "cell", *axes,
        *[name for score in scores for name in (score, f"{score}_se")],
        "bootstrap_resamples", *COSTS,
    ]  # fmt: skip
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(header)
    for row in sorted(results.rows, key=lambda r: r["trial"]):
        values = [row["trial"], row.get("cell", "")]
        values += [value_text(row[a]) if a in row else "" for a in axes]
        for score in scores:
            values += [_number(row.get(score)), _number(row.get(f"bootstrap.{score}.se"))]
        values.append(_number(row.get("bootstrap.resamples")))
        values += [_number(row.get(COST_PREFIX + key)) for key in COSTS]
        writer.writerow(values)
    return out.getvalue()


def _number(value: object) -> str:
    """repr of a finite number (every digit, so values recompute exactly), else empty."""
    return repr(float(value)) if is_finite(value) else ""
