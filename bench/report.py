"""A study's report: one self-contained HTML file (figures inlined, no network at all).

The table is bench.tables' Markdown rendering turned into HTML, the figures bench.plots', each
cell's configuration its difference from the study's [base] (with the --set overrides), plus the
environment, failures and notices, and the commands that reproduce it. Rendered by jinja2 from
bench/templates/report.html.j2 with autoescaping on.
"""

import base64
import html
import io
import json
import re
import shlex
import subprocess
from collections.abc import Mapping
from datetime import UTC, datetime
from importlib import metadata, resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.study import Study

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from bench.results import Results

PACKAGES = ("torch", "torchvision", "numpy", "scipy", "optuna", "mlflow", "clean-fid", "lpips")
PACKAGES += ("matplotlib", "casdm-bench")
_PIPE = re.compile(r"(?<!\\)\|")
_UNESCAPE = re.compile(r"\\([\\|*_`])")  # the Markdown renderer's backslash escapes


def markdown_table_html(markdown: str) -> dict[str, Any]:
    """bench.table_render's Markdown (caption paragraph + one pipe table) as HTML pieces:
    caption text, header cells, rows of cells (bold and italics kept) and column alignment."""
    lines = markdown.strip().splitlines()
    table_lines = [line for line in lines if line.startswith("|")]
    caption = " ".join(line for line in lines if line and not line.startswith("|"))
    cells = [[_cell_html(c) for c in _PIPE.split(line.strip())[1:-1]] for line in table_lines]
    header, rule, rows = cells[0], table_lines[1], cells[2:]
    align = ["r" if c.strip().endswith(":") else "" for c in _PIPE.split(rule)[1:-1]]
    return {
        "caption": _UNESCAPE.sub(r"\1", re.sub(r"\*\*(.+?)\*\*", r"\1", caption)),
        "header": header,
        "rows": rows,
        "align": align,
    }


def markdown_blocks_html(markdown: str) -> str:
    """Paragraphs and pipe tables of generated Markdown (the findings) as HTML; a "## "
    heading is left to the template. Text is escaped; **bold** and *italics* kept."""
    out = []
    for block in re.split(r"\n\s*\n", markdown.strip()):
        if block.startswith("## "):
            continue
        if block.startswith("|"):
            lines = block.splitlines()
            rows = [[_cell_html(c) for c in _PIPE.split(line.strip())[1:-1]] for line in lines]
            align = ["r" if c.strip().endswith(":") else "" for c in _PIPE.split(lines[1])[1:-1]]
            head = "".join(f'<th class="{a}">{c}</th>' for c, a in zip(rows[0], align, strict=True))
            body = "".join(
                "<tr>"
                + "".join(f'<td class="{a}">{c}</td>' for c, a in zip(row, align, strict=True))
                + "</tr>"
                for row in rows[2:]
            )
            out.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
        else:
            out.append(f"<p>{_cell_html(block)}</p>")
    return "\n".join(out)


def _cell_html(text: str) -> str:
    text = html.escape(text.strip())
    text = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", text)
    text = re.sub(r"(?<![\\*])\*(?!\*)(.+?)(?<!\\)\*", r"<em>\1</em>", text)
    return _UNESCAPE.sub(r"\1", text)


def png_data_uri(figure: "Figure", dpi: int = 150) -> str:
    """A figure as an inline `data:image/png;base64,...` URI."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def config_diff(study: Study, params: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(dotted key, value) of the cell's configuration where it differs from the base."""
    from bench.config import RunConfig
    from casdm.config import flatten, from_dict, to_dict

    base = flatten(to_dict(from_dict(RunConfig, study.base)))
    cell = flatten(to_dict(study.config(dict(params))))
    return [(k, str(v)) for k, v in cell.items() if base.get(k) != v]


def environment(results: "Results") -> list[tuple[str, str]]:
    """Package versions here, the git commit, and what the trials ran on."""
    rows = []
    for name in PACKAGES:
        try:
            rows.append((name, metadata.version(name)))
        except metadata.PackageNotFoundError:
            rows.append((name, "not installed"))
    rows.append(("git commit", git_commit()))
    frame = results.frame
    kinds = sorted({str(k) for k in frame.get("peak_memory_kind", []) if isinstance(k, str)})
    trials = results.trials
    owners = sorted({str(o) for o in trials.get("owner", []) if isinstance(o, str)})
    train = frame.get("cost.train_hours")
    device = frame.get("cost.device_hours")
    if train is not None and device is not None:
        ratios = {round(d / t) for d, t in zip(device, train, strict=True) if t and d}
        rows.append(("processes per trial", ", ".join(str(r) for r in sorted(ratios)) or "?"))
    if kinds:
        rows.append(("peak memory measured as", ", ".join(kinds)))
    if owners:
        rows.append(("workers", ", ".join(owners)))
    for key, value in sorted((results.meta or {}).items()):
        if key == "overrides":
            value = " ".join(f"--set {o}" for o in value) or "none"
        rows.append((f"study {key}", json.dumps(value) if not isinstance(value, str) else value))
    return rows


def git_commit() -> str:
    """The commit of the checkout this code runs from, with "+ changes" if it has any."""
    root = Path(__file__).resolve().parents[1]
    try:
        commit = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"],
            capture_output=True, text=True, check=True, timeout=10,
        ).stdout.strip()  # fmt: skip
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, check=True, timeout=10,
        ).stdout.strip()  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return "unknown (not a git checkout)"
    return commit + (" + uncommitted changes" if dirty else "")


def commands(study: Study, storage_args: list[str], overrides: list[str]) -> list[str]:
    """The commands that rerun the study (with the --set values it ran with) and rebuild this
    report."""
    study_arg = shlex.quote(str(study.path))
    sets = " ".join(f"--set {shlex.quote(o)}" for o in overrides)
    extra = " ".join(shlex.quote(a) for a in storage_args)
    run = " ".join(p for p in ("bench run --study", study_arg, sets, extra) if p)
    after = " ".join(p for p in (study_arg, extra) if p)
    return [
        f"git checkout {git_commit().split()[0]}",
        "pip install -e .",
        run,
        f"bench table {after}",
        f"bench plot {after}",
        f"bench report {after}",
    ]


def build_report(
    results: "Results",
    study: Study,
    figures: Mapping[str, "Figure"],
    storage_args: list[str] | None = None,
) -> str:
    """The report's HTML text."""
    import jinja2
    import markupsafe

    from bench.findings import render_markdown
    from bench.tables import build_table, render

    table = build_table(results, study)
    findings = table.findings
    trials = results.trials
    params_by_trial = {
        int(row["trial"]): {k: row[k] for k in (list(study.grid) or list(study.search))}
        for _, row in results.frame.iterrows()
    }
    cells = [
        {
            "trial": trial,
            "name": results.frame.loc[results.frame["trial"] == trial, "cell"].iloc[0],
            "state": "COMPLETE",
            "diff": config_diff(study, params),
        }
        for trial, params in sorted(params_by_trial.items())
    ]
    failures = [
        {"trial": int(r["trial"]), "cell": r["cell"], "failure": r["failure"], "error": r["error"]}
        for _, r in trials.iterrows()
        if r.get("state") == "FAIL"
    ]
    notices = [
        {"trial": int(r["trial"]), "cell": r["cell"], "text": text}
        for _, r in trials.iterrows()
        for text in (r.get("notices") if isinstance(r.get("notices"), list) else [])
    ]
    template = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined).from_string(
        resources.files("bench").joinpath("templates/report.html.j2").read_text()
    )
    return template.render(
        study=study,
        done=len(results.frame),
        total=results.total,
        partial=len(results.frame) < results.total,
        written=datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        table=markdown_table_html(render(table, "markdown")),
        findings=markupsafe.Markup(markdown_blocks_html(render_markdown(findings)))
        if findings is not None
        else None,
        figures=[{"stem": s, "data_uri": png_data_uri(f)} for s, f in figures.items()],
        cells=cells,
        base=json.dumps(study.base, indent=2, default=str),
        failures=failures,
        notices=notices,
        environment=environment(results),
        commands=commands(
            study, storage_args or [], (results.meta or {}).get("overrides", study.overrides)
        ),
    )
