"""Declared questions ([questions]), the findings generated from them, the per-trial export,
and `bench plan`: against scipy and statsmodels on fixed data with known effects."""

import io
import re
from collections import Counter
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import pytest
from scipy import stats
from statsmodels.stats.multitest import multipletests

from bench.cli import main
from bench.errors import BenchError
from bench.findings import TOO_FEW, build_findings, contrast_pairs, render_markdown
from bench.per_trial import trials_csv
from bench.results import Results
from bench.study import load_study
from bench.tables import BETTER, WORSE, build_table

STUDY = """\
description = "one architecture x three metric losses x six seeds"
objective = { score = "fid" }

[base.data]
dataset = "digits"
resolution = 16

[base.model]
channel_mults = [1, 2]
attention_resolutions = []

[base.sample]
num_samples = 500

[grid]
"architecture.name" = ["ddpm", "cas-dm"]
"metric.name" = ["none", "l2", "lpips"]
seed = [0, 1, 2, 3, 4, 5]

[table]
rows = ["architecture.name"]
columns = ["metric.name"]
scores = ["fid", "is_mean"]
baseline = { "metric.name" = "none" }
"""

META = {
    "dataset": "digits", "resolution": 16, "evaluator": "classifier:digits", "num_samples": 500,
    "sampler": "ddim", "steps": 20, "eta": 0.0, "random_weights": False, "caveats": [],
}  # fmt: skip
SEEDS = range(6)
NOISE = np.random.default_rng(7).normal(size=(2, 3, 6, 2))  # per cell, seed: fid, is noise
# Known truth on FID, the primary score: LPIPS lowers it by 3 for both architectures (a large
# effect), L2 raises it by 3 for DDPM, and changes nothing for Cas-DM (pure noise). IS: no
# effect anywhere. Seed effects are shared by all cells (paired noise).
EFFECT = {("ddpm", "l2"): 3.0, ("ddpm", "lpips"): -3.0, ("cas-dm", "lpips"): -3.0}
SEED_EFFECT = np.array([0.0, 1.5, -1.0, 0.5, 2.0, -0.7])


def _rows():
    rows = []
    for a, arch in enumerate(("ddpm", "cas-dm")):
        for m, metric in enumerate(("none", "l2", "lpips")):
            for s in SEEDS:
                fid = 10 + SEED_EFFECT[s] + EFFECT.get((arch, metric), 0.0)
                rows.append(
                    {
                        "trial": len(rows), "cell": f"{arch} {metric} seed={s}",
                        "architecture.name": arch, "metric.name": metric, "seed": s,
                        "fid": fid + 0.3 * NOISE[a, m, s, 0],
                        "is_mean": 5 + 0.2 * NOISE[a, m, s, 1],
                        "bootstrap.fid.se": 0.4, "bootstrap.is_mean.se": 0.05,
                        "bootstrap.resamples": 100.0,
                    }
                )  # fmt: skip
    return rows


def _results(rows=None) -> Results:
    rows = _rows() if rows is None else rows
    frame = pd.DataFrame(rows)
    return Results(frame, None, META, 36, Counter(COMPLETE=len(rows)), frame)


@pytest.fixture
def study(tmp_path):
    path = tmp_path / "effects.toml"
    path.write_text(STUDY)
    return load_study(str(path))


def _declared(tmp_path, questions: str):
    path = tmp_path / "declared.toml"
    path.write_text(STUDY + "\n[questions]\n" + questions)
    return load_study(str(path))


# --- declared questions ----------------------------------------------------------------------


def test_without_a_questions_section_the_family_is_every_cell_against_its_table_baseline(study):
    questions = study.questions
    assert (questions.score, questions.alpha, questions.min_effect) == ("fid", 0.05, {})
    pairs = contrast_pairs(study)
    assert [(c["architecture.name"], c["metric.name"], b["metric.name"]) for c, b in pairs] == [
        ("ddpm", "l2", "none"), ("ddpm", "lpips", "none"),
        ("cas-dm", "l2", "none"), ("cas-dm", "lpips", "none"),
    ]  # fmt: skip


def test_declared_contrasts_and_min_effect(tmp_path):
    study = _declared(
        tmp_path,
        'score = "fid"\nalpha = 0.1\nmin_effect = { fid = 1.0 }\n'
        'contrasts = [{ of = { "architecture.name" = "cas-dm" }, '
        'against = { "architecture.name" = "ddpm" } }]\n',
    )
    assert study.questions.alpha == 0.1 and study.questions.min_effect == {"fid": 1.0}
    pairs = [(c["metric.name"], c["architecture.name"], b["architecture.name"])
             for c, b in contrast_pairs(study)]  # fmt: skip
    assert pairs == [
        ("none", "cas-dm", "ddpm"),
        ("l2", "cas-dm", "ddpm"),
        ("lpips", "cas-dm", "ddpm"),
    ]


@pytest.mark.parametrize(
    ("questions", "message"),
    [
        ('score = "fidd"', "questions.score"),
        ("alpha = 1.5", "questions.alpha: got 1.5; expected a number in (0, 1)"),
        ("min_effect = { fid = -1 }", "questions.min_effect.fid: got -1; expected a positive"),
        ("contrasts = []", "questions.contrasts: got []; expected a non-empty list"),
        (
            'contrasts = [{ against = { "data.dataset" = "digits" } }]',
            "questions.contrasts[0].against.data.dataset: not a grid axis",
        ),
        (
            'contrasts = [{ against = { "metric.name" = "ssim" } }]',
            "'ssim' is not a value of the axis; values: none, l2, lpips",
        ),
        ("power = 0.8", "questions.power: unknown key; allowed: score, alpha, min_effect"),
    ],
)
def test_bad_questions_are_refused_naming_the_key(tmp_path, questions, message):
    with pytest.raises(BenchError, match=re.escape(message)):
        _declared(tmp_path, questions + "\n")


# --- findings ------------------------------------------------------------------------------


def test_findings_test_the_declared_family_as_scipy_and_statsmodels_do(tmp_path):
    study = _declared(tmp_path, "min_effect = { fid = 1.0 }\n")
    findings = build_findings(_results(), study)
    rows = pd.DataFrame(_rows())

    def values(arch, metric, score="fid"):
        cell = rows[(rows["architecture.name"] == arch) & (rows["metric.name"] == metric)]
        return cell.sort_values("seed")[score].to_numpy()

    expected_p = [
        stats.ttest_rel(values(c["architecture.name"], c["metric.name"]),
                        values(c["architecture.name"], "none")).pvalue
        for c, _ in contrast_pairs(study)
    ]  # fmt: skip
    holm = multipletests(expected_p, method="holm")[1]
    assert [f.estimate.p_t for f in findings.primary] == pytest.approx(expected_p, rel=1e-12)
    assert [f.p_holm for f in findings.primary] == pytest.approx(holm, rel=1e-12)
    # The known truth: DDPM+L2 worse, both LPIPS better; Cas-DM+L2 (pure noise, SD 0.42 per
    # pair) lies within the smallest effect that matters, or is undecided.
    decisions = {f.label: f.decision for f in findings.primary}
    assert decisions["ddpm, l2 vs none"] == "worse"
    assert decisions["ddpm, lpips vs none"] == "better"
    assert decisions["cas-dm, lpips vs none"] == "better"
    assert decisions["cas-dm, l2 vs none"] in ("no meaningful difference", "undecided")
    # IS is exploratory: estimated, never decided.
    assert {f.score for f in findings.exploratory} == {"is_mean"}
    assert all(f.decision == "" and f.p_holm is None for f in findings.exploratory)

    text = render_markdown(findings)
    for finding in findings.primary:  # every declared contrast, none left out
        assert finding.label in text and f"**{finding.decision}**" in text
    assert "family-wise α = 0.05" in text and "Smallest effect that matters: 1" in text
    assert "| Contrast | n | Δ FID [95% CI] |" in text  # the primary score, not the last one
    between = np.median(
        [values(a, m).std(ddof=1) for a in ("ddpm", "cas-dm") for m in ("none", "l2", "lpips")]
    )
    assert findings.variance["fid"] == pytest.approx((between, 0.4), rel=1e-12)
    assert f"FID {between:.3g} vs 0.4 ({between / 0.4:.1f}x)" in text
    # 2 / 2^6 = 0.031 > the first Holm level 0.05 / 4: said, not hidden.
    assert "exact sign-flip test cannot go below p = 0.031" in text


def test_table_markers_are_the_findings_decisions_and_only_on_the_primary_score(study):
    results = _results()
    table = build_table(results, study)
    findings = build_findings(results, study)
    marker = {"better": BETTER, "worse": WORSE}
    for (r, g, score), cell in table.cells.items():
        if score != "fid" or cell.baseline or cell.comparison is None:
            assert cell.marker == "" and cell.p_holm is None, (r, g, score)
    by_label = {f.label: f for f in findings.primary}
    ddpm_l2 = table.cells[0, 1, "fid"]  # row ddpm, column l2
    assert ddpm_l2.marker == marker[by_label["ddpm, l2 vs none"].decision]
    assert ddpm_l2.p_holm == by_label["ddpm, l2 vs none"].p_holm
    assert "4 declared contrasts on FID as one family" in table.caption


def test_a_contrast_without_two_paired_seeds_is_said_to_have_too_few(study):
    rows = [r for r in _rows() if not (r["architecture.name"] == "ddpm" and r["seed"] > 0)]
    findings = build_findings(_results(rows), study)
    decisions = [f.decision for f in findings.primary]
    assert decisions == [TOO_FEW, TOO_FEW, *decisions[2:]] and TOO_FEW not in decisions[2:]


# --- per-trial values ------------------------------------------------------------------------


def test_trials_csv_holds_every_trial_and_recomputes_the_table_exactly(study):
    results = _results()
    frame = pd.read_csv(io.StringIO(trials_csv(results, study)))
    assert list(frame.columns[:5]) == ["trial", "cell", "architecture.name", "metric.name", "seed"]
    assert {"fid", "fid_se", "is_mean", "is_mean_se", "bootstrap_resamples"} <= set(frame.columns)
    assert len(frame) == 36 and frame["fid_se"].eq(0.4).all()
    table = build_table(results, study)
    for r, (_, row) in enumerate(table.rows):
        for g, (_, group) in enumerate(table.groups):
            cell = frame[
                (frame["architecture.name"] == row["architecture.name"])
                & (frame["metric.name"] == group["metric.name"])
            ]
            assert table.cells[r, g, "fid"].mean == np.mean(cell["fid"].to_numpy())


# --- commands --------------------------------------------------------------------------------


def _storage(tmp_path, study) -> str:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    created = optuna.create_study(study_name=study.name, storage=url, direction="minimize")
    created.set_user_attr("meta", META)
    created.set_user_attr("total_cells", study.size)
    distributions = {
        key: optuna.distributions.CategoricalDistribution(values)
        for key, values in study.grid.items()
    }
    for row in _rows():
        params = {key: row[key] for key in study.grid}
        created.add_trial(
            optuna.trial.create_trial(
                params=params,
                distributions=distributions,
                value=row["fid"],
                user_attrs={
                    "scores": {"fid": row["fid"], "is_mean": row["is_mean"]},
                    "bootstrap": {"bootstrap.fid.se": 0.4, "bootstrap.resamples": 100},
                    "cell": study.cell_name(params),
                },
            )
        )
    return url


def test_bench_table_writes_findings_and_trials_beside_the_table(tmp_path, capsys):
    study = _declared(tmp_path, "min_effect = { fid = 1.0 }\n")
    url = _storage(tmp_path, study)
    out = tmp_path / "out"
    assert main(["table", str(study.path), "--storage", url, "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == [
        "findings.md", "table.csv", "table.md", "table.tex", "trials.csv"
    ]  # fmt: skip
    capsys.readouterr()
    assert main(["table", str(study.path), "--storage", url, "--out", str(out), "--findings"]) == 0
    printed = capsys.readouterr().out
    assert printed == (out / "findings.md").read_text()
    assert printed.startswith("## Findings: declared") and "| Contrast |" in printed


def test_bench_plan_sizes_each_declared_contrast_in_one_screen(tmp_path, capsys, monkeypatch):
    from statsmodels.stats.power import TTestPower

    study = _declared(tmp_path, "min_effect = { fid = 1.0 }\n")
    url = _storage(tmp_path, study)
    monkeypatch.setenv("COLUMNS", "80")
    assert main(["plan", str(study.path), "--storage", url]) == 0
    out = capsys.readouterr().out
    assert len(out.splitlines()) <= 24  # one screen of an 80-column terminal
    assert max(len(line) for line in out.splitlines()) <= 80
    assert "4 declared contrasts on FID" in out and "α/4 = 0.0125" in out
    # Cas-DM + L2: SD of the paired differences from its 6 seeds; the seeds TTestPower asks for.
    findings = build_findings(_results(), study)
    (noise,) = [f for f in findings.primary if f.label == "cas-dm, l2 vs none"]
    solved = TTestPower().solve_power(
        effect_size=1.0 / noise.estimate.sd, alpha=0.0125, power=0.8, alternative="two-sided"
    )
    assert str(int(np.ceil(solved))) in out


def test_bench_plan_without_questions_or_seeds_exits_2(tmp_path, capsys):
    path = tmp_path / "plain.toml"
    path.write_text(STUDY.replace('baseline = { "metric.name" = "none" }\n', ""))
    study = load_study(str(path))
    url = _storage(tmp_path, study)
    assert main(["plan", str(path), "--storage", url]) == 2
    assert "declares no question" in capsys.readouterr().err


def test_the_readme_quotes_the_shipped_digits_findings_verbatim():
    """The README's digits section is the generated findings.md, not a selection from it."""
    repo = Path(__file__).resolve().parents[1]
    readme = (repo / "README.md").read_text()
    quoted = readme.split("<!-- findings:digits_ablation -->\n")[1].split("\n<!-- /findings -->")[0]
    shipped = (repo / "results/examples/digits_ablation/findings.md").read_text()
    primary = shipped[: shipped.index("Exploratory estimates")].rstrip()
    assert quoted == primary.split("\n", 1)[1].strip()
    # ... and findings.md is what bench.findings makes of the shipped per-trial values.
    frame = pd.read_csv(repo / "results/examples/digits_ablation/trials.csv")
    study = load_study(str(repo / "studies/digits_ablation.toml"))
    rows = []
    for _, row in frame.iterrows():
        record = {k: row[k] for k in ("trial", "cell", *study.grid)}
        for score in study.table.scores:
            record[score] = row[score]
            record[f"bootstrap.{score}.se"] = row[f"{score}_se"]
        rows.append(record)
    meta = {"evaluator": "classifier:digits"}
    results = Results(pd.DataFrame(rows), None, meta, len(rows), Counter(), pd.DataFrame(rows))
    assert render_markdown(build_findings(results, study)) == shipped


def test_the_estimation_figure_shows_every_declared_contrast_with_its_decision(tmp_path):
    from bench.plots import contrasts_figure

    study = _declared(tmp_path, "min_effect = { fid = 1.0 }\n")
    findings = build_findings(_results(), study)
    figure = contrasts_figure(findings)
    (ax,) = figure.axes
    labels = [t.get_text() for t in ax.get_yticklabels()]
    assert labels == [f.label for f in reversed(findings.primary)]
    assert [t.get_text() for t in ax.texts] == [f.decision for f in reversed(findings.primary)]
    assert "shaded: |Δ| < 1" in ax.get_xlabel()
    # each contrast: its CI as an error bar, every seed's difference as a dot
    dots = [c for c in ax.collections if len(c.get_offsets()) == 6]
    assert len(dots) == len(findings.primary)


def test_the_components_caveats_travel_with_the_findings(study):
    """A random LPIPS trunk's caveat is on the findings as on the table: a pasted findings
    section keeps it."""
    caveat = "LPIPS used a random (untrained) trunk: a smoke test, not a result."
    frame = pd.DataFrame(_rows())
    meta = {**META, "caveats": [caveat], "evaluator": "classifier:digits"}
    results = Results(frame, None, meta, 36, Counter(COMPLETE=36), frame)
    findings = build_findings(results, study)
    assert findings.caveats == (caveat,)
    assert f"**Caveats:** {caveat}" in render_markdown(findings)
    assert caveat in build_table(results, study).caption
    assert build_table(results, study).findings == findings
