"""Samplers with one signature (as in k-diffusion): `sampler(model, schedule, x_T, *, steps,
generator, clip_x0, **options) -> x0`, each taking its own options as keywords (ddim: eta;
casdm.specs.samplers), plus `generate`, which draws a whole sample set in batches.

Every sampler reads only `model(x_t, t) -> Prediction(eps, x0)`, never the architecture, and
visits an evenly strided subsequence of `steps` of the T training steps (see `respace`).
"""

import dataclasses
import hashlib
import math
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from casdm import distributed
from casdm.config import ConfigError, SampleConfig
from casdm.prediction import Prediction
from casdm.schedule import Schedule

Model = Callable[[torch.Tensor, torch.Tensor], Prediction]


def respace(schedule: Schedule, steps: int, device: torch.device) -> tuple[list[int], Schedule]:
    """The `steps` training steps t_1 < ... < t_S = T - 1 a sampler visits, and their schedule.

    The "trailing" spacing of Lin et al. 2024, Table 2, exactly as diffusers' schedulers compute
    it (timestep_spacing="trailing"): the S values T - k T / S, k = 0 .. S-1, as numpy's float
    arange makes them, rounded half to even, minus 1. Sampling always starts at T - 1; with S = T
    it is every step; when S does not divide T the steps round to the nearest (S = 7, T = 1000:
    142, 285, ..., 999). Where diffusers' arange overshoots to an S+1-th value at 0 (timestep -1,
    e.g. S = 61 of 1000) that value is not a step and is left out.

    The respaced schedule has beta_i = 1 - abar(t_i) / abar(t_{i-1}), as improved-diffusion's
    SpacedDiffusion, with abar before the first visited step = 1 (diffusers' set_alpha_to_one):
    the last update lands on the predicted x0 itself.
    """
    T = schedule.T
    if not 1 <= steps <= T:
        raise ConfigError("sample.steps", f"must be in [1, {T}] (diffusion.timesteps), got {steps}")
    ts = sorted(int(t) - 1 for t in np.round(np.arange(T, 0, -T / steps))[:steps])
    abar = schedule.abar.detach().cpu()[ts]  # float64 [S]
    abar_prev = torch.cat([torch.ones(1, dtype=torch.float64), abar[:-1]])
    return ts, Schedule(1 - abar / abar_prev).to(device)


def _x0_hat(pred: Prediction, clip_x0: bool) -> torch.Tensor:
    """The model's x0 prediction, clipped to [-1, 1] when `clip_x0` (sample.clip_x0)."""
    return pred.x0.clamp(-1, 1) if clip_x0 else pred.x0


def _noise(like: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Standard normal noise shaped like `like`, drawn on the generator's device."""
    z = torch.randn(like.shape, generator=generator, device=generator.device, dtype=like.dtype)
    return z.to(like.device)


@torch.no_grad()
def ddim(
    model: Model,
    schedule: Schedule,
    x_T: torch.Tensor,
    *,
    steps: int,
    generator: torch.Generator,
    clip_x0: bool = True,
    eta: float = 0.0,
) -> torch.Tensor:
    """DDIM, Song et al. 2021, Eq. 12, over `steps` respaced steps; eta=0 is deterministic.

    x_prev = sqrt(abar_prev) x0_hat + sqrt(1 - abar_prev - sigma^2) eps + sigma z, with
    sigma = eta sqrt((1 - abar_prev) / (1 - abar)) sqrt(1 - abar / abar_prev) (Eq. 16), so eta=1
    at steps=T is DDPM's posterior variance. x0_hat is the model's Prediction.x0, clipped to
    [-1, 1] when clip_x0 (diffusers' clip_sample); eps is the model's Prediction.eps as given,
    not re-derived from the clipped x0_hat:
    Cas-DM pairs phi's x0_hat with theta's eps, and an architecture that wants the implied eps
    returns it as its Prediction.eps. Noise z comes from `generator` only.
    """
    if not 0.0 <= eta <= 1.0:
        raise ConfigError("sample.eta", f"DDIM's eta must be in [0, 1], got {eta}")
    ts, sub = respace(schedule, steps, x_T.device)
    abar, abar_prev = sub.abar.tolist(), sub.abar_prev.tolist()
    x_t = x_T  # [B, C, H, W]
    for i in reversed(range(steps)):
        pred = model(x_t, torch.full((x_t.shape[0],), ts[i], device=x_t.device))
        x0_hat = _x0_hat(pred, clip_x0)
        a, a_prev = abar[i], abar_prev[i]
        sigma = eta * math.sqrt((1 - a_prev) / (1 - a) * (1 - a / a_prev))
        # max(0, .): 1 - abar_prev - sigma^2 >= 0 holds exactly for eta <= 1, not after rounding.
        x_t = math.sqrt(a_prev) * x0_hat + math.sqrt(max(0.0, 1 - a_prev - sigma**2)) * pred.eps
        if sigma > 0:
            x_t = x_t + sigma * _noise(x_t, generator)
    return x_t


@torch.no_grad()
def ddpm(
    model: Model,
    schedule: Schedule,
    x_T: torch.Tensor,
    *,
    steps: int,
    generator: torch.Generator,
    clip_x0: bool = True,
) -> torch.Tensor:
    """Ancestral sampling from q(x_{t-1} | x_t, x0_hat), Ho et al. 2020, Eq. 6-7, respaced.

    x0_hat is the model's Prediction.x0, clipped to [-1, 1] when clip_x0 (improved-diffusion's
    clip_denoised); the posterior is parametrized by x0_hat, so Prediction.eps is not used.
    The last step returns the posterior mean, which is x0_hat. Noise comes from `generator` only.
    """
    ts, sub = respace(schedule, steps, x_T.device)
    x_t = x_T  # [B, C, H, W]
    for i in reversed(range(steps)):
        B = x_t.shape[0]
        pred = model(x_t, torch.full((B,), ts[i], device=x_t.device))
        x0_hat = _x0_hat(pred, clip_x0)
        mean, var = sub.posterior(x0_hat, x_t, torch.full((B,), i, device=x_t.device))
        x_t = mean + var.sqrt() * _noise(x_t, generator) if i > 0 else mean
    return x_t


def _sample_seed(seed: int, index: int) -> int:
    """A 64-bit seed for sample `index` of a run seeded with `seed` (a hash: no collisions)."""
    digest = hashlib.blake2b(f"casdm-x_T:{seed}:{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


def generate(
    model: nn.Module,
    schedule: Schedule,
    cfg: SampleConfig,
    shape: tuple[int, int, int],
    *,
    seed: int,
    device: torch.device | str,
    progress: Callable[[int, int], None] | None = None,
) -> torch.Tensor:
    """cfg.num_samples images [N, C, H, W], float32 on the CPU, in [-1, 1], sampled in batches.

    Reproducibility: the same (seed, cfg, shape, device) gives bitwise the same images. x_T of
    sample i is drawn on the CPU from a generator seeded by (seed, i) alone, so with a
    deterministic sampler (ddim, eta=0) sample i does not depend on batch_size or num_samples
    (and only through float arithmetic on the device). The noise of stochastic samplers comes
    from one generator on `device`, seeded from `seed` and used batch after batch.
    The model runs in eval mode (its previous mode is restored); progress(done, total) is
    called after each batch.

    Distributed (casdm.distributed initialised, W processes): each rank samples its contiguous
    shard of the sample indices, in batches of cfg.batch_size (per process), and every rank
    returns all cfg.num_samples images, gathered in index order; progress counts the rank's own
    shard. With ddim, eta=0 the result equals the single-process one (up to float arithmetic);
    stochastic samplers draw their noise from a stream of each rank's own (`rank_seed`), so
    they give an equally distributed but different set of samples.
    """
    sampler = cfg.component.load()
    options = dataclasses.asdict(cfg.options)
    device = torch.device(device)
    rank = distributed.rank()
    mine = distributed.shard(cfg.num_samples, rank, distributed.world_size())
    noise_generator = torch.Generator(device=device).manual_seed(distributed.rank_seed(seed, rank))
    x_T_generator = torch.Generator()
    was_training = model.training
    model.eval()
    batches = [torch.empty((0, *shape))]  # an empty shard still has the images' shape
    try:
        for start in range(mine.start, mine.stop, cfg.batch_size):
            indices = range(start, min(start + cfg.batch_size, mine.stop))
            x_T = torch.stack(
                [
                    torch.randn(shape, generator=x_T_generator.manual_seed(_sample_seed(seed, i)))
                    for i in indices
                ]
            ).to(device)  # [b, C, H, W]
            x0 = sampler(
                model,
                schedule,
                x_T,
                steps=cfg.steps,
                generator=noise_generator,
                clip_x0=cfg.clip_x0,
                **options,
            )
            # Images are stored in [-1, 1]: the last update returns x0_hat, in [-1, 1] up to
            # rounding with clip_x0; without it, clamping here is the quantisation to pixels.
            batches.append(x0.float().clamp(-1, 1).cpu())
            if progress is not None:
                progress(indices.stop - mine.start, len(mine))
    finally:
        model.train(was_training)
    return distributed.all_gather_cat(torch.cat(batches))  # [N, C, H, W]
