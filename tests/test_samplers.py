"""Samplers against closed forms and independently written references (Ho et al.; Song et al.)."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from casdm.components import registry
from casdm.config import ConfigError, SampleConfig
from casdm.prediction import Prediction
from casdm.samplers import ddim, ddpm, generate, respace
from casdm.schedule import Schedule

T = 40
SHAPE = (1, 4, 4)
U = 2.0**-24  # float32's unit round-off


def posterior_roundoff(schedule: Schedule, steps: int) -> float:
    """The float32 round-off of a DDPM run, relative to its largest value, against a reference
    with float64 coefficients. Each step casts abar to float32 (an absolute error <= U) and
    takes 1 - abar, a relative U / (1 - abar) (400 U at t = 0 of linear T = 40), plus a couple
    of roundings U of the other coefficients and the sum; each step's error reaches the output
    at most at unit gain (the posterior mean's coefficients and x0_hat's slope are <= 1), so
    the steps' errors add up: 2 U sum (2 + 1 / (1 - abar_t)) over the visited steps.
    Measured: 1/50 to 1/7 of it."""
    ts, _ = respace(schedule, steps, torch.device("cpu"))
    abar = schedule.abar[ts]
    return 2 * U * float((2 + 1 / (1 - abar)).sum())


def abar_of(schedule: Schedule, t: int) -> float:
    return schedule.abar[t].item()


class Oracle(nn.Module):
    """Knows the true x0; returns it with the eps it implies at (x_t, t), written out by hand."""

    def __init__(self, schedule: Schedule, x0: torch.Tensor):
        super().__init__()
        self.schedule, self.x0 = schedule, x0

    def forward(self, x_t: torch.Tensor, t: torch.Tensor) -> Prediction:
        abar = self.schedule.abar[t].float().view(-1, 1, 1, 1)
        return Prediction((x_t - abar.sqrt() * self.x0) / (1 - abar).sqrt(), self.x0)


class Toy(nn.Module):
    """A tiny elementwise model whose x0 leaves [-1, 1] (so clipping matters) and whose eps is
    not the one implied by its x0 (so using Prediction.eps, not a re-derived eps, matters)."""

    def __init__(self, dropout: float = 0.0):
        super().__init__()
        self.dropout = nn.Dropout(dropout)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor) -> Prediction:
        scale = (1 + t.float() / T).view(-1, 1, 1, 1)
        return Prediction(0.3 * x_t, self.dropout(1.5 * scale * x_t))


def noise_like(x, g):
    return torch.randn(x.shape, generator=g)


@pytest.mark.parametrize("name", ["linear", "cosine"])
@pytest.mark.parametrize("steps", [1, 3, 7, T])
def test_ddim_eta0_with_oracle_model_returns_the_true_x0(name, steps):
    schedule = Schedule.named(name, T)
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(3, *SHAPE, generator=g) * 1.8 - 0.9
    x_T = torch.randn(3, *SHAPE, generator=g)
    out = ddim(Oracle(schedule, x0), schedule, x_T, steps=steps, generator=g)
    # Exactly: the last step has abar_prev = 1, so x = 1 * x0_hat + 0 * eps = x0 (|x0| < 1).
    assert torch.equal(out, x0)


def trailing(T: int, steps: int) -> list[int]:
    """Lin et al. 2024's "trailing" steps, as diffusers' DDIMScheduler writes them."""
    return sorted(int(t) - 1 for t in np.round(np.arange(T, 0, -T / steps))[:steps])


def test_respace_gives_diffusers_trailing_timesteps_for_every_number_of_steps():
    from diffusers import DDIMScheduler  # imported here: seconds

    for T_train in (40, 100, 1000):
        schedule = Schedule.named("linear", T_train)
        reference = DDIMScheduler(num_train_timesteps=T_train, timestep_spacing="trailing")
        for steps in range(1, T_train + 1):
            reference.set_timesteps(steps)
            want = sorted(reference.timesteps.tolist())
            if len(want) == steps + 1:  # diffusers' float arange overshoots to timestep -1
                assert want[0] == -1
                want = want[1:]
            got = respace(schedule, steps, torch.device("cpu"))[0]
            assert got == want, (T_train, steps)
            assert got == sorted(set(got))  # distinct, increasing
    # Rounding, not flooring, where the number of steps does not divide T.
    assert respace(Schedule.named("linear", 1000), 7, torch.device("cpu"))[0] == [
        142, 285, 428, 570, 713, 856, 999,
    ]  # fmt: skip


@pytest.mark.parametrize("clip_x0", [True, False])
@pytest.mark.parametrize(("T_train", "steps"), [(40, 8), (1000, 50)])
def test_ddim_eta0_equals_diffusers_ddim_scheduler_with_trailing_spacing(clip_x0, T_train, steps):
    # Where the steps divide T, diffusers' step (prev = t - T // S, alpha before the first step
    # = 1 with set_alpha_to_one) visits what we visit; it clips x0 as clip_sample says and
    # keeps the model's eps, as we do.
    from diffusers import DDIMScheduler

    schedule = Schedule.named("cosine", T_train)
    reference = DDIMScheduler(
        num_train_timesteps=T_train,
        trained_betas=schedule.betas.tolist(),
        timestep_spacing="trailing",
        set_alpha_to_one=True,
        clip_sample=clip_x0,
        prediction_type="epsilon",
    )
    reference.set_timesteps(steps)

    class EpsNet(nn.Module):
        def forward(self, x_t, t):
            eps = torch.tanh(2 * x_t) * (1 + t.float().view(-1, 1, 1, 1) / T_train)
            return Prediction(eps, schedule.x0_from_eps(x_t, t, eps).float())

    x_T = torch.randn(3, *SHAPE, generator=torch.Generator().manual_seed(4))
    got = ddim(EpsNet(), schedule, x_T, steps=steps, generator=torch.Generator(), clip_x0=clip_x0)
    x = x_T
    for t in reference.timesteps:
        eps = EpsNet()(x, torch.full((3,), int(t))).eps
        x = reference.step(eps, int(t), x, eta=0.0).prev_sample
    # diffusers keeps alphas_cumprod in float32 (a cumulative product of float32 1 - beta):
    # each step's result scales as sqrt of the abar it uses, so it carries their relative
    # error (the largest, e, measured from the scheduler's own table: 1.3e-5) to the end, twice
    # at most (abar and abar_prev); the float32 steps add ~4 U each, and sqrt(1 - abar) in
    # float32 a U / sqrt(1 - abar) of the noise. Scaled by the largest value (without clipping,
    # x0 reaches 2e4 where abar is 2e-9). Measured: 1/40 to 1/4 of it.
    ts = [int(t) for t in reference.timesteps]
    ours = schedule.abar[ts]
    theirs = reference.alphas_cumprod.double()[ts]
    e = float(((theirs - ours) / ours).abs().max())
    rtol = 2 * e + U * float((4 + 1 / (1 - ours).sqrt()).sum())
    torch.testing.assert_close(got, x, rtol=0, atol=rtol * x.abs().max().item())


@pytest.mark.parametrize("sampler", ["ddim", "ddpm"])
def test_clip_x0_false_uses_the_predicted_x0_as_is(sampler):
    schedule = Schedule.named("linear", T)
    x_T = torch.randn(2, *SHAPE, generator=torch.Generator().manual_seed(1))

    def run(clip_x0):
        g = torch.Generator().manual_seed(5)
        sample = registry("sampler").get(sampler).load()
        return sample(Toy(), schedule, x_T, steps=7, generator=g, clip_x0=clip_x0)

    ref = {"ddim": reference_ddim, "ddpm": reference_ddpm}[sampler]
    args = (0.0,) if sampler == "ddim" else ()
    # DDIM (eta 0) and its reference do the same float64-scalar times float32-tensor steps:
    # equal. DDPM's float32 posterior coefficients: `posterior_roundoff` of the largest value.
    rtol = 0.0 if sampler == "ddim" else posterior_roundoff(schedule, 7)
    for clip_x0 in (True, False):
        want = ref(Toy(), schedule, x_T, 7, *args, torch.Generator().manual_seed(5), clip_x0)
        atol = rtol * want.abs().max().item()
        torch.testing.assert_close(run(clip_x0), want, rtol=0, atol=atol)
    assert run(False).abs().max() > 1  # Toy's x0 leaves [-1, 1]; nothing clips it
    # The last step returns x0_hat (DDIM: times 1 exactly; DDPM: times beta / (1 - abar) = 1
    # in float32, off by (2 + 1 / (1 - abar)) U at the first visited step).
    last = schedule.abar[respace(schedule, 7, torch.device("cpu"))[0][0]].item()
    assert run(True).abs().max() <= 1 + 2 * U * (2 + 1 / (1 - last))


def test_respace_strides_evenly_and_always_starts_at_T_minus_1():
    schedule = Schedule.named("linear", 1000)
    ts, sub = respace(schedule, 50, torch.device("cpu"))
    assert ts == list(range(19, 1000, 20))
    assert respace(schedule, 1, torch.device("cpu"))[0] == [999]
    assert respace(schedule, 1000, torch.device("cpu"))[0] == list(range(1000))
    # The respaced schedule keeps abar at the visited steps (improved-diffusion's respacing):
    # its betas 1 - r (r = abar / abar_prev) and the cumulative product of 1 - beta round each
    # factor by ~3 EPS / r relative (1 - r and 1 - beta absolutely by EPS / 2 each), 50
    # independent factors: 3 sqrt(50) EPS / min r (measured: 1/20 of it).
    abar = schedule.abar[ts]
    r = abar / torch.cat([torch.ones(1, dtype=abar.dtype), abar[:-1]])
    eps = torch.finfo(torch.float64).eps
    rtol = 3 * math.sqrt(len(ts)) * eps / r.min().item()
    torch.testing.assert_close(sub.abar, abar, rtol=rtol, atol=0)


def reference_ddpm(model, schedule, x_T, steps, g, clip_x0=True):
    """Ho et al. 2020, Eq. 6-7 on the respaced betas beta_i = 1 - abar_i / abar_prev_i."""
    ts = trailing(T, steps)
    x = x_T
    for i in reversed(range(steps)):
        a = abar_of(schedule, ts[i])
        a_prev = abar_of(schedule, ts[i - 1]) if i > 0 else 1.0
        beta = 1 - a / a_prev
        x0 = model(x, torch.full((x.shape[0],), ts[i])).x0
        x0 = x0.clamp(-1, 1) if clip_x0 else x0
        mean = (math.sqrt(a_prev) * beta / (1 - a)) * x0 + (
            math.sqrt(1 - beta) * (1 - a_prev) / (1 - a)
        ) * x
        var = (1 - a_prev) / (1 - a) * beta
        x = mean + math.sqrt(var) * noise_like(x, g) if i > 0 else mean
    return x


@pytest.mark.parametrize("steps", [T, 6, 7])
def test_ddpm_matches_ho_et_al_posterior_written_independently(steps):
    schedule = Schedule.named("linear", T)
    x_T = torch.randn(2, *SHAPE, generator=torch.Generator().manual_seed(1))
    out = ddpm(Toy(), schedule, x_T, steps=steps, generator=torch.Generator().manual_seed(5))
    ref = reference_ddpm(Toy(), schedule, x_T, steps, torch.Generator().manual_seed(5))
    atol = posterior_roundoff(schedule, steps) * ref.abs().max().item()
    torch.testing.assert_close(out, ref, rtol=0, atol=atol)
    # Ends at the clipped x0_hat times beta / (1 - abar) = 1, off by the first visited step's
    # (2 + 1 / (1 - abar)) U in float32.
    last = schedule.abar[respace(schedule, steps, torch.device("cpu"))[0][0]].item()
    assert out.abs().max() <= 1 + 2 * U * (2 + 1 / (1 - last))


def reference_ddim(model, schedule, x_T, steps, eta, g, clip_x0=True):
    """Song et al. 2021, Eq. 12 with sigma from Eq. 16, clipped x0 and the model's own eps."""
    ts = trailing(T, steps)
    x = x_T
    for i in reversed(range(steps)):
        a = abar_of(schedule, ts[i])
        a_prev = abar_of(schedule, ts[i - 1]) if i > 0 else 1.0
        eps, x0 = model(x, torch.full((x.shape[0],), ts[i]))
        sigma = eta * math.sqrt((1 - a_prev) / (1 - a)) * math.sqrt(1 - a / a_prev)
        x0 = x0.clamp(-1, 1) if clip_x0 else x0
        x = math.sqrt(a_prev) * x0 + math.sqrt(1 - a_prev - sigma**2) * eps
        if i > 0:
            x = x + sigma * noise_like(x, g)
    return x


@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
def test_ddim_matches_song_et_al_eq12_with_clipped_x0_and_model_eps(eta):
    schedule = Schedule.named("cosine", T)
    x_T = torch.randn(2, *SHAPE, generator=torch.Generator().manual_seed(1))
    out = ddim(Toy(), schedule, x_T, steps=7, generator=torch.Generator().manual_seed(3), eta=eta)
    ref = reference_ddim(Toy(), schedule, x_T, 7, eta, torch.Generator().manual_seed(3))
    # The same float64-scalar times float32-tensor steps, but sigma written as sqrt(x y) here
    # and sqrt(x) sqrt(y) there: one float64 ulp apart, which may round to float32 sigma one U
    # apart: <= 2 U sigma |z| per step (sigma <= eta, |z| < 5), carried at unit gain. eta 0:
    # equal. Measured: equal.
    torch.testing.assert_close(out, ref, rtol=0, atol=2 * U * 7 * eta * 5)


@pytest.mark.parametrize("steps", [T, 5])
def test_ddim_eta1_equals_ddpm_when_eps_is_consistent_with_x0(steps):
    schedule = Schedule.named("linear", T)

    class Consistent(nn.Module):
        def forward(self, x_t, t):
            x0 = torch.tanh(x_t)  # inside [-1, 1], so clipping leaves it alone
            return Prediction(schedule.eps_from_x0(x_t, t, x0), x0)

    x_T = torch.randn(4, *SHAPE, generator=torch.Generator().manual_seed(2))
    a = ddim(
        Consistent(),
        schedule,
        x_T,
        steps=steps,
        generator=torch.Generator().manual_seed(9),
        eta=1.0,
    )
    b = ddpm(Consistent(), schedule, x_T, steps=steps, generator=torch.Generator().manual_seed(9))
    # DDIM's float64 step coefficients vs DDPM's float32 ones (`posterior_roundoff`); the
    # model's eps_from_x0 divides float32 round-off of x_t (U |x|) by sqrt(1 - abar), which
    # DDIM multiplies back by sqrt(1 - abar_prev - sigma^2) <= sqrt(1 - abar): U per step more.
    # Measured: 1/60 to 1/17 of it.
    rtol = posterior_roundoff(schedule, steps) + 2 * U * steps
    torch.testing.assert_close(a, b, rtol=0, atol=rtol * b.abs().max().item())


@pytest.mark.parametrize(("name", "eta"), [("ddpm", 0.0), ("ddim", 0.7)])
def test_same_generator_seed_gives_identical_samples_and_another_seed_differs(name, eta):
    schedule = Schedule.named("linear", T)
    x_T = torch.randn(2, *SHAPE, generator=torch.Generator().manual_seed(0))

    def run(seed):
        g = torch.Generator().manual_seed(seed)
        sampler = registry("sampler").get(name).load()
        options = {"eta": eta} if name == "ddim" else {}
        return sampler(Toy(), schedule, x_T, steps=10, generator=g, **options)

    assert torch.equal(run(1), run(1))
    assert not torch.allclose(run(1), run(2))


def test_ddim_eta0_draws_no_noise():
    schedule = Schedule.named("linear", T)
    g = torch.Generator().manual_seed(0)
    before = g.get_state()
    ddim(Toy(), schedule, torch.randn(2, *SHAPE), steps=5, generator=g)
    assert torch.equal(g.get_state(), before)


@pytest.mark.parametrize("steps", [0, T + 1])
def test_steps_outside_1_to_T_is_a_config_error_naming_sample_steps(steps):
    schedule = Schedule.named("linear", T)
    with pytest.raises(ConfigError, match=rf"sample\.steps: must be in \[1, {T}\].*got {steps}"):
        ddim(Toy(), schedule, torch.randn(1, *SHAPE), steps=steps, generator=torch.Generator())


def test_ddpm_takes_no_eta_and_ddim_rejects_eta_above_1():
    schedule = Schedule.named("linear", T)
    x_T = torch.randn(1, *SHAPE)
    with pytest.raises(TypeError, match="eta"):
        ddpm(Toy(), schedule, x_T, steps=3, generator=torch.Generator(), eta=0.5)
    # One configuration serves several samplers: eta is ddim's option, unused by ddpm.
    assert not hasattr(SampleConfig(sampler="ddpm", eta=0.5), "eta")
    with pytest.raises(ConfigError, match=r"etta: unknown key for sampler 'ddpm'; allowed: "):
        SampleConfig(sampler="ddpm", etta=0.5)
    with pytest.raises(ConfigError, match=r"eta: must be in \[0, 1\], got 1.5"):
        SampleConfig(eta=1.5)
    with pytest.raises(ConfigError, match=r"sample\.eta: DDIM's eta must be in \[0, 1\], got 1.5"):
        ddim(Toy(), schedule, x_T, steps=3, generator=torch.Generator(), eta=1.5)


def sample_config(**kwargs) -> SampleConfig:
    return SampleConfig(**{"steps": 6, "num_samples": 5, "batch_size": 2, **kwargs})


def test_generate_returns_num_samples_in_batches_with_a_partial_last_batch():
    schedule = Schedule.named("linear", T)
    calls = []
    out = generate(
        Toy(),
        schedule,
        sample_config(),
        SHAPE,
        seed=0,
        device="cpu",
        progress=lambda d, n: calls.append((d, n)),
    )
    assert out.shape == (5, *SHAPE)
    assert out.dtype == torch.float32 and out.device.type == "cpu"
    assert out.min() >= -1 and out.max() <= 1
    assert calls == [(2, 5), (4, 5), (5, 5)]


@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
def test_generate_same_seed_identical_other_seed_different_and_model_mode_restored(sampler):
    schedule = Schedule.named("linear", T)
    model = Toy(dropout=0.5).train()  # in train mode dropout would make every call differ
    cfg = sample_config(sampler=sampler)
    a = generate(model, schedule, cfg, SHAPE, seed=3, device="cpu")
    b = generate(model, schedule, cfg, SHAPE, seed=3, device="cpu")
    c = generate(model, schedule, cfg, SHAPE, seed=4, device="cpu")
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)
    assert model.training


def test_generate_deterministic_ddim_sample_i_depends_on_seed_and_i_only():
    schedule = Schedule.named("linear", T)
    full = generate(Toy(), schedule, sample_config(batch_size=2), SHAPE, seed=7, device="cpu")
    one_batch = generate(Toy(), schedule, sample_config(batch_size=5), SHAPE, seed=7, device="cpu")
    prefix = generate(
        Toy(), schedule, sample_config(num_samples=3, batch_size=3), SHAPE, seed=7, device="cpu"
    )
    # Toy and DDIM's steps are elementwise, correctly rounded operations (+, *, sqrt, clamp):
    # a sample's numbers do not depend on the batch it is in. Equal.
    assert torch.equal(one_batch, full)
    assert torch.equal(prefix, full[:3])
    assert not torch.allclose(full[0], full[1])  # each sample has its own x_T


def test_generate_unknown_sampler_lists_the_valid_ones():
    with pytest.raises(
        ConfigError, match="sampler: unknown sampler 'euler'; valid samplers: ddim, ddpm"
    ):
        sample_config(sampler="euler")


def test_generate_passes_sample_clip_x0_to_the_sampler():
    schedule = Schedule.named("linear", T)
    kwargs = {"seed": 0, "device": "cpu"}
    clipped = generate(Toy(), schedule, sample_config(), SHAPE, **kwargs)
    unclipped = generate(Toy(), schedule, sample_config(clip_x0=False), SHAPE, **kwargs)
    assert SampleConfig().clip_x0 and not torch.equal(clipped, unclipped)
    assert unclipped.abs().max() <= 1  # stored images are [-1, 1] either way
