"""Training: it learns, it resumes bitwise, it fails loudly on NaNs and on foreign checkpoints."""

import pytest
import torch
from distributed_worker import images as distributed_images
from distributed_worker import theta_runs
from torch import nn

import casdm.batches
from casdm.architectures import CasDM, build_model
from casdm.batches import fits_on
from casdm.checkpoint import CheckpointError, load_checkpoint
from casdm.config import ArchitectureConfig, DataConfig, MetricConfig, ModelConfig, TrainConfig
from casdm.data import from_uint8, load_dataset
from casdm.metrics import build_metric
from casdm.schedule import Schedule
from casdm.train import (
    Performance,
    clip_gradients,
    ema_update,
    learning_rate,
    parameter_groups,
    train,
)

TINY = ModelConfig(base_channels=8, channel_mults=(1,), attention_resolutions=(), dropout=0.1)


@pytest.fixture(scope="module")
def digits() -> torch.Tensor:
    return load_dataset(DataConfig(dataset="digits", resolution=8), "train").images  # [N, 1, 8, 8]


def tiny_model(arch: str, init_seed: int = 0, model: ModelConfig = TINY) -> nn.Module:
    torch.manual_seed(init_seed)
    return build_model(ArchitectureConfig(name=arch), model, Schedule.named("linear", 100), 1, 8)


def config(**kwargs) -> TrainConfig:
    defaults = {"steps": 5, "batch_size": 8, "lr": 1e-3, "warmup_steps": 4, "log_every": 2}
    return TrainConfig(**{**defaults, **kwargs})


def test_a_hundred_steps_on_digits_halve_the_loss(digits):
    result = train(
        tiny_model("ddpm"),
        build_metric(MetricConfig(name="none")),
        digits,
        config(steps=100, batch_size=16, lr=2e-3, warmup_steps=5, log_every=20),
        seed=0,
    )
    losses = [record["loss"] for record in result.history]
    assert len(losses) == 5
    assert losses[-1] < 0.5 * losses[0], losses
    assert result.step == 100 and result.resumed_from is None
    assert result.images_per_s > 0 and result.wall_s > 0


def test_uint8_pixels_on_the_device_or_the_host_train_as_their_float_images(monkeypatch):
    """Datasets reach training as uint8 pixels, kept so (a quarter of the memory) on the
    device, or on the host when too large for it, and mapped to [-1, 1] batch by batch:
    bitwise the run on the mapped images."""
    pixels = load_dataset(DataConfig(dataset="digits", resolution=8), "train").pixels
    assert pixels.dtype == torch.uint8 and pixels.shape == (1437, 1, 8, 8)
    metric = build_metric(MetricConfig(name="l2", weight=0.5))
    notices = []
    runs = [
        train(tiny_model("cas-dm"), metric, images, config(), seed=0, **kwargs)
        for images, kwargs in (
            (from_uint8(pixels), {}),
            (pixels, {}),
            (pixels, {"on_device": False, "on_notice": notices.append}),
        )
    ]
    assert notices == []  # asked for: no notice
    # Decided for them (a device without room for them, here the CPU): told so.
    monkeypatch.setattr(casdm.batches, "fits_on", lambda device, nbytes: False)
    runs.append(
        train(tiny_model("cas-dm"), metric, pixels, config(), seed=0, on_notice=notices.append)
    )
    assert notices == [
        "the training images (0.00 GiB) need more than 25% of cpu's free memory: they stay in "
        "host memory and each batch is copied over"
    ]
    losses = [[record["loss"] for record in run.history] for run in runs]
    assert all(other == losses[0] for other in losses[1:])
    weights = [run.model.state_dict() for run in runs]
    for other in weights[1:]:
        assert all(torch.equal(other[k], weights[0][k]) for k in weights[0])


def test_the_images_stay_on_the_host_when_they_need_over_a_quarter_of_the_gpus_free_memory(
    monkeypatch,
):
    free = 8 * 2**30
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (free, 4 * free))
    cuda = torch.device("cuda")
    assert fits_on(cuda, free // 4) and not fits_on(cuda, free // 4 + 1)
    assert fits_on(torch.device("cpu"), 10**15)  # the host is the device: always there


def test_one_image_is_overfitted_by_the_x0_network(digits):
    # With a single training image the ideal x0 prediction is that image at every (x_t, t), so
    # the x0 MSE can reach zero despite the random t and noise.
    result = train(
        tiny_model(
            "x0-ddpm",
            model=ModelConfig(base_channels=8, channel_mults=(1,), attention_resolutions=()),
        ),
        build_metric(MetricConfig(name="none")),
        digits[:1],
        config(steps=100, batch_size=8, lr=6e-3, warmup_steps=5, log_every=20),
        seed=0,
    )
    assert result.history[-1]["x0_mse"] < 0.01, result.history
    assert result.history[0]["x0_mse"] > 10 * result.history[-1]["x0_mse"]


def test_stop_and_resume_ends_bitwise_equal_to_an_uninterrupted_run(digits, tmp_path):
    metric = build_metric(MetricConfig(name="l2", weight=0.5))
    # cas-dm: two networks and every loss term; dropout 0.1: the global RNG matters too;
    # warmup_steps=4 straddles the stop at step 3, and the resumed run has more total steps.
    path = tmp_path / "ckpt.pt"
    first = train(
        tiny_model("cas-dm"),
        metric,
        digits,
        config(steps=3, checkpoint_every=2),
        seed=1,
        checkpoint_path=path,
    )
    assert first.resumed_from is None and load_checkpoint(path)["step"] == 3
    resumed = train(
        tiny_model("cas-dm", init_seed=99),
        metric,
        digits,
        config(steps=6),
        seed=1,
        checkpoint_path=path,
    )
    straight = train(tiny_model("cas-dm"), metric, digits, config(steps=6), seed=1)

    assert resumed.resumed_from == 3 and resumed.step == straight.step == 6
    for got, want in [(resumed.model, straight.model), (resumed.ema, straight.ema)]:
        for (name, a), b in zip(got.state_dict().items(), want.state_dict().values(), strict=True):
            assert torch.equal(a, b), name
    assert load_checkpoint(path)["step"] == 6
    # The records after the resume are those of the uninterrupted run (log_every=2).
    assert [r["step"] for r in resumed.history] == [4, 6]
    assert resumed.history[-1]["loss"] == straight.history[-1]["loss"]


def test_checkpoint_holds_plain_state_and_the_config_json(digits, tmp_path):
    path = tmp_path / "ckpt.pt"
    train(
        tiny_model("ddpm"),
        build_metric(MetricConfig()),
        digits,
        config(steps=2),
        seed=0,
        checkpoint_path=path,
        config_json='{"seed": 0}',
    )
    state = load_checkpoint(path)  # torch.load(weights_only=True): nothing but plain data
    assert set(state) == {
        "model",
        "ema",
        "optimizer",
        "step",
        "seed",
        "generator",
        "torch_rng",
        "config",
    }
    assert state["config"] == '{"seed": 0}' and state["step"] == 2 and state["seed"] == 0


def test_resume_refuses_a_checkpoint_holding_pickled_objects(digits, tmp_path):
    path = tmp_path / "ckpt.pt"
    torch.save({"step": 1, "model": nn.Linear(1, 1)}, path)  # a pickled module, not a state dict
    with pytest.raises(CheckpointError, match="pickled Python objects"):
        train(
            tiny_model("ddpm"),
            build_metric(MetricConfig()),
            digits,
            config(),
            seed=0,
            checkpoint_path=path,
        )


def test_resume_refuses_checkpoints_of_another_seed_model_or_a_later_step(digits, tmp_path):
    path = tmp_path / "ckpt.pt"
    metric = build_metric(MetricConfig())
    first = train(tiny_model("ddpm"), metric, digits, config(steps=2), seed=0, checkpoint_path=path)
    again = train(
        tiny_model("ddpm", init_seed=5),
        metric,
        digits,
        config(steps=2),
        seed=0,
        checkpoint_path=path,
    )
    assert again.resumed_from == 2 and again.step == 2 and again.history == []  # nothing to do
    for a, b in zip(again.model.parameters(), first.model.parameters(), strict=True):
        assert torch.equal(a, b)
    with pytest.raises(
        CheckpointError, match="seed 0, this run has seed 1; use seed 0 to continue"
    ):
        train(tiny_model("ddpm"), metric, digits, config(), seed=1, checkpoint_path=path)
    with pytest.raises(
        CheckpointError, match=r"at step 2, past train.steps=1; set train.steps >= 2"
    ):
        train(tiny_model("ddpm"), metric, digits, config(steps=1), seed=0, checkpoint_path=path)
    with pytest.raises(CheckpointError, match="does not fit this run's model") as err:
        train(tiny_model("cas-dm"), metric, digits, config(), seed=0, checkpoint_path=path)
    assert f"delete {path}" in str(err.value)


class StandIn(nn.Module):
    """A minimal architecture: x0_theta = w * x_t; its loss turns NaN at update `nan_at`."""

    def __init__(self, nan_at: int):
        super().__init__()
        self.schedule = Schedule.named("linear", 100)
        self.w = nn.Parameter(torch.ones(()))
        self.nan_at, self.calls = nan_at, 0

    def forward(self, x_t, t):
        raise NotImplementedError  # training never samples

    def loss(self, x0, t, noise, metric):
        self.calls += 1
        x_t = self.schedule.q_sample(x0, t, noise)
        loss = ((x0 - self.w * x_t) ** 2).mean(dim=(1, 2, 3))  # [B]
        if self.calls == self.nan_at:
            loss = loss * float("nan")
        return loss, {"custom": loss.detach().mean()}


def test_nan_loss_raises_naming_the_step_and_writes_no_checkpoint_for_it(digits, tmp_path):
    path = tmp_path / "ckpt.pt"
    model = StandIn(nan_at=3)
    with pytest.raises(FloatingPointError, match=r"non-finite training loss nan .* at step 3 of 5"):
        train(
            model, nn.Identity(), digits, config(checkpoint_every=1), seed=0, checkpoint_path=path
        )
    state = load_checkpoint(path)
    assert state["step"] == 2
    assert torch.isfinite(state["model"]["w"]) and torch.isfinite(model.w)


def test_callback_gets_step_loss_lr_grad_norm_throughput_and_every_term(digits):
    records = []
    result = train(
        tiny_model("cas-dm"),
        build_metric(MetricConfig(name="l2")),
        digits,
        config(steps=5, log_every=2, warmup_steps=4, lr=1e-3),
        seed=0,
        callback=records.append,
    )
    assert records == result.history
    assert [r["step"] for r in records] == [2, 4, 5]
    keys = {"step", "loss", "lr", "grad_norm", "images_per_s", "eps_mse", "x0_mse", "r", "metric"}
    keys |= {"grad_norm/theta", "grad_norm/phi"}  # Cas-DM's two clipping groups
    assert all(set(r) == keys for r in records)
    assert all(r["grad_norm"] >= max(r["grad_norm/theta"], r["grad_norm/phi"]) for r in records)
    assert [r["lr"] for r in records] == pytest.approx([5e-4, 1e-3, 1e-3])
    assert all(r["grad_norm"] > 0 and r["images_per_s"] > 0 for r in records)


def test_learning_rate_warms_up_linearly_then_stays_constant():
    cfg = config(lr=1e-3, warmup_steps=4)
    assert [learning_rate(cfg, s) for s in range(6)] == pytest.approx(
        [2.5e-4, 5e-4, 7.5e-4, 1e-3, 1e-3, 1e-3]
    )
    assert learning_rate(config(lr=1e-3, warmup_steps=0), 0) == 1e-3


def test_ema_update_is_the_exponential_moving_average_of_each_parameter():
    model, ema = nn.Linear(2, 2), nn.Linear(2, 2)
    expected = [
        0.9 * e + 0.1 * p for e, p in zip(ema.parameters(), model.parameters(), strict=True)
    ]
    ema_update(ema, model, decay=0.9)
    for got, want in zip(ema.parameters(), expected, strict=True):
        torch.testing.assert_close(got, want.detach())


def test_metric_parameters_stay_frozen_and_out_of_the_ema(digits):
    class ParamMetric(nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = nn.Conv2d(1, 1, 1)
            self.weight, self.active = 1.0, True

        def forward(self, x0_pred, x0):
            return ((self.proj(x0_pred) - self.proj(x0)) ** 2).mean(dim=(1, 2, 3))

    metric = ParamMetric()
    before = [p.clone() for p in metric.parameters()]
    result = train(tiny_model("ddpm"), metric, digits, config(steps=3), seed=0)
    assert all(torch.equal(a, b) for a, b in zip(before, metric.parameters(), strict=True))
    assert not any(p.requires_grad for p in metric.parameters())
    assert result.history[-1]["metric"] > 0  # the metric took part in the loss
    assert not any(name.startswith("proj") for name in result.ema.state_dict())


def test_train_keeps_an_ema_with_the_configured_decay(digits):
    model = tiny_model("ddpm")
    init = [p.detach().clone() for p in model.parameters()]
    result = train(
        model, build_metric(MetricConfig()), digits, config(steps=1, ema_decay=0.9), seed=0
    )
    for e, p0, p in zip(result.ema.parameters(), init, model.parameters(), strict=True):
        torch.testing.assert_close(e, 0.9 * p0 + 0.1 * p.detach())
    assert type(result.ema) is type(model) and not result.ema.training


def test_cas_dm_theta_and_its_ema_end_bitwise_equal_whatever_the_metric():
    # The paper's premise: theta learns from the eps loss alone. Same seed, dropout 0.1,
    # clipping at 1.0 (active: the norms exceed it), 20 steps; only the metric differs.
    runs = theta_runs(distributed_images())
    reference = runs["none"]
    for variant in ("l2-w0", "l2-w10", "lpips-random"):
        for key in ("theta", "ema"):
            got, want = runs[variant][key], reference[key]
            assert all(torch.equal(got[name], want[name]) for name in want), (variant, key)
    history = runs["l2-w10"]["history"]
    assert min(r["grad_norm/phi"] for r in history) > 1.0
    assert max(r["grad_norm/theta"] for r in history) > 1.0
    # ... and the metric did change phi.
    assert runs["l2-w10"]["history"][-1]["loss"] != reference["history"][-1]["loss"]


def test_joint_clipping_would_let_the_metric_move_theta(monkeypatch):
    # The test above can fail: clipping theta and phi as one group couples them.
    monkeypatch.setattr(CasDM, "parameter_groups", lambda self: {"all": list(self.parameters())})
    runs = theta_runs(distributed_images(), steps=5)
    got, want = runs["l2-w10"]["theta"], runs["l2-w0"]["theta"]
    assert not all(torch.equal(got[name], want[name]) for name in want)


def test_parameter_groups_must_cover_every_parameter_once():
    model = tiny_model("cas-dm")
    groups = parameter_groups(model)
    assert list(groups) == ["theta", "phi"]
    assert parameter_groups(tiny_model("ddpm")).keys() == {"model"}
    model.parameter_groups = lambda: {"theta": list(model.theta.parameters())}
    with pytest.raises(ValueError, match=r"must list every trainable parameter exactly once"):
        parameter_groups(model)


def test_each_group_is_clipped_on_its_own_norm():
    a, b = nn.Parameter(torch.zeros(2)), nn.Parameter(torch.zeros(1))
    a.grad, b.grad = torch.tensor([3.0, 4.0]), torch.tensor([0.5])
    norms = clip_gradients({"a": [a], "b": [b]}, max_norm=1.0)
    assert norms["grad_norm/a"].item() == 5.0 and norms["grad_norm/b"].item() == 0.5
    assert norms["grad_norm"].item() == pytest.approx((25 + 0.25) ** 0.5)
    torch.testing.assert_close(a.grad, torch.tensor([0.6, 0.8]))  # scaled to norm 1
    assert b.grad.item() == 0.5  # under the limit: untouched by a's norm


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_autocast_precisions_train_with_finite_losses(digits, precision):
    """bf16 and fp16 autocast on the CPU (CUDA's default is bf16); fp16 with a loss scaler.
    Cas-DM: two parameter groups, each clipped on its own (unscaled) gradient norm."""
    result = train(
        tiny_model("cas-dm"),
        build_metric(MetricConfig(name="l2")),
        digits,
        config(steps=2, log_every=1, precision=precision),
        seed=0,
    )
    assert result.performance.precision == precision
    for record in result.history:
        assert all(torch.isfinite(torch.tensor(v)) for v in record.values()), record
        assert {"grad_norm/theta", "grad_norm/phi"} <= set(record)
    if precision == "fp16":
        assert result.history[-1]["loss_scale"] > 1 and result.history[-1]["skipped_steps"] == 0


def test_on_the_cpu_auto_options_are_the_plain_fp32_path():
    perf = Performance.resolve(TrainConfig(), torch.device("cpu"))
    assert perf == Performance("fp32", channels_last=False, fused_adamw=False, tf32=False)
    assert perf.autocast_dtype is None and not perf.loss_scaling
    cuda = Performance.resolve(TrainConfig(), torch.device("cuda"))
    assert cuda == Performance("bf16", channels_last=True, fused_adamw=True, tf32=True)
    off = TrainConfig(precision="fp32", channels_last="off", fused_adamw="off", tf32=False)
    assert Performance.resolve(off, torch.device("cuda")).autocast_dtype is None


def test_channels_last_and_fused_adamw_compute_the_same_step(digits):
    """Layout and optimizer kernel change rounding only (dropout 0: masks are drawn in memory
    order, so a channels_last run draws other, equally valid masks)."""
    model = ModelConfig(base_channels=8, channel_mults=(1,), attention_resolutions=())

    def run(**options):
        return train(
            tiny_model("cas-dm", model=model),
            build_metric(MetricConfig(name="l2")),
            digits,
            config(steps=3, log_every=1, **options),
            seed=0,
        )

    plain = run()
    for options in ({"channels_last": "on"}, {"fused_adamw": "on"}):
        other = run(**options)
        for a, b in zip(plain.history, other.history, strict=True):
            assert other.history[0]["loss"] == pytest.approx(plain.history[0]["loss"], rel=1e-5)
            assert b["loss"] == pytest.approx(a["loss"], rel=1e-4), options
        # Adam divides by sqrt(v): a near-zero gradient whose sign rounding flips moves its
        # weight by up to lr either way, so weights agree within 2 lr per step (the bound).
        bound = 2 * 1e-3 * 3
        for a, b in zip(plain.model.parameters(), other.model.parameters(), strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=bound)


@pytest.mark.parametrize(
    "first, then",
    [
        ({"precision": "fp16", "channels_last": "on", "fused_adamw": "on"}, {}),
        ({}, {"precision": "bf16", "channels_last": "on", "fused_adamw": "on"}),
        ({"precision": "fp16"}, {"precision": "fp16"}),
    ],
)
def test_checkpoints_resume_across_speed_options(digits, tmp_path, first, then):
    path = tmp_path / "checkpoint.pt"
    metric = build_metric(MetricConfig(name="l2"))
    train(
        tiny_model("cas-dm"), metric, digits, config(steps=2, **first), seed=0, checkpoint_path=path
    )
    saved = load_checkpoint(path)
    assert ("scaler" in saved) == (first.get("precision") == "fp16")
    result = train(
        tiny_model("cas-dm", init_seed=1),
        metric,
        digits,
        config(steps=4, log_every=1, **then),
        seed=0,
        checkpoint_path=path,
    )
    assert result.resumed_from == 2 and result.step == 4
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in result.history)
    if "scaler" in saved and then.get("precision") == "fp16":  # the loss scale carries on
        assert result.history[-1]["loss_scale"] == saved["scaler"]["scale"]


@pytest.mark.slow
def test_torch_compile_trains_cas_dm_with_per_group_clipping(digits):
    """train.compile compiles the loss (forward and backward); clipping, AdamW and the EMA run
    outside it on the parameters. Several minutes on a 2-core CPU (inductor's C++ build)."""
    result = train(
        tiny_model("cas-dm"),
        build_metric(MetricConfig(name="l2")),
        digits,
        config(steps=3, log_every=1, compile=True),
        seed=0,
    )
    assert result.step == 3
    for record in result.history:
        assert all(torch.isfinite(torch.tensor(v)) for v in record.values()), record
        assert {"grad_norm/theta", "grad_norm/phi"} <= set(record)
