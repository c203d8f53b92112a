"""`score`: every registered score of a set of images from one feature pass and the reference."""

import math
from collections.abc import Iterable

import torch

from bench.errors import BenchError
from bench.evaluation import scores as score_registry
from bench.evaluation.bootstrap import bootstrap as bootstrap_errors
from bench.evaluation.bootstrap import resample_count
from bench.evaluation.context import ScoringContext
from bench.evaluation.evaluator import Evaluator, check_images
from bench.evaluation.formulas import PR_NEIGHBOURS
from bench.evaluation.reference import Reference
from bench.evaluation.scores import MissingInput, ScoreSettings
from bench.evaluation.stream import Progress, batches, collect, collect_shards
from casdm import distributed


def score(
    images: torch.Tensor | Iterable[torch.Tensor],
    evaluator: Evaluator,
    reference: Reference,
    *,
    is_protocol: str = "adm",
    is_splits: int = 10,
    batch_size: int = 100,
    progress: Progress | None = None,
    bootstrap: int = 0,
    prep_workers: int = 0,
) -> dict[str, float]:
    """Every registered score (bench.evaluation.scores: FID, sFID, IS mean and std, KID,
    precision, recall, and any a plugin adds) of uint8 images [N, C, H, W].

    The Inception Score follows `is_protocol` ("adm": chunks of 5,000; "torch-fidelity":
    `is_splits` shuffled splits; see `protocols`).

    `images` is one tensor or an iterable of uint8 batches (e.g. straight from a sampler);
    only features are kept. A score whose inputs are missing is NaN (KID, precision and recall
    when the reference holds no features: an ADM batch with statistics only). `bootstrap`
    (eval.bootstrap: resamples, 0 none, -1 automatic) adds the bootstrap standard errors
    (bench.evaluation.bootstrap); the spatial features are then kept for sFID's.
    `prep_workers` (eval.prep_workers: 0 none, -1 automatic) runs the evaluator's CPU
    preprocessing in worker processes ahead of its network (bench.evaluation.prefetch).

    Under torchrun `images` is the whole set, the same tensor on every rank: each rank
    extracts the features of its shard, rank 0 computes the scores from all N images'
    features (each counted once) and every rank returns them.
    """
    _check_reference(reference, evaluator)
    settings = ScoreSettings(is_protocol, is_splits)
    resamples = resample_count(bootstrap, evaluator.dims[0])
    # A resample's spatial moments (sFID) are sums over every sample's spatial features.
    keep_spatial = resamples >= 2
    is_parts = is_splits if is_protocol == "torch-fidelity" else 1
    needed = max(is_parts, PR_NEIGHBOURS + 1)
    if distributed.world_size() > 1:
        if not isinstance(images, torch.Tensor):
            raise BenchError(
                "distributed scoring splits the images over the ranks, so it needs them as "
                f"one uint8 tensor [N, C, H, W] on every rank, got {type(images).__name__}"
            )
        check_images(images, (1, 3), f"images scored by {evaluator.label}")
        if len(images) < needed:
            raise _too_few(len(images), needed, is_parts)
        stats = collect_shards(
            len(images),
            lambda indices: images[indices.start : indices.stop],
            evaluator,
            batch_size=batch_size,
            keep_pool=None,
            keep_logits=True,
            keep_spatial=keep_spatial,
            progress=progress,
            workers=prep_workers,
        )
        return distributed.main_only(
            lambda: _scores(
                ScoringContext(stats, reference, evaluator, settings), resamples, bootstrap >= 0
            )
        )
    chunks, total = batches(images, batch_size, f"images scored by {evaluator.label}")
    if 0 < total < needed:
        raise _too_few(total, needed, is_parts)
    stats = collect(
        chunks,
        evaluator,
        keep_pool=None,
        keep_logits=True,
        keep_spatial=keep_spatial,
        total=total,
        progress=progress,
        workers=prep_workers,
    )
    if stats.n < needed:
        raise _too_few(stats.n, needed, is_parts)
    return _scores(ScoringContext(stats, reference, evaluator, settings), resamples, bootstrap >= 0)


def protocols(is_protocol: str = "adm", is_splits: int = 10) -> dict[str, str]:
    """{score name: the protocol it follows}, printed next to the scores (captions, CSV, MLflow).

    A score without an entry follows its evaluator alone.
    """
    return score_registry.protocols(ScoreSettings(is_protocol, is_splits))


def _scores(ctx: ScoringContext, resamples: int = 0, every: bool = True) -> dict[str, float]:
    """Every registered score of `ctx` (NaN where its inputs are missing), and with
    `resamples` >= 2 their bootstrap standard errors ("bootstrap.<score>.se"); `every` False:
    only the scores bootstrapped by default (eval.bootstrap automatic)."""
    values = {score.name: _value(score, ctx) for score in score_registry.scores()}
    return {**values, **bootstrap_errors(ctx, values, resamples, every=every)}


def _value(score: score_registry.Score, ctx: ScoringContext) -> float:
    try:
        return float(score.load()(ctx))
    except MissingInput:
        return math.nan


def _too_few(n: int, needed: int, is_parts: int) -> BenchError:
    return BenchError(
        f"scoring needs at least {needed} images ({is_parts} Inception Score split(s), and "
        f"{PR_NEIGHBOURS} nearest neighbours for precision/recall), got {n}"
    )


def _check_reference(reference: Reference, evaluator: Evaluator) -> None:
    """Refuse statistics made by another network: the distance between them means nothing."""
    made_by = (reference.meta.get("evaluator"), reference.meta.get("weights_hash"))
    if made_by != (evaluator.name, evaluator.weights_hash):
        raise BenchError(
            f"the reference statistics were computed with {made_by[0]} (weights "
            f"{str(made_by[1])[:12]}), but the images are scored with {evaluator.name} (weights "
            f"{evaluator.weights_hash[:12]}); compute the reference with the same evaluator"
        )
