"""`score`: every metric of a set of images from one feature pass and the cached reference."""

from collections.abc import Iterable

import torch

from bench.errors import BenchError
from bench.evaluation.bootstrap import bootstrap as bootstrap_errors
from bench.evaluation.bootstrap import resample_count
from bench.evaluation.evaluator import Evaluator, check_images
from bench.evaluation.metrics import (
    PR_NEIGHBOURS,
    PRECISION_RECALL_PROTOCOL,
    frechet_distance,
    inception_score,
    inception_score_protocol,
    kernel_inception_distance,
    precision_recall,
)
from bench.evaluation.reference import Reference
from bench.evaluation.stream import FeatureStats, Progress, batches, collect, collect_shards
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
) -> dict[str, float]:
    """FID, sFID, IS (mean, std), KID, precision, recall of uint8 images [N, C, H, W].

    The Inception Score follows `is_protocol` ("adm": chunks of 5,000; "torch-fidelity":
    `is_splits` shuffled splits; see `protocols`).

    `images` is one tensor or an iterable of uint8 batches (e.g. straight from a sampler);
    only features are kept. KID, precision and recall are NaN when the reference holds no
    features (an ADM batch with statistics only). `bootstrap` (eval.bootstrap: resamples, 0
    none, -1 automatic) adds the bootstrap standard errors (bench.evaluation.bootstrap).

    Under torchrun `images` is the whole set, the same tensor on every rank: each rank
    extracts the features of its shard, rank 0 computes the metrics from all N images'
    features (each counted once) and every rank returns them.
    """
    _check_reference(reference, evaluator)
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
            progress=progress,
        )
        return distributed.main_only(
            lambda: _metrics(stats, evaluator, reference, is_protocol, is_splits, bootstrap)
        )
    chunks, total = batches(images, batch_size, f"images scored by {evaluator.label}")
    if 0 < total < needed:
        raise _too_few(total, needed, is_parts)
    stats = collect(
        chunks, evaluator, keep_pool=None, keep_logits=True, total=total, progress=progress
    )
    if stats.n < needed:
        raise _too_few(stats.n, needed, is_parts)
    return _metrics(stats, evaluator, reference, is_protocol, is_splits, bootstrap)


def protocols(is_protocol: str = "adm", is_splits: int = 10) -> dict[str, str]:
    """{score key: the protocol it follows}, printed next to the scores (captions, CSV, MLflow).

    Keys are `score`'s metric keys; a score without an entry follows its evaluator alone.
    """
    labels = {"is_mean": inception_score_protocol(is_protocol, is_splits)}
    labels["is_std"] = labels["is_mean"]
    labels["precision"] = labels["recall"] = PRECISION_RECALL_PROTOCOL
    return labels


def _metrics(
    stats: FeatureStats,
    evaluator: Evaluator,
    reference: Reference,
    is_protocol: str,
    is_splits: int,
    bootstrap: int = 0,
) -> dict[str, float]:
    """Every metric from the samples' feature statistics and the reference's."""
    label = evaluator.label
    metrics = {
        "fid": frechet_distance(
            stats.pool.mean(),
            stats.pool.cov(),
            reference.mu,
            reference.sigma,
            f"FID ({label})",
            root2=reference.root("sigma", evaluator.device),
            device=evaluator.device,
        ),
        "sfid": frechet_distance(
            stats.spatial.mean(),
            stats.spatial.cov(),
            reference.mu_s,
            reference.sigma_s,
            f"sFID ({label})",
            root2=reference.root("sigma_s", evaluator.device),
            device=evaluator.device,
        ),
    }
    metrics["is_mean"], metrics["is_std"] = inception_score(
        stats.all_logits(), is_protocol, is_splits
    )
    if reference.features is None:
        metrics.update(kid=float("nan"), precision=float("nan"), recall=float("nan"))
    else:
        samples = stats.kept_pool()
        metrics["kid"] = kernel_inception_distance(samples, reference.features)
        metrics["precision"], metrics["recall"] = precision_recall(
            reference.features, samples, evaluator.device, reference.radii
        )
    resamples = resample_count(bootstrap, evaluator.dims[0])
    if resamples:
        metrics.update(
            bootstrap_errors(
                stats,
                reference,
                is_protocol=is_protocol,
                is_splits=is_splits,
                resamples=resamples,
                device=evaluator.device,
            )
        )
    return metrics


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
