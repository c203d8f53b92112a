"""Results tables: aggregation over seeds, best-in-bold, golden LaTeX/Markdown/CSV, the CLI."""

import io
import os
import re
import shutil
import subprocess
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from bench.cli import main
from bench.intervals import proportion_interval
from bench.latex_width import math_width, text_width
from bench.results import Results
from bench.study import load_study
from bench.table_render import COLUMN_WIDTH_PT, TEXT_WIDTH_PT, choose_fit, latex_escape
from bench.tables import build_table, render, write_tables

GOLDEN = Path(__file__).parent / "golden"
REPO = Path(__file__).resolve().parents[1]

STUDY = """\
description = "2 architectures x 2 metric losses, 3 seeds"
objective = { metric = "fid" }

[base.data]
dataset = "digits"
resolution = 16

[base.model]
channel_mults = [1, 2]
attention_resolutions = []

[base.sample]
steps = 20
num_samples = 500

[grid]
"architecture.name" = ["ddpm", "cas-dm"]
"metric.name" = ["none", "lpips"]
seed = [0, 1, 2]

[table]
rows = ["architecture.name"]
columns = ["metric.name"]
metrics = ["fid", "is_mean", "kid", "precision"]

[labels]
"architecture.name" = { "ddpm" = "DDPM (eps)", "cas-dm" = "Cas-DM" }
"metric.name" = { "none" = "no metric", "lpips" = "LPIPS" }
"""

# (architecture, metric, seed) -> (fid, is_mean, kid, precision). Cas-DM + LPIPS lacks seed 2
# (a partial study); DDPM and Cas-DM tie on precision with no metric loss (both bold).
SCORES = {
    ("ddpm", "none", 0): (10.0, 2.0, 0.0040, 0.60),
    ("ddpm", "none", 1): (12.0, 2.2, 0.0050, 0.62),
    ("ddpm", "none", 2): (11.0, 2.1, 0.0060, 0.64),
    ("ddpm", "lpips", 0): (9.0, 2.5, 0.0030, 0.70),
    ("ddpm", "lpips", 1): (9.5, 2.4, 0.0035, 0.71),
    ("ddpm", "lpips", 2): (10.0, 2.3, 0.0040, 0.72),
    ("cas-dm", "none", 0): (8.0, 2.4, 0.0020, 0.61),
    ("cas-dm", "none", 1): (8.5, 2.6, 0.0025, 0.62),
    ("cas-dm", "none", 2): (9.0, 2.5, 0.0030, 0.63),
    ("cas-dm", "lpips", 0): (7.0, 2.0, 0.0010, 0.80),
    ("cas-dm", "lpips", 1): (7.5, 2.1, 0.0015, 0.82),
}
REFERENCE = {"fid": 0.523, "is_mean": 9.87, "kid": 0.00012, "precision": 0.75, "recall": 0.76}
META = {
    "dataset": "digits",
    "resolution": 16,
    "evaluator": "classifier:digits",
    "num_samples": 500,
    "sampler": "ddim",
    "steps": 20,
    "eta": 0.0,
    "random_weights": False,
    "caveats": [],
}


@pytest.fixture
def study(tmp_path):
    path = tmp_path / "golden.toml"
    path.write_text(STUDY)
    return load_study(str(path))


def make_results(scores=SCORES, reference=REFERENCE, meta=META, total=12) -> Results:
    rows = [
        {
            "trial": i,
            "cell": f"{a} {m} seed={s}",
            "architecture.name": a,
            "metric.name": m,
            "seed": s,
            **dict(zip(("fid", "is_mean", "kid", "precision"), v, strict=True)),
        }
        for i, ((a, m, s), v) in enumerate(scores.items())
    ]
    states = Counter({"COMPLETE": len(rows), "RUNNING": total - len(rows)})
    return Results(
        frame=pd.DataFrame(rows),
        reference=reference,
        meta=meta,
        total=total,
        states=states,
        trials=pd.DataFrame(rows),
    )


def check_golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if os.environ.get("UPDATE_GOLDEN"):
        path.write_text(text)
    assert text == path.read_text()


# --- aggregation --------------------------------------------------------------------------


def test_cells_are_mean_and_sample_std_over_seeds(study):
    table = build_table(make_results(), study)
    assert [label for label, _ in table.rows] == ["DDPM (eps)", "Cas-DM"]
    assert [label for label, _ in table.groups] == ["no metric", "LPIPS"]
    for r, arch in enumerate(("ddpm", "cas-dm")):
        for g, metric in enumerate(("none", "lpips")):
            for k, key in enumerate(("fid", "is_mean", "kid", "precision")):
                values = [v[k] for (a, m, _), v in SCORES.items() if (a, m) == (arch, metric)]
                cell = table.cells[r, g, key]
                assert cell.n == len(values)
                assert cell.mean == pytest.approx(np.mean(values))
                assert cell.std == pytest.approx(np.std(values, ddof=1))
                if key == "precision":  # a fraction of the 500 samples: inside [0, 1]
                    bounded = proportion_interval(values, META["num_samples"])
                    assert cell.interval() == (bounded.low, bounded.high)
                    assert cell.uncertainty == "bounded95" and cell.half_width is None
                    continue
                low, high = stats.t.interval(
                    0.95, len(values) - 1, loc=np.mean(values), scale=stats.sem(values)
                )
                assert cell.mean - cell.half_width == pytest.approx(low)
                assert cell.mean + cell.half_width == pytest.approx(high)
                assert cell.uncertainty == "t95"
    assert table.seeds == 3 and table.partial


def test_best_is_direction_aware_and_ties_are_all_bold(study):
    table = build_table(make_results(), study)
    best = {(r, g, m) for (r, g, m), cell in table.cells.items() if cell.best}
    # FID and KID: lower wins; IS and precision: higher wins; one winner per column except the
    # precision tie at the displayed 3 decimals (0.620 and 0.620) with no metric loss.
    assert best == {
        (1, 0, "fid"), (1, 1, "fid"),
        (1, 0, "is_mean"), (0, 1, "is_mean"),
        (1, 0, "kid"), (1, 1, "kid"),
        (0, 0, "precision"), (1, 0, "precision"), (1, 1, "precision"),
    }  # fmt: skip


def test_missing_seeds_show_n_and_partial_is_marked(study):
    table = build_table(make_results(), study)
    markdown = render(table, "markdown")
    assert "**Table (golden, partial).**" in markdown
    assert "Partial: 11 of 12 cells done." in markdown
    assert "**7.25 ± 3.18** (n=2)" in markdown  # Cas-DM + LPIPS FID over seeds 0 and 1
    assert "(n=3)" not in markdown


def test_a_single_seed_cell_has_no_std(tmp_path):
    scores = {("ddpm", "none", 0): (10.0, 2.0, 0.004, 0.6)}
    path = tmp_path / "single_seed.toml"
    path.write_text(STUDY.replace("seed = [0, 1, 2]", "seed = [0]"))
    table = build_table(make_results(scores, total=4), load_study(str(path)))
    cell = table.cells[0, 0, "fid"]
    assert (cell.mean, cell.std, cell.n, cell.best) == (10.0, None, 1, False)
    assert cell.half_width is None  # no bootstrap stored with this trial
    assert "| DDPM (eps) | 10.00 | 2.00 | 4.00 | 0.600 |" in render(table, "markdown")
    assert "One seed per cell" in table.caption


def test_rows_and_groups_without_any_finished_trial_are_left_out(study):
    scores = {k: v for k, v in SCORES.items() if k[0] == "ddpm" and k[1] == "none"}
    table = build_table(make_results(scores), study)
    assert [label for label, _ in table.rows] == ["DDPM (eps)"]
    assert [label for label, _ in table.groups] == ["no metric"]
    assert not any(cell.best for cell in table.cells.values())  # nothing to compare with


def test_search_study_rows_are_the_values_its_trials_took(tmp_path):
    path = tmp_path / "tpe.toml"
    path.write_text(
        'description = "TPE"\nn_trials = 4\n[search]\n'
        '"train.lr" = { low = 1e-5, high = 1e-3, log = true }\n'
        '[table]\nrows = ["train.lr"]\nmetrics = ["fid"]\n'
    )
    frame = pd.DataFrame({"train.lr": [3e-4, 1e-4, 3e-4], "fid": [5.0, 7.0, 6.0]})
    results = Results(frame, None, {}, 4, Counter({"COMPLETE": 3, "RUNNING": 1}), frame)
    table = build_table(results, load_study(str(path)))
    assert [label for label, _ in table.rows] == ["lr=0.0001", "lr=0.0003"]
    assert (table.cells[1, 0, "fid"].mean, table.cells[1, 0, "fid"].n) == (5.5, 2)
    assert table.cells[1, 0, "fid"].best and not table.cells[0, 0, "fid"].best and table.partial


def test_caption_names_dataset_evaluator_samples_sampler_and_steps(study):
    caption = build_table(make_results(), study).caption
    assert "digits 16×16, classifier:digits evaluator, 500 samples per model" in caption
    assert "DDIM sampler with 20 steps, η = 0" in caption
    assert "Mean ± half-width of the 95% confidence interval over 3 seeds (Student t)" in caption


def test_caption_labels_random_weights(study):
    caveat = "LPIPS used a random (untrained) trunk: a smoke test, not a result."
    meta = {**META, "evaluator": "Inception (random weights)", "caveats": [caveat]}
    caption = build_table(make_results(meta=meta), study).caption
    assert "Inception (random weights) evaluator" in caption
    assert caveat in caption
    # A study stored before components had caveats recorded the trunk alone.
    legacy = {**{k: v for k, v in META.items() if k != "caveats"}, "lpips_trunk": "random"}
    caption = build_table(make_results(meta=legacy), study).caption
    assert "The metric loss used a random (untrained) trunk: a smoke test" in caption


def test_caption_falls_back_to_the_study_config_without_runner_meta(study):
    caption = build_table(make_results(meta={}), study).caption
    assert "digits 16×16, classifier evaluator, 500 samples per model" in caption


def test_no_reference_means_no_real_data_row(study):
    table = build_table(make_results(reference=None), study)
    assert "Real data (held-out) |" not in render(table, "markdown")
    assert "Real data (held-out)" not in render(table, "csv")


# --- output formats -----------------------------------------------------------------------


@pytest.mark.parametrize(("fmt", "name"), [("latex", "table.tex"), ("markdown", "table.md"),
                                           ("csv", "table.csv")])  # fmt: skip
def test_golden_output(study, fmt, name):
    check_golden(name, render(build_table(make_results(), study), fmt))


def test_csv_is_tidy_and_pivots_back_to_the_table(study):
    frame = pd.read_csv(io.StringIO(render(build_table(make_results(), study), "csv")))
    assert list(frame.columns) == [
        "row", "column", "architecture.name", "metric.name", "score", "mean", "std", "n",
        "ci_low", "ci_high", "uncertainty", "bootstrap_se", "best", "reference", "baseline",
        "test", "difference", "effect_size", "p_value", "p_holm", "significant", "protocol",
        "caveats", "random_weights", "cost.params_m", "cost.train_images_per_s",
        "cost.train_hours", "cost.device_hours", "cost.sample_s_per_1k", "cost.nfe",
        "cost.peak_memory_mb",
    ]  # fmt: skip
    models = frame[~frame["reference"]]
    fid = models[models["score"] == "fid"].pivot_table(
        index="architecture.name", columns="metric.name", values="mean"
    )
    assert fid.loc["cas-dm", "lpips"] == pytest.approx(7.25)
    assert fid.loc["ddpm", "none"] == pytest.approx(11.0)
    kid = models[(models["score"] == "kid") & (models["architecture.name"] == "ddpm")]
    assert kid["mean"].max() == pytest.approx(0.005)  # unscaled, unlike the x10^3 display
    real = frame[frame["reference"]].set_index("score")["mean"]
    assert real["fid"] == pytest.approx(0.523) and "recall" not in real.index


def test_latex_escapes_special_characters():
    assert latex_escape("a_b & 50% #1 {x} ~ ^ \\") == (
        r"a\_b \& 50\% \#1 \{x\} \textasciitilde{} \textasciicircum{} \textbackslash{}"
    )
    assert latex_escape("16×16, η = 0, ±") == r"16$\times$16, $\eta$ = 0, $\pm$"


def test_markdown_escapes_pipes_in_labels(study, tmp_path):
    text = STUDY.replace('"Cas-DM"', '"Cas|DM_x"')
    path = tmp_path / "pipes.toml"
    path.write_text(text)
    markdown = render(build_table(make_results(), load_study(str(path))), "markdown")
    assert "| Cas\\|DM\\_x |" in markdown


def _compile(tmp_path: Path, table: str) -> subprocess.CompletedProcess:
    """pdflatex on a standard two-column paper holding `table`, which also reports (as
    WIDTH=...pt) the width of the table's tabular set in the table's type size."""
    tabular = table[table.index(r"\begin{tabular}") : table.index(r"\end{tabular}") + 13]
    size = re.search(r"^\\(small|footnotesize)$", table, re.M)
    measure = ("\\" + size.group(1) if size else "") + tabular
    document = (
        "\\documentclass[twocolumn]{article}\n\\usepackage{booktabs}\n\\begin{document}\n"
        f"{table}\\setbox0\\hbox{{{measure}}}\\typeout{{WIDTH=\\the\\wd0}}\n"
        "\\typeout{LIMITS=\\the\\columnwidth,\\the\\textwidth}\n\\end{document}\n"
    )
    return _pdflatex(tmp_path, document)


def _pdflatex(folder: Path, document: str) -> subprocess.CompletedProcess:
    """pdflatex on `document`, written to folder/doc.tex."""
    (folder / "doc.tex").write_text(document)
    return subprocess.run(
        ["pdflatex", "-interaction=nonstopmode", "-halt-on-error", "doc.tex"],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=120,
    )


needs_pdflatex = pytest.mark.skipif(
    shutil.which("pdflatex") is None and not os.environ.get("BENCH_REQUIRE_PDFLATEX"),
    reason="pdflatex is not installed (CI installs it and sets BENCH_REQUIRE_PDFLATEX)",
)


def _check_fits(tmp_path: Path, latex: str) -> float:
    """Compile `latex`; no error, no overfull box; returns the measured tabular width (pt)."""
    result = _compile(tmp_path, latex)
    assert result.returncode == 0, result.stdout[-3000:]
    log = (tmp_path / "doc.log").read_text(errors="replace")
    assert "Overfull \\hbox" not in log, log[log.index("Overfull") :][:500]
    width = float(re.search(r"WIDTH=([\d.]+)pt", result.stdout).group(1))
    column, text = map(float, re.search(r"LIMITS=([\d.]+)pt,([\d.]+)pt", result.stdout).groups())
    assert (column, text) == (COLUMN_WIDTH_PT, TEXT_WIDTH_PT)
    estimated = float(re.search(r"estimated (\d+) pt wide", latex).group(1))
    assert width <= estimated + 0.5  # the estimate is conservative ...
    limit = column if "\\begin{table}" in latex else text
    assert width <= limit  # ... and what was chosen fits
    return width


@needs_pdflatex
def test_latex_compiles_with_pdflatex(study, tmp_path):
    text = STUDY.replace('"Cas-DM"', '"Cas_DM & 100% #1 {x} ~ ^"')
    path = tmp_path / "specials.toml"
    path.write_text(text)
    latex = render(build_table(make_results(), load_study(str(path))), "latex")
    result = _compile(tmp_path, latex)
    assert result.returncode == 0, result.stdout[-3000:]
    assert (tmp_path / "doc.pdf").stat().st_size > 0


COSTLY = (
    'cost = ["params_m", "train_hours", "sample_s_per_1k"]\nbaseline = { "metric.name" = "none" }'
)


@needs_pdflatex
@pytest.mark.parametrize(
    ("extra", "scores", "chosen"),
    [
        ("", None, ("long", "table*", "small")),
        ("", ("fid", "precision"), ("wide", "table*", "normalsize")),
        ("", ("fid",), ("wide", "table", "normalsize")),
        (COSTLY, ("fid", "is_mean"), ("long", "table*", "small")),
    ],
)
def test_auto_layout_fits_a_two_column_paper(tmp_path, extra, scores, chosen):
    path = tmp_path / "costly.toml"
    path.write_text(STUDY.replace("[labels]", f"{extra}\n\n[labels]"))
    table = build_table(make_results(), load_study(str(path)), scores=scores)
    fit = choose_fit(table)
    assert (fit.layout, fit.environment, fit.size) == chosen
    _check_fits(tmp_path, render(table, "latex"))


@needs_pdflatex
@pytest.mark.parametrize("layout", ["wide", "long"])
def test_a_forced_layout_compiles_and_its_width_estimate_is_conservative(study, tmp_path, layout):
    latex = render(build_table(make_results(), study, layout=layout), "latex")
    result = _compile(tmp_path, latex)
    assert result.returncode == 0, result.stdout[-3000:]
    width = float(re.search(r"WIDTH=([\d.]+)pt", result.stdout).group(1))
    estimated = float(re.search(r"estimated (\d+) pt wide", latex).group(1))
    assert 0.97 * estimated <= width <= estimated + 0.5  # the fonts' metrics: within kerning


@needs_pdflatex
def test_text_and_math_widths_are_what_pdflatex_sets(tmp_path):
    """bench.latex_width against the boxes pdflatex sets: never narrower, wider by kerning at
    most (measured: exact for numbers, 0.3 pt over for 'Architecture')."""
    texts = ["Architecture", "Real data (held-out)", "no metric loss", "Precision ↑", "8×8"]
    formulas = [("0.528 ± 0.048", False), ("0.528 ± 0.048", True), ("-0.52", False)]
    formulas += [("-0.52", True), ("1,234.5", True), ("12.5 ± -3.0", False)]
    boxes = [latex_escape(t) for t in texts]
    boxes += [rf"$\mathbf{{{f}}}$" if bold else f"${f}$" for f, bold in formulas]
    boxes = [b.replace("±", r"\pm") for b in boxes]
    measure = "".join(rf"\setbox0\hbox{{{b}}}\typeout{{WIDTH=\the\wd0}}" for b in boxes)
    document = f"\\documentclass{{article}}\n\\begin{{document}}\n{measure}\n\\end{{document}}\n"
    result = _pdflatex(tmp_path, document)
    assert result.returncode == 0, result.stdout[-3000:]
    measured = [float(w) for w in re.findall(r"WIDTH=([\d.]+)pt", result.stdout)]
    estimated = [text_width(t) for t in texts] + [math_width(f, bold) for f, bold in formulas]
    assert len(measured) == len(estimated)
    for box, got, want in zip(boxes, estimated, measured, strict=True):
        assert want - 0.01 <= got <= want + 0.5, box


def test_write_tables_writes_all_formats_atomically(study, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    paths = write_tables(make_results(), study)
    assert paths == [Path("results/golden/table.tex"), Path("results/golden/table.md"),
                     Path("results/golden/table.csv")]  # fmt: skip
    assert sorted(p.name for p in Path("results/golden").iterdir()) == [
        "table.csv",
        "table.md",
        "table.tex",
    ]  # fmt: skip (no temporary file left behind)
    assert write_tables(make_results(), study, tmp_path / "t.tex", ["latex"]) == [
        tmp_path / "t.tex"
    ]
    assert (tmp_path / "t.tex").read_text().startswith("% Generated by `bench table golden`")


def test_render_rejects_an_unknown_format(study):
    with pytest.raises(ValueError, match="unknown table format 'html'"):
        render(build_table(make_results(), study), "html")


# --- the CLI ------------------------------------------------------------------------------


def _storage(tmp_path: Path, study, scores=SCORES, keys=("scores", "reference_scores")) -> str:
    """An Optuna storage laid out as the runner leaves it (docs/DESIGN.md); `keys`:
    the user attrs holding the trial's and the real data's scores ("metrics",
    "reference_metrics" before scores were named apart from metric losses)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    created = optuna.create_study(study_name=study.name, storage=url, direction="minimize")
    created.set_user_attr("meta", META)
    created.set_user_attr("total_cells", study.size)
    created.set_user_attr(keys[1], REFERENCE)
    distributions = {
        "architecture.name": optuna.distributions.CategoricalDistribution(["ddpm", "cas-dm"]),
        "metric.name": optuna.distributions.CategoricalDistribution(["none", "lpips"]),
        "seed": optuna.distributions.CategoricalDistribution([0, 1, 2]),
    }
    for (arch, metric, seed), values in scores.items():
        params = {"architecture.name": arch, "metric.name": metric, "seed": seed}
        scores_dict = dict(zip(("fid", "is_mean", "kid", "precision"), values, strict=True))
        created.add_trial(
            optuna.trial.create_trial(
                params=params,
                distributions=distributions,
                value=scores_dict["fid"],
                user_attrs={keys[0]: scores_dict, "cell": study.cell_name(params)},
            )
        )
    return url


def test_cli_table_writes_the_tables_and_trials_and_prints_markdown(
    study, tmp_path, monkeypatch, capsys
):
    url = _storage(tmp_path, study)
    monkeypatch.chdir(tmp_path)
    assert main(["table", str(study.path), "--storage", url]) == 0
    captured = capsys.readouterr()
    assert captured.out == (GOLDEN / "table.md").read_text()
    assert captured.err == (
        "wrote results/golden/table.tex, results/golden/table.md, results/golden/table.csv, "
        "results/golden/trials.csv\n"  # every trial's values beside the table (no questions)
    )
    assert (tmp_path / "results/golden/table.tex").read_text() == (GOLDEN / "table.tex").read_text()
    assert (tmp_path / "results/golden/table.csv").read_text() == (GOLDEN / "table.csv").read_text()


def test_cli_table_one_format_to_a_file(study, tmp_path, capsys):
    url = _storage(tmp_path, study)
    out = tmp_path / "paper" / "ablation.tex"
    assert main(["table", str(study.path), "--storage", url, "--format", "latex",
                 "--out", str(out)]) == 0  # fmt: skip
    assert out.read_text() == (GOLDEN / "table.tex").read_text()
    assert capsys.readouterr().out.startswith("% Generated by `bench table golden`")


def test_cli_table_warns_when_the_latex_table_cannot_fit_and_still_writes_it(tmp_path, capsys):
    every_cost = '"params_m", "train_images_per_s", "train_hours", "device_hours", "nfe"'
    path = tmp_path / "costly.toml"
    path.write_text(STUDY.replace("[labels]", f"cost = [{every_cost}]\n\n[labels]"))
    study = load_study(str(path))
    url = _storage(tmp_path, study)
    out = tmp_path / "table.tex"
    args = ["table", str(path), "--storage", url, "--format", "latex", "--out", str(out)]
    assert main([*args, "--layout", "long"]) == 0
    err = capsys.readouterr().err
    assert "warning: the LaTeX table does not fit a two-column page" in err
    assert "--scores fid,sfid,is" in err and out.exists()
    width = float(re.search(r"estimated (\d+) pt wide", out.read_text()).group(1))
    assert width > TEXT_WIDTH_PT


def test_cli_table_of_a_study_without_complete_trials_says_to_run_it(study, tmp_path, capsys):
    url = _storage(tmp_path, study, scores={})
    assert main(["table", str(study.path), "--storage", url]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: study 'golden' has no complete trial in sqlite file ")
    assert f"run `bench run --study {study.path}` first" in err


def test_cli_table_of_a_bad_study_exits_2_with_the_message(tmp_path, capsys):
    path = tmp_path / "bad.toml"
    path.write_text(STUDY.replace('"cas-dm"]', '"cas-dn"]'))
    assert main(["table", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {path}: grid.architecture.name: unknown architecture 'cas-dn'")
    assert not (tmp_path / "results").exists()


def test_cli_table_rejects_a_traversing_name(capsys, monkeypatch):
    monkeypatch.chdir(REPO)
    assert main(["table", "../../x"]) == 2
    assert "'../../x' is neither a study name" in capsys.readouterr().err


def test_cli_list_shows_every_shipped_study(monkeypatch, capsys):
    monkeypatch.chdir(REPO)
    monkeypatch.setenv("COLUMNS", "200")
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for name, size in (("quickstart", "9 cells"), ("lpips_weight", "36 cells"),
                       ("metric_loss", "27 cells")):  # fmt: skip
        assert name in out and size in out
    assert "ddpm, x0-ddpm, cas-dm" in out and "cifar10 32px" in out and "digits 8px" in out


def test_cli_list_marks_a_broken_study_without_hiding_the_others(tmp_path, monkeypatch, capsys):
    (tmp_path / "studies").mkdir()
    (tmp_path / "studies" / "good.toml").write_text(STUDY)
    (tmp_path / "studies" / "broken.toml").write_text("description = \n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("COLUMNS", "300")
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "invalid: studies/broken.toml: TOML syntax error" in out
    assert "12 cells" in out


def test_cli_list_outside_a_checkout_says_where_it_looked(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["list"]) == 2
    err = capsys.readouterr().err
    assert f"no study folder studies/ ({tmp_path / 'studies'})" in err and "--dir PATH" in err
    (tmp_path / "empty").mkdir()
    assert main(["list", "--dir", str(tmp_path / "empty")]) == 0
    assert "holds no *.toml file; pass --dir PATH" in capsys.readouterr().out
    monkeypatch.setenv("COLUMNS", "300")
    assert main(["list", "--dir", str(REPO / "studies")]) == 0
    out = capsys.readouterr().out
    assert "quickstart" in out and "9 cells" in out


# --- significance, bootstrap and costs ----------------------------------------------------

EFFECTS = """\
description = "metric loss none / lpips / l2 at one architecture, 3 seeds"
objective = { metric = "fid" }

[base.data]
dataset = "digits"
resolution = 16

[base.model]
channel_mults = [1, 2]
attention_resolutions = []

[grid]
"metric.name" = ["none", "lpips", "l2"]
seed = [0, 1, 2]

[table]
rows = ["metric.name"]
metrics = ["fid", "is_mean"]
baseline = { "metric.name" = "none" }
"""

# Known truth: LPIPS lowers FID by 3 (a real effect, seed noise shared with the baseline), L2
# changes nothing (its differences are pure noise); IS is unaffected by either.
BASE_FID, BASE_IS = (10.0, 10.6, 9.5), (2.0, 2.3, 2.1)
EFFECT_SCORES = {
    ("none", s): (BASE_FID[s], BASE_IS[s]) for s in range(3)
} | {
    ("lpips", s): (BASE_FID[s] - 3 + (0.1, -0.05, 0.02)[s], BASE_IS[s] + (0.1, -0.1, 0.05)[s])
    for s in range(3)
} | {
    ("l2", s): (BASE_FID[s] + (0.3, -0.4, 0.2)[s], BASE_IS[s] + (-0.1, 0.05, 0.1)[s])
    for s in range(3)
}  # fmt: skip


def _effects_results(scores=EFFECT_SCORES, extra=None) -> Results:
    rows = [
        {"trial": i, "metric.name": m, "seed": s, "fid": v[0], "is_mean": v[1], **(extra or {})}
        for i, ((m, s), v) in enumerate(scores.items())
    ]
    return Results(pd.DataFrame(rows), None, META, len(rows), Counter(COMPLETE=len(rows)),
                   pd.DataFrame(rows))  # fmt: skip


def test_known_effects_get_scipy_p_values_and_markers_only_from_the_declared_family(tmp_path):
    path = tmp_path / "effects.toml"
    path.write_text(EFFECTS)
    table = build_table(_effects_results(), load_study(str(path)))
    assert [label for label, _ in table.rows] == ["none", "lpips", "l2"]
    assert all(table.cells[0, 0, m].baseline for m in ("fid", "is_mean"))
    # Independently: paired t-tests by seed against "none" on every score ...
    raw = {}
    for r, name in ((1, "lpips"), (2, "l2")):
        for k, metric in enumerate(("fid", "is_mean")):
            a = [EFFECT_SCORES[name, s][k] for s in range(3)]
            b = [EFFECT_SCORES["none", s][k] for s in range(3)]
            raw[r, metric] = stats.ttest_rel(a, b).pvalue
            cell = table.cells[r, 0, metric]
            assert cell.comparison.test == "paired t"
            assert cell.comparison.p_value == pytest.approx(raw[r, metric])
            d = np.subtract(a, b)
            assert cell.comparison.difference == pytest.approx(d.mean())
            assert cell.comparison.effect_size == pytest.approx(d.mean() / d.std(ddof=1))
    # ... but Holm and the markers over the declared family only: the 2 contrasts on FID, the
    # objective (no [questions]: every cell against the [table] baseline). IS is exploratory.
    fid = [raw[1, "fid"], raw[2, "fid"]]
    adjusted = [min(1.0, max(2 * min(fid), p if p == max(fid) else 2 * p)) for p in fid]
    assert table.cells[1, 0, "fid"].p_holm == pytest.approx(adjusted[0])
    assert table.cells[2, 0, "fid"].p_holm == pytest.approx(adjusted[1])
    assert table.cells[1, 0, "fid"].marker == "⁺"  # the real effect
    assert table.cells[2, 0, "fid"].marker == ""
    for r in (1, 2):
        assert table.cells[r, 0, "is_mean"].marker == ""
        assert table.cells[r, 0, "is_mean"].p_holm is None
    markdown = render(table, "markdown")
    assert "7.06 ± " in markdown and "⁺" in markdown
    assert "decided over the study's 2 declared contrasts on FID as one family" in markdown
    frame = pd.read_csv(io.StringIO(render(table, "csv")))
    lpips = frame[(frame["metric.name"] == "lpips") & (frame["score"] == "fid")].iloc[0]
    assert lpips["significant"] == "better" and lpips["test"] == "paired t"
    assert lpips["p_value"] == pytest.approx(raw[1, "fid"])
    assert bool(frame[frame["metric.name"] == "none"]["baseline"].all())


def test_unshared_seeds_use_welch():
    from bench.analysis import compare

    cell, baseline = {0: 7.0, 1: 7.5, 3: 7.2}, {0: 10.0, 1: 11.0, 2: 10.5}
    result = compare(cell, baseline)
    expected = stats.ttest_ind(list(cell.values()), list(baseline.values()), equal_var=False)
    assert result.test == "Welch t" and result.p_value == pytest.approx(expected.pvalue)


def test_holm_matches_a_worked_example():
    from bench.analysis import holm

    # p = (0.01, 0.04, 0.03): sorted 0.01, 0.03, 0.04 -> 3 x 0.01, 2 x 0.03, max(0.06, 1 x 0.04)
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])


def test_single_seed_cells_show_the_bootstrap_interval(tmp_path):
    path = tmp_path / "one.toml"
    path.write_text(EFFECTS.replace("seed = [0, 1, 2]", "seed = [0]"))
    scores = {k: v for k, v in EFFECT_SCORES.items() if k[1] == 0}
    extra = {"bootstrap.fid.se": 0.5, "bootstrap.is_mean.se": 0.02, "bootstrap.resamples": 100}
    table = build_table(_effects_results(scores, extra), load_study(str(path)))
    cell = table.cells[1, 0, "fid"]
    assert cell.uncertainty == "bootstrap95" and cell.bootstrap_se == 0.5
    assert cell.half_width == pytest.approx(stats.norm.ppf(0.975) * 0.5)
    assert "7.10 ± 0.98" in render(table, "markdown")
    assert (
        "1.96 bootstrap standard errors over the generated samples (100 resamples, so the ± "
        "is itself uncertain by about ±7%)"
    ) in table.caption
    assert "no test is possible with fewer than 2 seeds" in table.caption
    frame = pd.read_csv(io.StringIO(render(table, "csv")))
    assert set(frame["uncertainty"]) == {"bootstrap95"}


def test_costs_are_columns_when_asked_and_always_in_the_csv(tmp_path):
    path = tmp_path / "costs.toml"
    path.write_text(EFFECTS.replace("baseline =", 'cost = ["params_m", "nfe"]\nbaseline ='))
    extra = {"cost.params_m": 1.234, "cost.nfe": 10.0, "cost.train_hours": 0.5}
    table = build_table(_effects_results(extra=extra), load_study(str(path)))
    markdown = render(table, "markdown")
    assert "| Params (M) | NFE |" in markdown and "| 1.23 | 10 |" in markdown
    frame = pd.read_csv(io.StringIO(render(table, "csv")))
    assert frame["cost.train_hours"].eq(0.5).all() and frame["cost.device_hours"].isna().all()


def test_protocol_labels_and_random_markers_reach_the_csv(study):
    meta = {**META, "protocols": {"is_mean": "ADM: chunks of 5,000"}, "random_weights": True}
    table = build_table(make_results(meta=meta), study)
    assert "Protocols: IS: ADM: chunks of 5,000." in table.caption
    frame = pd.read_csv(io.StringIO(render(table, "csv")), keep_default_na=False)
    assert set(frame[frame["score"] == "is_mean"]["protocol"]) == {"ADM: chunks of 5,000"}
    assert set(frame[frame["score"] == "fid"]["protocol"]) == {""}
    assert set(frame["random_weights"]) == {True}


def test_a_random_trunk_is_a_caveat_of_its_cells_in_the_csv(study, tmp_path):
    path = tmp_path / "random.toml"
    path.write_text(STUDY.replace("[grid]", '[base.metric]\ntrunk = "random"\n\n[grid]'))
    frame = pd.read_csv(io.StringIO(render(build_table(make_results(), load_study(str(path))),
                                           "csv")))  # fmt: skip
    models = frame[~frame["reference"]]
    caveat = "LPIPS used a random (untrained) trunk: a smoke test, not a result."
    lpips = models["metric.name"] == "lpips"
    assert (models.loc[lpips, "caveats"] == caveat).all()
    assert models.loc[~lpips, "caveats"].isna().all()


def test_results_stored_under_the_old_attr_names_load_the_same(study, tmp_path):
    from bench.results import load_results

    (tmp_path / "new").mkdir()
    (tmp_path / "old").mkdir()
    new = load_results(study, _storage(tmp_path / "new", study))
    old = load_results(
        study, _storage(tmp_path / "old", study, keys=("metrics", "reference_metrics"))
    )
    assert old.reference == new.reference == REFERENCE
    pd.testing.assert_frame_equal(old.frame, new.frame)
    assert render(build_table(old, study), "csv") == render(build_table(new, study), "csv")


def test_cli_table_layout_and_scores(study, tmp_path, capsys):
    url = _storage(tmp_path, study)
    assert (
        main(
            [
                "table",
                str(study.path),
                "--storage",
                url,
                "--format",
                "markdown",
                "--out",
                str(tmp_path / "t.md"),
                "--layout",
                "wide",
                "--scores",
                "FID,is",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out  # fmt: skip
    assert (
        "| Architecture | no metric: FID ↓ | no metric: IS ↑ | LPIPS: FID ↓ | LPIPS: IS ↑ |" in out
    )
    assert "Real data (held-out): FID 0.52, IS 9.87." in out  # once per score, in the caption
    assert main(["table", str(study.path), "--storage", url, "--scores", "fid,bogus"]) == 2
    assert "--scores: unknown score 'bogus'" in capsys.readouterr().err
    # --metrics, the old name, still works (hidden from --help), but not with --scores.
    md = ["table", str(study.path), "--storage", url, "--format", "markdown", "--out"]
    assert main([*md, str(tmp_path / "old.md"), "--layout", "wide", "--metrics", "FID,is"]) == 0
    assert (tmp_path / "old.md").read_text() == (tmp_path / "t.md").read_text()
    capsys.readouterr()
    assert main([*md, str(tmp_path / "x.md"), "--metrics", "fid", "--scores", "fid"]) == 2
    assert "--metrics is the old name of --scores" in capsys.readouterr().err


def test_old_trials_without_costs_load_and_render_blank(study, tmp_path):
    from bench.results import load_results

    results = load_results(study, _storage(tmp_path, study))  # no "cost" attrs stored
    assert results.frame["cost.params_m"].isna().all()
    frame = pd.read_csv(io.StringIO(render(build_table(results, study), "csv")))
    assert frame["cost.nfe"].isna().all() and len(frame) == 4 * 4 + 4


def test_cli_show_is_readable_at_80_columns(study, tmp_path, monkeypatch, capsys):
    url = _storage(tmp_path, study)
    monkeypatch.setenv("COLUMNS", "80")
    assert main(["show", str(study.path), "--storage", url]) == 0
    out = capsys.readouterr().out
    assert max(len(line) for line in out.splitlines()) <= 80
    for value in ("11", "9.5", "0.0035", "2.4"):  # whole numbers, never cut to "1…"
        assert f" {value} " in out
    assert "…" not in out
    assert "not shown at 80 columns" in out
