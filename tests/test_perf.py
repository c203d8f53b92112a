"""The model benchmark: one row per measurement, the ratio taken from the rows it reports."""

import pytest
import torch

from bench.errors import BenchError
from bench.perf import model_benchmarks
from casdm.components import registry

ARCHITECTURES = registry("architecture").names()


@pytest.fixture(scope="module")
def rows():
    return model_benchmarks(
        steps=2, warmup=1, batch_size=4, resolution=8, sample_steps=2, repeats=1
    )


def test_every_architecture_is_trained_and_sampled_plus_cas_dm_with_l2(rows):
    train = [(r["architecture"], r["metric"]) for r in rows if r["benchmark"] == "train"]
    assert train == [(name, "none") for name in ARCHITECTURES] + [("cas-dm", "l2")]
    sample = [r["architecture"] for r in rows if r["benchmark"] == "sample"]
    assert sample == list(ARCHITECTURES)
    for r in rows:
        assert r["device"] == "cpu" and r["batch_size"] == 4 and r["image"] == "1x8x8"
        if r["benchmark"] != "ratio":
            assert r["images_per_s"] > 0


def test_throughput_and_time_per_batch_agree(rows):
    for r in rows:
        if r["benchmark"] == "train":
            assert r["images_per_s"] == pytest.approx(4 / (r["ms_per_step"] / 1000))
        if r["benchmark"] == "sample":
            assert r["images_per_s"] == pytest.approx(4 / (r["ms_per_batch"] / 1000))


def test_cas_dm_to_ddpm_ratio_is_taken_from_the_same_runs_step_times(rows):
    (ratio,) = [r for r in rows if r["benchmark"] == "ratio"]
    step = {r["architecture"]: r["ms_per_step"] for r in rows if r.get("metric") == "none"}
    assert ratio["value"] == pytest.approx(step["cas-dm"] / step["ddpm"])
    cas_dm, ddpm = (
        next(r for r in rows if r.get("metric") == "none" and r["architecture"] == a)
        for a in ("cas-dm", "ddpm")
    )
    assert cas_dm["parameters"] > 1.9 * ddpm["parameters"]  # two UNets of the same width


def test_bad_benchmark_arguments_are_refused():
    with pytest.raises(
        BenchError, match=r"perf needs steps >= 1.*got steps=0, warmup=3, repeats=1"
    ):
        model_benchmarks(steps=0, repeats=1)


def test_options_benchmark_reports_every_option_against_fp32_and_diffusers():
    from bench.perf import option_variants, options_benchmark

    rows = options_benchmark(steps=1, warmup=1, rounds=1, batch_size=4, resolution=8)
    options = list(option_variants(torch.device("cpu"), compile=False))
    assert [(r["option"], r["network"]) for r in rows] == [
        (o, n) for o in options for n in ("casdm", "diffusers")
    ]
    fp32 = {r["network"]: r["ms_per_step"] for r in rows if r["option"] == "fp32"}
    diffusers = {r["option"]: r["ms_per_step"] for r in rows if r["network"] == "diffusers"}
    for r in rows:
        assert r["images_per_s"] == pytest.approx(4 / (r["ms_per_step"] / 1000))
        assert r["vs_fp32"] == pytest.approx(fp32[r["network"]] / r["ms_per_step"])
        if r["network"] == "casdm":
            assert r["vs_diffusers"] == pytest.approx(diffusers[r["option"]] / r["ms_per_step"])
    auto = next(r for r in rows if r["option"] == "auto")
    assert (auto["precision"], auto["channels_last"], auto["fused_adamw"]) == ("fp32", False, False)


def test_workers_side_by_side_rows_and_ratios():
    from bench.perf_workers import MODES, workers_benchmark

    rows = workers_benchmark(2, steps=1, batch_size=2, resolution=8, timeout=300)
    runs = [r for r in rows if r["benchmark"] == "workers-train"]
    (alone,) = [r for r in runs if r["workers"] == 1]
    assert alone["mode"] == "policy" and alone["threads"] >= 1
    for mode in MODES:
        side = [r for r in runs if r["mode"] == mode and r["workers"] == 2]
        assert [r["worker"] for r in side] == [0, 1]
        ratios = [r for r in rows if r["benchmark"] == "ratio" and r["name"].startswith(mode)]
        assert [r["value"] for r in ratios] == pytest.approx(
            [r["images_per_s"] / alone["images_per_s"] for r in side]
        )
        if mode == "policy":  # two workers on this machine: at most half the cores each
            assert all(r["threads"] <= max(1, r["cores"] // 2) for r in side)


def test_harness_benchmark_times_the_same_cell_through_bench_run_and_the_library(seeded_results):
    from pathlib import Path

    from bench.perf_harness import harness_benchmark

    tiny = Path(__file__).parent / "studies" / "tiny.toml"
    cell = ("architecture.name=cas-dm", "metric.name=l2")
    # The tiny study's evaluator cache, built once for the session, stands in for the warm-up.
    cache = seeded_results / "cache"
    result = harness_benchmark(tiny, cell, steps=2, repeats=1, timeout=300, cache=cache)
    assert result["cell"] == "architecture.name=cas-dm metric.name=l2 train.steps=2"
    assert result["bench_run_s"] > 0 and result["bare_s"] > 0 and result["repeats"] == 1
    assert result["ratio"] == pytest.approx(result["bench_run_s"] / result["bare_s"])
    assert result["repetition_ratios"] == [pytest.approx(result["ratio"], abs=1e-3)]
    assert result["same_scores"]  # the bare script trained, sampled and scored the same


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--harness-steps", "0"], "--harness-steps must be >= 1, got 0"),
        (["--harness-repeats", "0"], "--harness-repeats must be >= 1, got 0"),
    ],
)
def test_bad_harness_arguments_exit_2_before_running(argv, message, capsys):
    from bench.cli import main

    assert main(["perf", "--only", "harness", *argv]) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(
    "device, message",
    [
        ("gpu0", "device 'gpu0' is not a torch device; use auto, cpu, cuda or cuda:N"),
        pytest.param(
            "cuda",
            "device 'cuda' asked for CUDA, which this machine lacks; use cpu",
            marks=pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA"),
        ),
    ],
)
def test_a_device_this_machine_cannot_use_exits_2_before_running(device, message, capsys):
    from bench.cli import main

    assert main(["perf", "--only", "models", "--device", device]) == 2
    captured = capsys.readouterr()
    assert message in captured.err and "Traceback" not in captured.err
    assert captured.out == ""  # refused before any benchmark started
