"""Figures from a synthetic results set: files, pixels, axes, legends, markers, Pareto front."""

import math
from collections import Counter

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from bench.plots import (
    COLUMN_IN,
    PALETTE,
    TEXT_IN,
    build_figures,
    colours,
    pareto_front,
    write_figures,
)
from bench.results import Results
from bench.study import load_study

STUDY = """\
description = "2 architectures x LPIPS weight, 3 seeds"
objective = { metric = "fid" }

[base.data]
dataset = "digits"
resolution = 8

[base.model]
channel_mults = [1, 2]
attention_resolutions = []

[base.metric]
name = "lpips"

[grid]
"architecture.name" = ["ddpm", "cas-dm"]
"metric.weight" = [0.0, 0.5, 1.0]
seed = [0, 1, 2]

[table]
rows = ["architecture.name"]
columns = ["metric.weight"]
metrics = ["fid", "precision"]
baseline = { "metric.weight" = 0.0 }

[labels]
"architecture.name" = { "ddpm" = "DDPM (eps)", "cas-dm" = "Cas-DM" }
"""

ARCHS = ("ddpm", "cas-dm")
WEIGHTS = (0.0, 0.5, 1.0)
SEEDS = (0, 1, 2)


def fid(arch: str, weight: float, seed: int) -> float:
    # Cas-DM improves with the weight by the same amount on every seed, up to a small seed
    # effect: its weight-1 cell is far better than its baseline (paired t); DDPM stays flat.
    base = 20.0 if arch == "ddpm" else 15.0
    slope = 0.0 if arch == "ddpm" else -6.0
    return base + slope * weight + [0.0, 0.3, -0.2][seed] + (0.05 * seed * weight)


@pytest.fixture
def study(tmp_path):
    path = tmp_path / "sweep.toml"
    path.write_text(STUDY)
    return load_study(str(path))


def make_results(tmp_path, with_samples=True) -> Results:
    rows = []
    rng = np.random.default_rng(0)
    for i, (a, w, s) in enumerate((a, w, s) for a in ARCHS for w in WEIGHTS for s in SEEDS):
        workdir = tmp_path / "trials" / f"t{i}"
        if with_samples:
            workdir.mkdir(parents=True)
            images = rng.integers(0, 256, size=(20, 8, 8, 1), dtype=np.uint8)
            np.savez(workdir / "samples.npz", arr_0=images)
        rows.append(
            {
                "trial": i,
                "cell": f"{a} lpips={w} seed={s}",
                "architecture.name": a,
                "metric.weight": w,
                "seed": s,
                "fid": fid(a, w, s),
                "precision": 0.5 + 0.1 * w + 0.01 * s,
                "cost.device_hours": (1.0 if a == "ddpm" else 2.0) + 0.1 * w,
                "cost.train_images_per_s": (200.0 if a == "ddpm" else 120.0) - 10 * w,
                "workdir": str(workdir),
                "mlflow_run_id": f"run{i}",
            }
        )
    frame = pd.DataFrame(rows)
    return Results(
        frame=frame,
        reference={"fid": 1.0},
        meta={},
        total=len(rows),
        states=Counter({"COMPLETE": len(rows)}),
        trials=frame,
    )


def histories(results: Results) -> dict[int, dict[str, list[tuple[int, float]]]]:
    out = {}
    for _, row in results.frame.iterrows():
        scale = 1.0 + 0.1 * row["seed"]
        out[int(row["trial"])] = {
            "train/loss": [(step, scale / step) for step in (10, 20, 30)],
            "train/eps_mse": [(step, 0.5 * scale / step) for step in (10, 20, 30)],
            "train/lr": [(step, 1e-3) for step in (10, 20, 30)],
        }
    return out


@pytest.fixture
def figures(tmp_path, study):
    results = make_results(tmp_path)
    return build_figures(results, study, histories(results))


def legend_texts(ax) -> list[str]:
    legend = ax.get_legend()
    return [t.get_text() for t in legend.get_texts()] if legend else []


def test_every_kind_of_figure_is_built(figures):
    assert set(figures) == {
        "sweep-metric.weight-fid",
        "sweep-metric.weight-precision",
        "bars-fid",
        "bars-precision",
        "curves",
        "samples",
        "cost-device_hours-fid",
        "cost-train_images_per_s-fid",
        "contrasts-fid",  # the declared family's estimation figure (the [table] baseline's)
    }


def test_widths_are_one_or_two_paper_columns(figures):
    for stem, figure in figures.items():
        width = figure.get_figwidth()
        assert width in (COLUMN_IN, TEXT_IN), stem


def test_sweep_has_a_line_per_architecture_at_the_table_means(figures):
    ax = figures["sweep-metric.weight-fid"].axes[0]
    assert legend_texts(ax) == ["DDPM (eps)", "Cas-DM"]
    assert ax.get_xlabel() == "Weight" and ax.get_ylabel().startswith("FID")
    lines = {line.get_label(): line for line in ax.get_lines()}
    cas = lines["Cas-DM"]
    assert list(cas.get_xdata()) == list(WEIGHTS)
    expected = [np.mean([fid("cas-dm", w, s) for s in SEEDS]) for w in WEIGHTS]
    assert cas.get_ydata() == pytest.approx(expected)
    # The same colour for an architecture in every figure, from the colour-blind-safe palette.
    assert cas.get_color() == colours_for("cas-dm")
    assert lines["DDPM (eps)"].get_color() == colours_for("ddpm")


def colours_for(name: str) -> str:
    from casdm.components import registry

    return PALETTE[registry("architecture").names().index(name)]


def test_sweep_band_is_the_student_t_interval(figures):
    from scipy import stats

    ax = figures["sweep-metric.weight-fid"].axes[0]
    band = ax.collections[1]  # Cas-DM's fill_between, drawn second
    values = [fid("cas-dm", 1.0, s) for s in SEEDS]
    half = stats.t.ppf(0.975, 2) * np.std(values, ddof=1) / math.sqrt(3)
    vertices = band.get_paths()[0].vertices
    at_one = vertices[vertices[:, 0] == 1.0, 1]
    mean = np.mean(values)
    assert sorted(set(np.round(at_one, 9))) == pytest.approx([mean - half, mean + half])


def test_bars_mark_significance_and_hatch_the_baseline(figures):
    ax = figures["bars-fid"].axes[0]
    (legend,) = figures["bars-fid"].legends
    assert [t.get_text() for t in legend.get_texts()] == ["DDPM (eps)", "Cas-DM"]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["weight=0", "weight=0.5", "weight=1"]
    hatched = [p for p in ax.patches if p.get_hatch()]
    assert len(hatched) == 2  # the two weight-0 baselines
    markers = [t.get_text() for t in ax.texts]
    # Cas-DM at 0.5 and 1 are better than its baseline on every seed by 3 and 6 FID.
    # The table's markers, the findings' decisions over the 4 declared contrasts on FID.
    assert markers.count("⁺") == 2 and "⁻" not in markers


def test_curves_average_seeds_and_leave_out_non_loss_records(figures):
    figure = figures["curves"]
    titles = [ax.get_title() for ax in figure.axes if ax.get_visible()]
    assert titles == ["loss", "eps_mse"]
    loss = figure.axes[0]
    assert len(loss.get_lines()) == 6  # one per cell (2 architectures x 3 weights)
    mean_scale = np.mean([1.0 + 0.1 * s for s in SEEDS])
    assert loss.get_lines()[0].get_ydata() == pytest.approx([mean_scale / s for s in (10, 20, 30)])


def test_samples_have_a_labelled_panel_per_cell(figures):
    figure = figures["samples"]
    titles = sorted(ax.get_title() for ax in figure.axes if ax.images)
    assert titles == sorted(f"{a}, weight={w:g}" for a in ("DDPM (eps)", "Cas-DM") for w in WEIGHTS)
    image = figure.axes[0].images[0]
    assert image.get_interpolation() == "nearest"
    assert image.get_array().shape == (4 * 9 - 1, 4 * 9 - 1)  # 16 images of 8x8, 1 px gutters


def test_cost_figure_marks_the_pareto_front(figures):
    ax = figures["cost-device_hours-fid"].axes[0]
    assert ax.get_xlabel() == "Device h"
    front = next(line for line in ax.get_lines() if line.get_label() == "Pareto front")
    # DDPM at weight 0 is the cheapest; Cas-DM at weight 1 the best FID.
    assert front.get_xdata()[0] == pytest.approx(1.0)
    assert front.get_xdata()[-1] == pytest.approx(2.1)
    assert "Pareto front" in legend_texts(ax)


def test_pareto_front_against_brute_force():
    rng = np.random.default_rng(1)
    pts = [tuple(p) for p in rng.random((40, 2))]
    for cheaper, better in ((True, "minimize"), (True, "maximize"), (False, "minimize")):
        sx = 1 if cheaper else -1
        sy = 1 if better == "minimize" else -1

        def dominated(p, pts=pts, sx=sx, sy=sy):
            return any(sx * q[0] <= sx * p[0] and sy * q[1] <= sy * p[1] and q != p for q in pts)

        expected = sorted((p for p in pts if not dominated(p)), key=lambda p: sx * p[0])
        assert pareto_front(pts, cheaper=cheaper, better=better) == expected


def test_colours_are_stable_across_studies(study):
    assert colours(study)["cas-dm"] == colours_for("cas-dm")


def test_files_are_written_and_not_blank(tmp_path, figures):
    paths = write_figures(figures, tmp_path / "figures", ("pdf", "png", "svg"))
    assert len(paths) == 3 * len(figures)
    for path in paths:
        assert path.stat().st_size > 1000, path
        if path.suffix == ".png":
            pixels = np.asarray(Image.open(path).convert("L"))
            assert pixels.min() < 100 and pixels.max() > 200, path  # ink on paper
        if path.suffix == ".pdf":
            assert path.read_bytes().startswith(b"%PDF")
        if path.suffix == ".svg":
            assert "<svg" in path.read_text()


def test_without_samples_or_curves_those_figures_are_left_out(tmp_path, study):
    figures = build_figures(make_results(tmp_path, with_samples=False), study, {})
    assert "samples" not in figures and "curves" not in figures


def test_format_list_is_checked():
    from bench.commands.plot import parse_formats
    from bench.errors import BenchError

    assert parse_formats("PDF, png,pdf") == ("pdf", "png")
    with pytest.raises(BenchError, match="jpg is not one of pdf, png, svg"):
        parse_formats("pdf,jpg")
