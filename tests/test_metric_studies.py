"""The metric-loss studies: digits_ablation (CPU) and lpips_budget (one GPU) load, validate and
hold the grid they promise; one cell of digits_ablation runs end to end in a few steps."""

import math
from pathlib import Path

import pytest

from bench.errors import BenchError
from bench.runner import run_study
from bench.study import load_study
from casdm.metrics import build_metric


def caption_note(cfg, height, width):
    return cfg.component.caption_note(cfg.options, height, width)


STUDIES = Path(__file__).parents[1] / "studies"
ARCHITECTURES = ("ddpm", "x0-ddpm", "cas-dm", "dual")
LOSSES = ("none", "l2", "pseudo-huber", "ssim")


def test_digits_ablation_is_four_architectures_by_four_losses_by_six_seeds():
    study = load_study(str(STUDIES / "digits_ablation.toml"))
    configs = [study.config(c) for c in study.cells()]
    assert study.size == len(configs) == 96
    assert {(c.architecture.name, c.metric.name, c.seed) for c in configs} == {
        (a, m, s) for a in ARCHITECTURES for m in LOSSES for s in range(6)
    }
    for config in configs:
        assert (config.data.dataset, config.data.resolution) == ("digits", 8)
        assert config.eval.evaluator == "classifier"
        # Every loss measures the native 8x8 digits: no upsampling, so no caption note.
        build_metric(config.metric, (1, 8, 8))
        assert caption_note(config.metric, 8, 8) == ""


def test_digits_ablation_rejects_an_ssim_window_larger_than_the_digits():
    with pytest.raises(
        BenchError,
        match=r"--set metric.win_size=11: got 11; ssim's Gaussian window must fit in the image "
        r"and the images are 8x8; set metric.win_size to an odd number from 3 to 7",
    ):
        load_study(str(STUDIES / "digits_ablation.toml"), ["metric.win_size=11"])


def test_lpips_budget_is_a_smaller_metric_loss_study():
    study = load_study(str(STUDIES / "lpips_budget.toml"))
    paper = load_study(str(STUDIES / "metric_loss.toml"))
    configs = [study.config(c) for c in study.cells()]
    assert study.size == 18
    assert {(c.architecture.name, c.metric.name) for c in configs} == {
        (a, m) for a in ("ddpm", "x0-ddpm", "cas-dm") for m in ("none", "l2", "lpips")
    }
    assert {c.seed for c in configs} == {0, 1}
    config, full = configs[0], paper.config(paper.cells()[0])
    assert config.train.steps * 8 == full.train.steps
    assert config.model.base_channels * 2 == full.model.base_channels
    assert (config.sample.num_samples, config.eval.evaluator) == (10_000, "inception")
    lpips = next(c for c in configs if c.metric.name == "lpips")
    assert lpips.metric.net == "vgg" and lpips.metric.min_size == 64
    assert caption_note(lpips.metric, 32, 32) == (
        "lpips-vgg on images upsampled bilinearly from 32x32 to 64x64"
    )


@pytest.mark.slow
def test_one_digits_ablation_cell_runs_end_to_end(workspace):
    """Cas-DM with the SSIM loss, the study's own model and options, for a few steps."""
    smoke = [
        "architecture.name=cas-dm",
        "metric.name=ssim",
        "seed=0",
        "device=cpu",
        "train.steps=4",
        "train.batch_size=8",
        "train.warmup_steps=0",
        "train.log_every=2",
        "sample.steps=3",
        "sample.num_samples=20",
        "sample.batch_size=20",
        "eval.batch_size=20",
    ]
    study = load_study(str(STUDIES / "digits_ablation.toml"), smoke)
    summary = run_study(study, quiet=True)
    (record,) = summary.trials
    assert (record.state, record.cell) == ("COMPLETE", "cas-dm ssim seed=0")
    assert math.isfinite(record.value)
