"""The built-in scores' compute functions `(ctx: ScoringContext) -> float` (bench.evaluation.scores
registers them by name)."""

from bench.evaluation.context import Kind, ScoringContext
from bench.evaluation.formulas import (
    frechet_distance,
    inception_score,
    kernel_inception_distance,
    precision_recall,
)


def fid(ctx: ScoringContext) -> float:
    """FID: the Fréchet distance of the pool features to the reference's."""
    return _frechet(ctx, "pool", "mu", "sigma", "FID")


def sfid(ctx: ScoringContext) -> float:
    """sFID: the Fréchet distance of the spatial features to the reference's."""
    return _frechet(ctx, "spatial", "mu_s", "sigma_s", "sFID")


def _frechet(ctx: ScoringContext, kind: Kind, mu: str, sigma: str, title: str) -> float:
    ref = ctx.reference
    return frechet_distance(
        *ctx.moments(kind),
        getattr(ref, mu),
        getattr(ref, sigma),
        f"{title} ({ctx.evaluator.label})",
        root2=ref.root(sigma, ctx.device),
        device=ctx.device,
    )


def _inception(ctx: ScoringContext) -> tuple[float, float]:
    settings = ctx.settings
    return ctx.cached(
        "inception_score",
        lambda: inception_score(ctx.logits(), settings.is_protocol, settings.is_splits),
    )


def is_mean(ctx: ScoringContext) -> float:
    """The Inception Score's mean over its parts (eval.is_protocol)."""
    return _inception(ctx)[0]


def is_std(ctx: ScoringContext) -> float:
    """The Inception Score's standard deviation over its parts."""
    return _inception(ctx)[1]


def kid(ctx: ScoringContext) -> float:
    """KID of the samples' pool features against the reference's."""
    return kernel_inception_distance(ctx.features("pool"), ctx.reference_features())


def _precision_recall(ctx: ScoringContext) -> tuple[float, float]:
    return ctx.cached(
        "precision_recall",
        lambda: precision_recall(
            ctx.reference_features(), ctx.features("pool"), ctx.device, ctx.reference.radii
        ),
    )


def precision(ctx: ScoringContext) -> float:
    """Improved precision: the fraction of samples inside the reference manifold."""
    return _precision_recall(ctx)[0]


def recall(ctx: ScoringContext) -> float:
    """Improved recall: the fraction of reference points inside the samples' manifold."""
    return _precision_recall(ctx)[1]
