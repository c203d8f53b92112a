"""An example casdm-bench plugin: one component of each kind, in one module.

Installed, its entry point (group `casdm_bench.components`) makes `bench` import this module,
which registers:

- architecture `v-ddpm`: one UNet predicting v = sqrt(abar) eps - sqrt(1 - abar) x0
  (Salimans & Ho 2022), trained on ||v - v_theta||^2 (option `v_weight`) plus the metric loss;
- metric loss `charbonnier`: sqrt((x0_pred - x0)^2 + epsilon^2) - epsilon, per pixel, averaged
  (option `epsilon`);
- sampler `flow-euler`: Euler steps of the probability-flow ODE in (sigma, x / sqrt(abar)), with
  sigma = sqrt((1 - abar) / abar); for an eps-predicting model without x0 clipping it is DDIM
  with eta = 0 (Song et al. 2021, Sec. 4.3);
- dataset `gratings`: sinusoidal gratings at 4 orientations (the labels), random phase and
  frequency, seeded per split (option `count`);
- evaluator `pixels`: features from the pixels themselves (pool: 4x4 average-pooled image,
  spatial: 2x2, logits: 4 orientation-energy responses);
- score `feature_mean_gap`: ||mu_samples - mu_reference||^2 of the pool features, the mean
  term of FID (lower is better).
"""

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from bench.evaluation.context import ScoringContext
from bench.evaluation.evaluator import Evaluator, Features, state_dict_sha256
from bench.evaluation.evaluators import EvaluatorSpec
from bench.evaluation.scores import Score
from casdm.architectures import SingleUNet, metric_term
from casdm.components import Architecture, Dataset, MetricLoss, NoOptions, Sampler, register
from casdm.config import check
from casdm.metrics import Metric, mean_flat
from casdm.prediction import Prediction
from casdm.samplers import respace

# --- architecture ---------------------------------------------------------------------------


@dataclass(frozen=True)
class VOptions:
    v_weight: float = 1.0  # weight of the v MSE term

    def __post_init__(self):
        check(self.v_weight > 0, "v_weight", f"must be > 0, got {self.v_weight}")


def _abar(schedule, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return schedule.abar[t].to(like.dtype).view(-1, 1, 1, 1)


class VDDPM(SingleUNet):
    """One UNet predicting v; eps and x0 follow in closed form."""

    def forward(self, x_t: torch.Tensor, t: torch.Tensor) -> Prediction:
        v = self.net(x_t, t)
        abar = _abar(self.schedule, t, x_t)
        x0 = abar.sqrt() * x_t - (1 - abar).sqrt() * v
        eps = (1 - abar).sqrt() * x_t + abar.sqrt() * v
        return Prediction(eps, x0)

    def loss(self, x0, t, noise, metric):
        x_t = self.schedule.q_sample(x0, t, noise)
        abar = _abar(self.schedule, t, x0)
        v_target = abar.sqrt() * noise - (1 - abar).sqrt() * x0
        v = self.net(x_t, t)
        v_mse = mean_flat((v - v_target) ** 2)
        terms = {"v_mse": v_mse.detach().mean()}
        x0_theta = abar.sqrt() * x_t - (1 - abar).sqrt() * v
        return self.v_weight * v_mse + metric_term(metric, x0_theta, x0, terms), terms

    def build(self, options, model, channels, resolution):
        super().build(options, model, channels, resolution)  # self.net
        self.v_weight = options.v_weight


V_DDPM = register(
    Architecture(
        name="v-ddpm",
        target="casdm_bench_example:VDDPM",
        options=VOptions,
        summary="one UNet predicting v (Salimans & Ho 2022)",
    )
)


# --- metric loss ----------------------------------------------------------------------------


@dataclass(frozen=True)
class CharbonnierOptions:
    epsilon: float = 1e-3

    def __post_init__(self):
        check(self.epsilon > 0, "epsilon", f"must be > 0, got {self.epsilon}")


class CharbonnierMetric(Metric):
    def forward(self, x0_pred: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
        e = self.options.epsilon
        return mean_flat(torch.sqrt((x0_pred - x0) ** 2 + e * e) - e)  # [B]


CHARBONNIER = register(
    MetricLoss(
        name="charbonnier",
        target="casdm_bench_example:CharbonnierMetric",
        options=CharbonnierOptions,
        summary="sqrt(d^2 + epsilon^2) - epsilon per pixel (a smooth L1)",
    )
)


# --- sampler --------------------------------------------------------------------------------


@torch.no_grad()
def euler(model, schedule, x_T, *, steps, generator, clip_x0=True):
    """Euler steps of dx~/dsigma = eps in x~ = x / sqrt(abar), sigma = sqrt((1 - abar) / abar).

    With clip_x0, eps is the one implied by the clipped x0 (so the step stays consistent).
    """
    ts, sub = respace(schedule, steps, x_T.device)
    abar, abar_prev = sub.abar.tolist(), sub.abar_prev.tolist()
    x = x_T / math.sqrt(abar[-1])  # x~ at the first visited step
    for i in reversed(range(steps)):
        a, a_prev = abar[i], abar_prev[i]
        x_t = x * math.sqrt(a)
        pred = model(x_t, torch.full((x.shape[0],), ts[i], device=x.device))
        eps = pred.eps
        if clip_x0:
            x0 = pred.x0.clamp(-1, 1)
            eps = (x_t - math.sqrt(a) * x0) / math.sqrt(1 - a)
        sigma, sigma_prev = math.sqrt((1 - a) / a), math.sqrt((1 - a_prev) / a_prev)
        x = x + (sigma_prev - sigma) * eps
    return x * math.sqrt(abar_prev[0])


EULER = register(
    Sampler(
        name="flow-euler",
        target="casdm_bench_example:euler",
        options=NoOptions,
        summary="probability-flow ODE, Euler in sigma (DDIM eta=0 for eps models)",
    )
)


# --- dataset --------------------------------------------------------------------------------


@dataclass(frozen=True)
class GratingOptions:
    count: int = 400  # images in the train split; the test split holds a quarter as many

    def __post_init__(self):
        check(self.count >= 8, "count", f"must be >= 8, got {self.count}")


def load_gratings(path, resolution, data_dir, split, options):
    """uint8 [N, res, res, 1] gratings and their orientation labels (0..3)."""
    n = options.count if split == "train" else max(4, options.count // 4)
    rng = np.random.default_rng(0 if split == "train" else 1)
    labels = rng.integers(0, 4, n)
    angle = labels * (np.pi / 4)
    freq = rng.uniform(1.5, 3.0, n) * 2 * np.pi / resolution
    phase = rng.uniform(0, 2 * np.pi, n)
    yy, xx = np.mgrid[0:resolution, 0:resolution]
    along = np.cos(angle)[:, None, None] * xx + np.sin(angle)[:, None, None] * yy
    images = 0.5 + 0.5 * np.sin(freq[:, None, None] * along + phase[:, None, None])
    return np.rint(images * 255).astype(np.uint8)[..., None], labels.astype(np.int64)


GRATINGS = register(
    Dataset(
        name="gratings",
        target="casdm_bench_example:load_gratings",
        options=GratingOptions,
        summary="sinusoidal gratings at 4 orientations, generated (no download)",
    )
)


# --- evaluator ------------------------------------------------------------------------------


class PixelFeatures(torch.nn.Module):
    """pool: 4x4 average-pooled gray image; spatial: 2x2; logits: 4 orientation energies."""

    def __init__(self):
        super().__init__()
        kernels = []
        for k in range(4):
            angle = k * math.pi / 4
            yy, xx = torch.meshgrid(torch.arange(5.0), torch.arange(5.0), indexing="ij")
            kernels.append(torch.cos(math.cos(angle) * xx + math.sin(angle) * yy))
        self.register_buffer("kernels", torch.stack(kernels)[:, None] / 25)

    def forward(self, images: torch.Tensor) -> Features:
        gray = images.float().mean(dim=1, keepdim=True) / 127.5 - 1  # [B, 1, H, W]
        pool = F.adaptive_avg_pool2d(gray, 4).flatten(1)
        spatial = F.adaptive_avg_pool2d(gray, 2).flatten(1)
        logits = F.conv2d(gray, self.kernels).pow(2).mean(dim=(2, 3)).log1p() * 10
        return Features(pool, spatial, logits)


class PixelEvaluator(Evaluator):
    def _features(self, images: torch.Tensor) -> Features:
        return self.network(images)


def build_pixels(eval_cfg, data_cfg, *, device, cache_dir):
    network = PixelFeatures()
    return PixelEvaluator(
        network,
        name="pixels",
        title="pixels",
        weights_hash=state_dict_sha256(network.state_dict()),
        dims=(16, 4, 4),
        channels=(1, 3),
        device=device,
        protocol="pixel-statistics",
    )


PIXELS = register(
    EvaluatorSpec(
        name="pixels",
        target="casdm_bench_example:build_pixels",
        options=NoOptions,
        summary="pixel statistics as features (no network, no download)",
    )
)


# --- score ----------------------------------------------------------------------------------


def feature_mean_gap(ctx: ScoringContext) -> float:
    """||mu_samples - mu_reference||^2 of the pool features, in float64."""
    mu, _ = ctx.moments("pool")
    diff = np.asarray(mu, dtype=np.float64) - np.asarray(ctx.reference.mu, dtype=np.float64)
    return float(diff @ diff)


FEATURE_MEAN_GAP = register(
    Score(
        name="feature_mean_gap",
        target="casdm_bench_example:feature_mean_gap",
        display="Mean gap",
        direction="minimize",
        decimals=4,
        bootstrap=True,
        summary="||mu - mu_ref||^2 of the pool features, FID's mean term",
    )
)
