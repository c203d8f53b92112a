"""Components from outside the repository's packages: the example plugin in tests/plugin_example
adds one component of every kind from a single module, with no other file edited.

- in-process: each component does what it says (checked against independent computations);
- `bench --plugin MODULE`: a one-cell study of the plugin's components runs and is tabled;
- installed: pip installs the plugin package, and its entry point alone makes `bench` find
  the components (`bench list --components`, `bench run`, `bench table`).
"""

import csv
import importlib
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from casdm import components

PLUGIN = Path(__file__).parent / "plugin_example"
MODULE = "casdm_bench_example"
ADDED = {
    "architecture": "v-ddpm",
    "metric": "charbonnier",
    "sampler": "flow-euler",
    "dataset": "gratings",
    "evaluator": "pixels",
    "score": "feature_mean_gap",
}


@pytest.fixture
def plugin(monkeypatch):
    """The example module imported (registering its components), undone afterwards so that
    no other test sees them."""
    import bench.evaluation  # noqa: F401  (defines the evaluator and score kinds)

    for kind in components.kinds():
        components.registry(kind).names()  # built-ins registered before the snapshot
    saved = {kind: dict(components.registry(kind)._components) for kind in components.kinds()}
    monkeypatch.syspath_prepend(str(PLUGIN))
    try:
        yield importlib.import_module(MODULE)
    finally:
        sys.modules.pop(MODULE, None)
        for kind, entries in saved.items():
            components.registry(kind)._components.clear()
            components.registry(kind)._components.update(entries)


def test_each_kind_is_registered_with_its_options(plugin):
    for kind, name in ADDED.items():
        component = components.registry(kind).get(name)
        assert component.target.startswith(f"{MODULE}:")
        assert callable(component.load())


def test_options_are_addressed_like_built_in_ones(plugin):
    from bench.config import RunConfig
    from casdm.config import ConfigError, from_dict

    config = from_dict(
        RunConfig,
        {
            "architecture": {"name": "v-ddpm", "v_weight": 2.0},
            "metric": {"name": "charbonnier", "epsilon": 0.1},
            "data": {"dataset": "gratings", "count": 32},
        },
    )
    assert (config.architecture.v_weight, config.metric.epsilon, config.data.count) == (2, 0.1, 32)
    with pytest.raises(ConfigError, match=r"architecture.v_weight: must be > 0, got 0.0"):
        from_dict(RunConfig, {"architecture": {"name": "v-ddpm", "v_weight": 0}})


def tiny_model(architecture: str):
    """(a 1-channel 8x8 model of `architecture` with seeded weights, its schedule)."""
    from casdm.architectures import build_model
    from casdm.config import ArchitectureConfig, ModelConfig
    from casdm.schedule import Schedule

    torch.manual_seed(0)
    schedule = Schedule.named("linear", 100)
    model_cfg = ModelConfig(base_channels=8, channel_mults=(1,), attention_resolutions=())
    return build_model(ArchitectureConfig(name=architecture), model_cfg, schedule, 1, 8), schedule


def test_flow_euler_equals_ddim_for_an_eps_model_without_clipping(plugin):
    from casdm.prediction import Prediction
    from casdm.samplers import ddim
    from casdm.schedule import Schedule

    # An eps model in float64 (the UNet is float32 only): the two samplers are one update
    # written two ways, so they agree to rounding; in float32 the 1 / sqrt(abar) of the first
    # steps would amplify that rounding to ~1e-5.
    schedule = Schedule.named("linear", 100)

    def model(x_t, t):
        eps = 0.6 * x_t + 0.1 * torch.sin(t.double() / 10).view(-1, 1, 1, 1)
        return Prediction(eps, schedule.x0_from_eps(x_t, t, eps))

    x_T = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    g = torch.Generator()
    expected = ddim(model, schedule, x_T, steps=7, generator=g, clip_x0=False)
    got = plugin.euler(model, schedule, x_T, steps=7, generator=g, clip_x0=False)
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)


def test_v_prediction_is_consistent_with_eps_and_x0(plugin):
    from casdm.config import MetricConfig
    from casdm.metrics import build_metric

    model, schedule = tiny_model("v-ddpm")
    x_t, t = torch.randn(4, 1, 8, 8), torch.tensor([0, 10, 50, 99])
    pred = model(x_t, t)
    torch.testing.assert_close(
        schedule.x0_from_eps(x_t, t, pred.eps), pred.x0, rtol=1e-4, atol=1e-4
    )
    metric = build_metric(MetricConfig(name="charbonnier", weight=0.5, epsilon=0.01))
    x0, noise = torch.rand(4, 1, 8, 8) * 2 - 1, torch.randn(4, 1, 8, 8)
    loss, terms = model.loss(x0, t, noise, metric)
    assert loss.shape == (4,) and torch.isfinite(loss).all() and "metric" in terms
    d = pred.x0 - x0
    expected = (torch.sqrt(d**2 + 0.01**2) - 0.01).mean(dim=(1, 2, 3))
    torch.testing.assert_close(metric(pred.x0, x0), expected)


def test_gratings_load_as_a_dataset(plugin):
    from casdm.config import DataConfig
    from casdm.data import load_dataset

    train = load_dataset(DataConfig(dataset="gratings", resolution=8, count=16), "train")
    test = load_dataset(DataConfig(dataset="gratings", resolution=8, count=16), "test")
    assert train.images.shape == (16, 1, 8, 8) and test.images.shape == (4, 1, 8, 8)
    assert train.images.min() >= -1 and train.images.max() <= 1
    assert set(train.labels.tolist()) <= {0, 1, 2, 3}


def test_feature_mean_gap_is_fids_mean_term_on_the_pixel_features(plugin, tmp_path):
    from bench.config import EvalConfig
    from bench.evaluation import build_evaluator, reference_statistics, score
    from casdm.config import DataConfig
    from casdm.data import load_dataset, to_uint8

    data = DataConfig(dataset="gratings", resolution=8, count=64)
    eval_cfg = EvalConfig(evaluator="pixels", bootstrap=0)
    evaluator = build_evaluator(eval_cfg, data, device="cpu", cache_dir=tmp_path)
    reference = reference_statistics(evaluator, data, eval_cfg, cache_dir=tmp_path)
    samples = to_uint8(load_dataset(data, "test").images)
    scores = score(samples, evaluator, reference)

    def pool(images):
        return evaluator.features(images).pool.double().numpy()

    gap = pool(samples).mean(0) - pool(to_uint8(load_dataset(data, "train").images)).mean(0)
    assert scores["feature_mean_gap"] == pytest.approx(float(gap @ gap), rel=1e-5)
    assert scores["fid"] >= scores["feature_mean_gap"] - 1e-9  # the trace term is >= 0


def test_a_study_of_plugin_components_runs_with_bench_plugin(workspace, monkeypatch):
    monkeypatch.syspath_prepend(str(PLUGIN))  # the forked child imports it, not this process
    done = workspace.run_bench("--plugin", MODULE, "run", "--study", "plugin", "--quiet")
    assert done.returncode == 0, done.stderr
    done = workspace.run_bench("--plugin", MODULE, "table", "plugin")
    assert done.returncode == 0, done.stderr
    rows = list(csv.DictReader((workspace.results / "plugin" / "table.csv").open()))
    cells = {r["score"]: r for r in rows if r["row"] == "v-ddpm"}
    assert set(cells) == {"fid", "feature_mean_gap"}
    gap = cells["feature_mean_gap"]
    assert float(gap["mean"]) >= 0 and float(gap["bootstrap_se"]) > 0 and gap["n"] == "1"
    markdown = (workspace.results / "plugin" / "table.md").read_text()
    assert "Mean gap ↓" in markdown and f"{float(gap['mean']):.4f}" in markdown
    assert MODULE not in sys.modules


def test_an_installed_plugin_is_found_through_its_entry_point(workspace, tmp_path):
    site, source = tmp_path / "site", tmp_path / "plugin_example"
    shutil.copytree(PLUGIN, source)  # pip builds in the source folder: not in the repository
    pip = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index"]
    done = subprocess.run(
        [*pip, "--no-build-isolation", "--target", str(site), str(source)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert (site / f"{MODULE}.py").exists()
    script = (
        "import sys\n"
        "from bench.cli import main\n"
        "for argv in (['list', '--components'], ['run', '--study', 'plugin', '--quiet'],\n"
        "             ['table', 'plugin']):\n"
        "    code = main(argv)\n"
        "    print('exit', code, flush=True)\n"
        "    if code: sys.exit(code)\n"
    )
    env = {**workspace.env, "PYTHONPATH": f"{site}:{Path(__file__).parents[1]}", "COLUMNS": "200"}
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=workspace.root,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    listing = done.stdout
    for name in ADDED.values():
        assert name in listing
    assert f"plugins: {MODULE}" in listing
    assert (workspace.results / "plugin" / "table.csv").exists()
