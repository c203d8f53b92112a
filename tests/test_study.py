"""Study files: parsing, validation before any work (file, key, value and choices named), --set."""

import textwrap
from pathlib import Path

import pytest

from bench.config import RunConfig
from bench.errors import BenchError
from bench.study import (
    Choices,
    Range,
    field_type,
    find_study,
    load_study,
    parse_override,
    slug,
    value_text,
)
from casdm.unet import UNet

REPO = Path(__file__).resolve().parents[1]

VALID = """\
description = "2 x 2 on 8x8 digits"
objective = { score = "fid", direction = "minimize" }

[base]
seed = 0

[base.data]
dataset = "digits"
resolution = 8

[base.model]
base_channels = 8
channel_mults = [1, 2]
attention_resolutions = []

[base.train]
steps = 4

[base.eval]
evaluator = "classifier"

[grid]
"architecture.name" = ["ddpm", "cas-dm"]
"metric.name" = ["none", "l2"]
seed = [0, 1]

[table]
rows = ["architecture.name"]
columns = ["metric.name"]
scores = ["fid", "is_mean"]
"""


@pytest.fixture
def in_repo(monkeypatch):
    """Run from the repository root, where `studies/` is found by name."""
    monkeypatch.chdir(REPO)


def write(tmp_path: Path, text: str, name: str = "s") -> str:
    path = tmp_path / f"{name}.toml"
    path.write_text(textwrap.dedent(text))
    return str(path)


def edit(old: str, new: str) -> str:
    assert old in VALID, old
    return VALID.replace(old, new)


def error(tmp_path: Path, text: str, overrides=()) -> str:
    path = write(tmp_path, text)
    with pytest.raises(BenchError) as info:
        load_study(path, overrides)
    message = str(info.value)
    assert message.startswith(f"{path}: "), message
    return message


# --- the shipped studies ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "cells"),
    [("quickstart", 9), ("lpips_weight", 36), ("metric_loss", 27), ("lpips_budget", 18)],
)
def test_shipped_studies_load_and_validate(in_repo, name, cells):
    study = load_study(name)
    assert study.name == name
    assert study.path == Path("studies") / f"{name}.toml"
    assert study.is_grid and study.size == len(study.cells()) == cells
    assert {study.config(c).architecture.name for c in study.cells()} == {
        "ddpm",
        "x0-ddpm",
        "cas-dm",
    }
    assert study.objective_score == "fid" and study.direction == "minimize"


def test_quickstart_is_three_architectures_by_three_metrics_on_digits(in_repo):
    study = load_study("quickstart")
    configs = [study.config(c) for c in study.cells()]
    assert {(c.architecture.name, c.metric.name) for c in configs} == {
        (a, m) for a in ("ddpm", "x0-ddpm", "cas-dm") for m in ("none", "l2", "lpips")
    }
    for config in configs:
        assert config.data.dataset == "digits"
        assert config.eval.evaluator == "classifier"
        if config.metric.name == "lpips":
            assert config.metric.net in ("squeeze", "alex")
            assert config.metric.trunk == "pretrained"
        assert config.seed == 0
    assert study.cell_name(study.cells()[0]) == "ddpm none"


def test_lpips_weight_follows_ho_et_al_cifar10_setup(in_repo):
    study = load_study("lpips_weight")
    assert study.grid["metric.weight"] == [0.0, 0.1, 0.3, 1.0]
    assert study.grid["seed"] == [0, 1, 2]
    config = study.config(study.cells()[0])
    assert (config.data.dataset, config.data.resolution) == ("cifar10", 32)
    assert (config.diffusion.schedule, config.diffusion.timesteps) == ("linear", 1000)
    train = config.train
    assert (train.lr, train.batch_size, train.warmup_steps) == (2e-4, 128, 5000)
    assert (train.grad_clip, train.ema_decay, train.steps) == (1.0, 0.9999, 800_000)
    assert (config.sample.sampler, config.sample.steps, config.sample.num_samples) == (
        "ddim",
        100,
        50_000,
    )
    assert config.eval.evaluator == "inception" and config.eval.reference_split == "train"
    assert config.metric.name == "lpips"
    m = config.model
    unet = UNet(
        3, 3, 32, m.base_channels, m.channel_mults, m.num_res_blocks,
        m.attention_resolutions, m.num_heads, m.dropout,
    )  # fmt: skip
    # Ho et al. 2020, Sec. 4: "Our CIFAR10 model has 35.7 million parameters".
    assert sum(p.numel() for p in unet.parameters()) == pytest.approx(35.7e6, rel=0.01)
    assert study.cell_name({"architecture.name": "cas-dm", "metric.weight": 0.3, "seed": 1}) == (
        "cas-dm lpips=0.3 seed=1"
    )


# --- the Study object ---------------------------------------------------------------------


def test_cells_are_the_cartesian_product_in_file_order(tmp_path):
    study = load_study(write(tmp_path, VALID))
    assert study.cells() == [
        {"architecture.name": a, "metric.name": m, "seed": s}
        for a in ("ddpm", "cas-dm")
        for m in ("none", "l2")
        for s in (0, 1)
    ]
    config = study.config({"architecture.name": "cas-dm", "metric.name": "l2", "seed": 1})
    assert isinstance(config, RunConfig)
    assert (config.architecture.name, config.metric.name, config.seed) == ("cas-dm", "l2", 1)
    assert config.train.steps == 4 and config.model.channel_mults == (1, 2)
    assert study.results_dir(Path("out")) == Path("out") / "s"
    assert study.table.rows == ("architecture.name",)
    assert study.value_label("architecture.name", "cas-dm") == "cas-dm"
    assert study.value_label("seed", 2) == "seed=2"


def test_unquoted_dotted_axis_keys_equal_quoted_ones(tmp_path):
    text = edit('"metric.name" = ["none", "l2"]', 'metric.name = ["none", "l2"]')
    assert load_study(write(tmp_path, text)).grid == load_study(write(tmp_path, VALID, "t")).grid


def test_integer_values_of_float_keys_are_one_grid_value(tmp_path):
    text = edit("seed = [0, 1]", '"metric.weight" = [0, 0.5]\nseed = [0, 1]').replace(
        'columns = ["metric.name"]', 'columns = ["metric.name", "metric.weight"]'
    )
    study = load_study(write(tmp_path, text))
    assert study.grid["metric.weight"] == [0.0, 0.5]
    assert all(isinstance(v, float) for v in study.grid["metric.weight"])
    assert value_text(0.0) == "0" and value_text(0.30) == "0.3" and value_text(True) == "true"


def test_labels_map_axis_values_to_display_names(tmp_path):
    text = VALID + '[labels]\n"architecture.name" = { "cas-dm" = "Cas-DM" }\n'
    study = load_study(write(tmp_path, text))
    assert study.value_label("architecture.name", "cas-dm") == "Cas-DM"
    assert study.value_label("architecture.name", "ddpm") == "ddpm"


def test_slug_keeps_cell_names_readable_and_path_safe():
    assert slug("cas-dm lpips=0.3 seed=1") == "cas-dm_lpips=0.3_seed=1"
    assert slug("../x y") == ".._x_y"
    assert "/" not in slug("a/b")


def test_search_study_reads_ranges_and_choices(tmp_path):
    text = """\
    description = "TPE"
    n_trials = 5
    [base.model]
    channel_mults = [1]
    attention_resolutions = []
    [grid]
    seed = [0, 1]
    [search]
    "train.lr" = { low = 1e-5, high = 1e-3, log = true }
    "train.batch_size" = { low = 8, high = 64, step = 8 }
    "architecture.name" = { choices = ["ddpm", "cas-dm"] }
    [table]
    rows = ["architecture.name", "train.lr", "train.batch_size"]
    """
    study = load_study(write(tmp_path, text))
    assert not study.is_grid and study.size == 5
    assert study.search["train.lr"] == Range(low=1e-5, high=1e-3, log=True)
    assert study.search["train.batch_size"] == Range(low=8, high=64, step=8, integer=True)
    assert study.search["architecture.name"] == Choices(("ddpm", "cas-dm"))
    assert study.cells() == [{"seed": 0}, {"seed": 1}]


# --- bad study files ----------------------------------------------------------------------


def test_toml_syntax_error_names_file_line_and_column(tmp_path):
    message = error(tmp_path, 'description = "x"\n[base]\nseed = = 1\n')
    assert "TOML syntax error" in message and "line 3, column" in message


def test_unreadable_study_file_is_reported(tmp_path):
    path = tmp_path / "bin.toml"
    path.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(BenchError, match="cannot read the study file"):
        load_study(str(path))


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        (
            'description = "2 x 2 on 8x8 digits"',
            'description = "x"\nseeds = [1]',
            "seeds: unknown key; allowed: description, objective, base, grid, search, n_trials",
        ),
        (
            'scores = ["fid", "is_mean"]',
            'scores = ["fid"]\nmetric = "fid"',
            "table.metric: unknown key; allowed: rows, columns, scores",
        ),
        (
            'direction = "minimize" }',
            'direction = "minimize", goal = 1 }',
            "objective.goal: unknown key; allowed: score, direction",
        ),
        (
            "steps = 4",
            "steps = 4\nstepz = 5",
            "base.train.stepz: unknown key; allowed: steps, batch_size, lr",
        ),
        ("seed = 0\n", "seed = 0\nsede = 1\n", "base.sede: unknown key; allowed: seed, device"),
        (
            "seed = [0, 1]",
            '"trian.steps" = [1]',
            "grid.trian.steps: unknown key 'trian'; allowed: seed, device, data, model",
        ),
        (
            "seed = [0, 1]",
            '"train" = [1]',
            "grid.train: is a table, not a value; set one of: train.steps, train.batch_size",
        ),
    ],
)
def test_unknown_key_at_each_level_is_named_with_the_allowed_keys(tmp_path, old, new, expected):
    assert expected in error(tmp_path, edit(old, new))


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        (
            '["ddpm", "cas-dm"]',
            '["ddpm", "dddpm"]',
            "grid.architecture.name: unknown architecture 'dddpm'; "
            "valid architectures: cas-dm, ddpm, dual, x0-ddpm",
        ),
        (
            '["none", "l2"]',
            '["none", "lpipz"]',
            "grid.metric.name: unknown metric 'lpipz'; valid metrics: l1, l2, lpips, ms-ssim, "
            "none, pseudo-huber, ssim",
        ),
        (
            'dataset = "digits"',
            'dataset = "mnist"',
            "base.data.dataset: unknown dataset 'mnist'; valid datasets: cifar10, digits, folder",
        ),
        (
            'evaluator = "classifier"',
            'evaluator = "clip"',
            "base.eval.evaluator: unknown evaluator 'clip'; valid evaluators: classifier, "
            "inception",
        ),
        (
            "steps = 4",
            'steps = 4\n[base.sample]\nsampler = "euler"',
            "base.sample.sampler: unknown sampler 'euler'; valid samplers: ddim, ddpm",
        ),
        (
            "steps = 4",
            'steps = 4\n[base.diffusion]\nschedule = "sigmoid"',
            "base.diffusion.schedule: unknown schedule 'sigmoid'; valid schedules: cosine, linear",
        ),
        (
            'dataset = "digits"',
            'dataset = "folder"',
            "base.data.dataset: dataset 'folder' needs a path: write 'folder:PATH'",
        ),
    ],
)
def test_unknown_registry_name_lists_the_valid_names(tmp_path, old, new, expected):
    assert expected in error(tmp_path, edit(old, new))


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ("steps = 4", 'steps = "many"', "base.train.steps: got 'many' (str); expected int"),
        ("steps = 4", "steps = 0", "base.train.steps: must be >= 1, got 0"),
        ("steps = 4", "steps = 4\nlr = -1.0", "base.train.lr: must be > 0, got -1.0"),
        ("seed = 0\n", "seed = -1\n", "base.seed: must be >= 0, got -1"),
        ("seed = [0, 1]", "seed = [0, -1]", "grid.seed: must be >= 0, got -1"),
        ("seed = [0, 1]", "seed = [0, 1.5]", "grid.seed: got 1.5 (float); expected int"),
        ("seed = [0, 1]", "seed = 3", "grid.seed: got 3; expected a non-empty list of values"),
        ("seed = [0, 1]", "seed = []", "grid.seed: got []; expected a non-empty list of values"),
        ("seed = [0, 1]", "seed = [1, 1]", "grid.seed: value 1 is listed twice in [1, 1]"),
        (
            "channel_mults = [1, 2]",
            'channel_mults = "12"',
            "base.model.channel_mults: got '12'; expected a list of int",
        ),
        (
            '["none", "l2"]',
            '["none", "l2"]\n"metric.weight" = [1, -0.5]',
            "grid.metric.weight: must be >= 0, got -0.5",
        ),
        (
            'description = "2 x 2 on 8x8 digits"',
            "description = 3",
            "description: got 3; expected a non-empty string",
        ),
    ],
)
def test_wrong_type_or_out_of_range_value_is_named(tmp_path, old, new, expected):
    assert expected in error(tmp_path, edit(old, new))


def test_base_that_is_not_a_table_is_rejected(tmp_path):
    assert "base: got 3; expected a table [base]" in error(
        tmp_path, 'description = "x"\nbase = 3\n'
    )


def test_resolution_that_the_unet_cannot_halve_fails_before_training(tmp_path):
    text = edit("resolution = 8", "resolution = 12").replace("[1, 2]", "[1, 2, 2, 2]")
    message = error(tmp_path, text)
    assert "base.data.resolution: got 12; a UNet with 4 levels (model.channel_mults = " in message
    assert "[1, 2, 2, 2]) needs a resolution divisible by 8" in message


def test_attention_resolution_that_no_level_has_is_rejected(tmp_path):
    message = error(tmp_path, edit("attention_resolutions = []", "attention_resolutions = [16]"))
    assert "base.model.attention_resolutions: 16 is not a feature-map side of this UNet" in message
    assert "at resolution 8 its sides are 8, 4" in message


def test_lpips_on_images_too_small_for_its_trunk_fails_before_training(tmp_path):
    text = edit('["none", "l2"]', '["none", "lpips"]').replace(
        "steps = 4", 'steps = 4\n[base.metric]\nnet = "alex"\nmin_size = 16'
    )
    message = error(tmp_path, text)
    assert "base.metric.min_size: got 16; LPIPS-alex needs images of at least 31x31" in message
    assert "(in grid cell 'ddpm lpips seed=0')" in message


def test_sample_steps_beyond_timesteps_are_rejected(tmp_path):
    text = edit(
        "steps = 4", "steps = 4\n[base.sample]\nsteps = 60\n[base.diffusion]\ntimesteps = 50"
    )
    assert "base.sample.steps: must be <= diffusion.timesteps (50), got 60" in error(tmp_path, text)


def test_cross_field_error_names_the_grid_cell(tmp_path):
    text = (
        edit("seed = [0, 1]", 'seed = [0, 1]\n"sample.sampler" = ["ddim", "ddpm"]')
        .replace('columns = ["metric.name"]', 'columns = ["metric.name", "sample.sampler"]')
        .replace("steps = 4", "steps = 4\n[base.sample]\neta = 0.5")
    )
    # One [base] serves a grid over samplers: eta is ddim's option, ignored by ddpm's cells.
    study = load_study(str(write(tmp_path, text)))
    samplers = {study.config(p).sample.sampler: study.config(p).sample for p in study.cells()}
    assert samplers["ddim"].eta == 0.5
    assert not hasattr(samplers["ddpm"], "eta")
    # An option that no cell's component takes is an error, named where it was set.
    message = error(tmp_path, text.replace('["ddim", "ddpm"]', '["ddpm"]'))
    assert "base.sample.eta: only the ddim sampler takes eta" in message
    # A value out of range for the component that takes it.
    message = error(tmp_path, text.replace("eta = 0.5", "eta = 1.5"))
    assert "base.sample.eta: must be in [0, 1], got 1.5" in message


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        (
            'rows = ["architecture.name"]',
            'rows = ["model.dropout"]',
            "table.rows: 'model.dropout' is not an axis of this study; "
            "axes: architecture.name, metric.name, seed",
        ),
        (
            'columns = ["metric.name"]',
            'columns = ["metric.nam"]',
            "table.columns: 'metric.nam' is not an axis",
        ),
        (
            'columns = ["metric.name"]',
            "columns = []",
            "table: axis 'metric.name' is in neither table.rows nor table.columns",
        ),
        (
            'columns = ["metric.name"]',
            'columns = ["architecture.name", "metric.name"]',
            "table: axis 'architecture.name' is used twice in rows/columns",
        ),
        (
            'rows = ["architecture.name"]',
            'rows = "architecture.name"',
            "table.rows: got 'architecture.name'; expected a list of axis keys",
        ),
        (
            'scores = ["fid", "is_mean"]',
            'scores = ["fid", "inception_score"]',
            "table.scores: unknown score 'inception_score'; valid scores: fid, sfid, is_mean",
        ),
        ('scores = ["fid", "is_mean"]', "scores = []", "table.scores: got []; expected a non"),
        (
            'scores = ["fid", "is_mean"]',
            'scores = ["fid", "fid"]',
            "table.scores: got ['fid', 'fid']; a score is listed twice",
        ),
    ],
)
def test_bad_table_layout_is_rejected(tmp_path, old, new, expected):
    assert expected in error(tmp_path, edit(old, new))


@pytest.mark.parametrize(
    ("objective", "expected"),
    [
        (
            '{ score = "FID" }',
            "objective.score: unknown score 'FID'; valid scores: fid, sfid, is_mean, is_std",
        ),
        (
            '{ score = "fid", direction = "down" }',
            "objective.direction: got 'down'; allowed: minimize, maximize",
        ),
        (
            '{ score = "fid", direction = "maximize" }',
            "objective.direction: got 'maximize', but fid is better when lower; use 'minimize'",
        ),
        (
            '{ score = "is_std" }',
            "objective.direction: got None; allowed: minimize, maximize",
        ),
        ("3", "objective: got 3; expected a table [objective]"),
    ],
)
def test_bad_objective_is_rejected(tmp_path, objective, expected):
    text = edit('{ score = "fid", direction = "minimize" }', objective)
    assert expected in error(tmp_path, text)


def test_old_spellings_of_objective_score_and_table_scores_still_load(tmp_path):
    """Study files written before scores were named apart from metric losses still load."""
    text = edit('{ score = "fid", direction = "minimize" }', '{ metric = "precision" }')
    text = text.replace('scores = ["fid", "is_mean"]', 'metrics = ["kid", "recall"]')
    study = load_study(write(tmp_path, text))
    assert (study.objective_score, study.direction) == ("precision", "maximize")
    assert study.table.scores == ("kid", "recall")
    both = edit('{ score = "fid", direction = "minimize" }', '{ score = "fid", metric = "fid" }')
    assert "objective.metric: objective.metric is the old name of objective.score" in error(
        tmp_path, both
    )
    text = edit('scores = ["fid", "is_mean"]', 'scores = ["fid"]\nmetrics = ["fid"]')
    assert "table.metrics: table.metrics is the old name of table.scores" in error(tmp_path, text)
    old = edit('scores = ["fid", "is_mean"]', 'metrics = ["fid", "fid"]')
    assert "table.metrics: got ['fid', 'fid']; a score is listed twice" in error(tmp_path, old)


def test_objective_direction_defaults_to_the_score_direction(tmp_path):
    text = edit('{ score = "fid", direction = "minimize" }', '{ score = "precision" }')
    study = load_study(write(tmp_path, text))
    assert (study.objective_score, study.direction) == ("precision", "maximize")


@pytest.mark.parametrize(
    ("search", "extra", "expected"),
    [
        ('"train.lr" = { low = 1e-3, high = 1e-5 }', "", "search.train.lr: low must be < high"),
        (
            '"train.lr" = { low = 0.0, high = 1e-3, log = true }',
            "",
            "search.train.lr.low: a log range needs low > 0, got 0.0",
        ),
        (
            '"train.lr" = { low = 1e-5, high = 1e-3, base = 2 }',
            "",
            "search.train.lr.base: unknown key; allowed: low, high, log, step",
        ),
        (
            '"train.steps" = { low = 1, high = 10.5 }',
            "",
            "search.train.steps: train.steps is an integer; got low=1, high=10.5",
        ),
        (
            '"architecture.name" = { low = 1, high = 2 }',
            "",
            "search.architecture.name: architecture.name is not a number",
        ),
        (
            '"architecture.name" = { choices = ["ddpm", "ddpn"] }',
            "",
            "search.architecture.name: unknown architecture 'ddpn'",
        ),
        ('"train.lr" = [1e-4, 1e-3]', "", "search.train.lr: got [0.0001, 0.001]; expected"),
        ('"train.lr" = { low = 1e-5, high = 1e-3 }', "drop", "n_trials: a study with [search]"),
        ('"train.lr" = { low = 1e-5, high = 1e-3 }', "n_trials = 0", "n_trials: got 0; expected"),
        (
            '"train.lr" = { low = 1e-5, high = 1e-3 }',
            '"model.dropout" = [0.0]',
            "grid: a study with [search] may only fix seeds in [grid], found model.dropout",
        ),
    ],
)
def test_bad_search_space_is_rejected(tmp_path, search, extra, expected):
    lines = ['description = "TPE"']
    if extra != "drop":
        lines.append("n_trials = 3" if not extra.startswith("n_trials") else extra)
    lines += ["[grid]", "seed = [0]"]
    if extra.startswith('"model'):
        lines.append(extra)
    lines += ["[search]", search]
    assert expected in error(tmp_path, "\n".join(lines) + "\n")


def test_n_trials_in_a_grid_study_is_rejected(tmp_path):
    text = edit('description = "2 x 2 on 8x8 digits"', 'description = "x"\nn_trials = 3')
    assert "n_trials: got 3, but a grid study runs each cell once" in error(tmp_path, text)


@pytest.mark.parametrize(
    ("labels", "expected"),
    [
        ('"model.dropout" = { "0" = "x" }', "labels.model.dropout: not a grid axis or search"),
        ('"architecture.name" = { "dual" = "Dual" }', "labels.architecture.name.dual: 'dual' is"),
        ('"architecture.name" = { "ddpm" = 3 }', "labels.architecture.name.ddpm: got 3; expected"),
    ],
)
def test_bad_labels_are_rejected(tmp_path, labels, expected):
    assert expected in error(tmp_path, VALID + f"[labels]\n{labels}\n")


# --- finding studies by name --------------------------------------------------------------


@pytest.mark.parametrize("name", ["../../x", "../studies/quickstart", "a/b", "/etc/passwd"])
def test_names_that_could_escape_the_studies_folder_are_rejected(in_repo, name):
    with pytest.raises(BenchError) as info:
        find_study(name)
    message = str(info.value)
    assert f"{name!r} is neither a study name" in message
    assert (
        "available studies in studies/: digits_ablation, lpips_budget, lpips_weight, "
        "metric_loss, quickstart" in message
    )


def test_unknown_study_name_lists_the_available_studies(in_repo):
    with pytest.raises(BenchError, match="unknown study 'quikstart'; available studies in "
                       "studies/: digits_ablation, lpips_budget, lpips_weight, metric_loss, "
                       "quickstart"):  # fmt: skip
        load_study("quikstart")


def test_missing_study_path_is_reported(tmp_path):
    with pytest.raises(BenchError, match=r"study file '.*nope\.toml' does not exist"):
        find_study(str(tmp_path / "nope.toml"))


def test_study_file_whose_name_is_not_a_safe_folder_name_is_rejected(tmp_path):
    path = write(tmp_path, VALID, name="my study")
    with pytest.raises(BenchError, match=r"the study name 'my study' .* may only use letters"):
        load_study(path)


def test_a_study_name_may_carry_the_toml_suffix(in_repo):
    assert find_study("quickstart.toml") == Path("studies/quickstart.toml")
    assert find_study("studies/quickstart.toml") == Path("studies/quickstart.toml")


def test_a_path_to_a_study_file_works(tmp_path):
    path = write(tmp_path, VALID, name="mine")
    assert find_study(path) == Path(path)
    assert load_study(path).name == "mine"


# --- --set overrides ----------------------------------------------------------------------


def test_parse_override_reads_toml_values_and_bare_strings():
    assert parse_override("train.steps=10") == ("train.steps", 10)
    assert parse_override("train.lr = 1e-3") == ("train.lr", 1e-3)
    assert parse_override("metric.weight=1") == ("metric.weight", 1.0)
    assert parse_override("architecture.name=cas-dm") == ("architecture.name", "cas-dm")
    assert parse_override('architecture.name="x0-ddpm"') == ("architecture.name", "x0-ddpm")
    assert parse_override("model.channel_mults=[1, 2, 2]") == ("model.channel_mults", [1, 2, 2])
    assert parse_override("train.compile=true") == ("train.compile", True)
    assert parse_override("data.dataset=folder:/data/x=1") == ("data.dataset", "folder:/data/x=1")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("keyvalue", "--set 'keyvalue': expected KEY=VALUE with a dotted config key"),
        ("=3", "--set '=3': expected KEY=VALUE"),
        ("trian.steps=10", "--set trian.steps=10: trian.steps: unknown key 'trian'; allowed: seed"),
        ("train.stepz=10", "unknown key 'stepz'; allowed: train.steps, train.batch_size"),
        ("train=10", "--set train=10: train: is a table, not a value; set one of: train.steps"),
        ("seed.x=1", "--set seed.x=1: seed.x: seed is a value, not a table of keys"),
        ("train.steps=abc", "--set train.steps=abc: train.steps: got 'abc' (str); expected int"),
        ("train.steps=0", "--set train.steps=0: train.steps: must be >= 1, got 0"),
        ("metric.net=vgg19", "metric.net: got 'vgg19'; allowed: one of 'alex', 'vgg', 'squeeze'"),
        (
            "architecture.name=dddpm",
            "--set architecture.name=dddpm: architecture.name: unknown architecture 'dddpm'; "
            "valid architectures: cas-dm, ddpm, dual, x0-ddpm",
        ),
        ("eval.evaluator=fid", "unknown evaluator 'fid'; valid evaluators: classifier, inception"),
    ],
)
def test_bad_override_is_rejected_with_its_text(text, expected):
    with pytest.raises(BenchError) as info:
        parse_override(text)
    assert expected in str(info.value)


def test_override_replaces_base_values_and_grid_axes(tmp_path):
    path = write(tmp_path, VALID)
    study = load_study(path, ["train.steps=7", "architecture.name=cas-dm", "seed=5"])
    assert study.grid["architecture.name"] == ["cas-dm"] and study.grid["seed"] == [5]
    assert len(study.cells()) == 2
    assert all(study.config(c).train.steps == 7 for c in study.cells())
    assert study.overrides == ("train.steps=7", "architecture.name=cas-dm", "seed=5")
    assert study.base["train"]["steps"] == 7


def test_override_of_a_search_axis_fixes_it_to_one_choice(tmp_path):
    text = 'description = "TPE"\nn_trials = 2\n[search]\n"train.lr" = { low = 1e-5, high = 1e-3 }\n'
    study = load_study(write(tmp_path, text), ["train.lr=2e-4"])
    assert study.search["train.lr"] == Choices((2e-4,))


def test_override_that_breaks_a_cell_is_named_as_the_cause(tmp_path):
    message = error(tmp_path, VALID, ["model.channel_mults=[1, 2, 2, 2, 2]"])
    assert "base.data.resolution: got 8; a UNet with 5 levels" in message


def test_override_value_bad_in_context_names_the_override(tmp_path):
    text = edit("steps = 4", 'steps = 4\n[base.sample]\nsampler = "ddpm"')
    message = error(tmp_path, text, ["sample.eta=0.5"])
    assert "--set sample.eta=0.5: only the ddim sampler takes eta, and no cell" in message


def test_field_type_resolves_dotted_keys():
    assert field_type("train.steps") is int
    assert field_type("metric.weight") is float
    assert field_type("seed") is int


def test_set_on_a_labelled_axis_keeps_the_files_labels_valid():
    study = load_study("quickstart", ["metric.name=none"])
    assert study.grid["metric.name"] == ["none"]
    assert len(study.cells()) == 3
    assert study.labels["metric.name"]["l2"] == "L2"
