"""One streamed feature pass: running float64 moments, plus the features later metrics need.

Images are consumed batch by batch and dropped; what is kept grows with the number of images
only through pool features (KID, precision/recall), logits (IS) and, for a bootstrap of sFID,
spatial features; never resized images.
Under torchrun `collect_shards` splits the images over the ranks and merges what they found.
`workers` (eval.prep_workers) runs the evaluator's CPU stage in worker processes ahead of its
network (bench.evaluation.prefetch); 0 keeps the whole pass in this process.
"""

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from bench.errors import BenchError
from bench.evaluation import prefetch
from bench.evaluation.evaluator import Evaluator, check_images
from casdm import distributed

Progress = Callable[[int, int], None]  # (images done, images in total; 0 when unknown)


class Moments:
    """Streaming mean and covariance in float64, on the features' device.

    Sums are taken of features minus a shift (the first batch's mean), which keeps the
    `E[xx^T] - mu mu^T` form from cancelling catastrophically when |mean| >> std.
    """

    def __init__(self) -> None:
        self.n = 0
        self._shift: torch.Tensor | None = None
        self._sum: torch.Tensor | None = None  # [D]
        self._outer: torch.Tensor | None = None  # [D, D]

    def update(self, x: torch.Tensor) -> None:
        """Add the rows of x [B, D]."""
        x = x.double()
        if self._shift is None:
            self._shift = x.mean(0)
            self._sum = torch.zeros_like(self._shift)
            self._outer = torch.zeros(x.shape[1], x.shape[1], dtype=x.dtype, device=x.device)
        d = x - self._shift  # [B, D]
        self.n += len(x)
        self._sum += d.sum(0)
        self._outer.addmm_(d.T, d)

    def mean(self) -> np.ndarray:
        """[D] float64."""
        return (self._shift + self._sum / self.n).cpu().numpy()

    def cov(self) -> np.ndarray:
        """[D, D] float64 sample covariance (n - 1 in the denominator, as np.cov)."""
        centred = self._outer - torch.outer(self._sum, self._sum) / self.n
        return (centred / (self.n - 1)).cpu().numpy()

    def reduce_over_ranks(self, dim: int, device: torch.device) -> None:
        """Become the moments of every rank's rows together (dim: D, for ranks with none).

        Each rank re-centres its sums on the first non-empty rank's shift c, with
        delta = shift_r - c: sum(x - c) = sum(d) + n delta and
        sum((x - c)(x - c)^T) = sum(d d^T) + sum(d) delta^T + delta sum(d)^T + n delta delta^T,
        then the sums are added over ranks.
        """
        if self._shift is None:
            zeros = torch.zeros(dim, dtype=torch.float64, device=device)
            self._shift, self._sum = zeros, zeros.clone()
            self._outer = torch.zeros(dim, dim, dtype=torch.float64, device=device)
        counts = distributed.all_gather_cat(torch.tensor([self.n]))  # [W]
        shifts = distributed.all_gather_cat(self._shift[None])  # [W, D]
        if not counts.any():
            return
        c = shifts[int(counts.nonzero()[0])]
        delta = self._shift - c
        total = self._sum + self.n * delta
        outer = self._outer + torch.outer(self._sum, delta) + torch.outer(delta, self._sum)
        outer += self.n * torch.outer(delta, delta)
        self._shift, self.n = c, int(counts.sum())
        self._sum = distributed.all_reduce_sum(total)
        self._outer = distributed.all_reduce_sum(outer)


@dataclass
class FeatureStats:
    """What one pass over a set of images leaves: moments, and the kept features."""

    pool: Moments = field(default_factory=Moments)
    spatial: Moments = field(default_factory=Moments)
    pool_features: list[torch.Tensor] = field(default_factory=list)  # float32 CPU chunks
    logits: list[torch.Tensor] = field(default_factory=list)  # float32 CPU chunks
    spatial_features: list[torch.Tensor] = field(default_factory=list)  # float32 CPU chunks

    @property
    def n(self) -> int:
        return self.pool.n

    def kept_pool(self) -> np.ndarray:
        """[M, D] float32: the kept pool features."""
        return torch.cat(self.pool_features).numpy()

    def kept_spatial(self) -> np.ndarray:
        """[M, S] float32: the kept spatial features (M = 0 unless asked to keep them)."""
        if not self.spatial_features:
            return np.zeros((0, 0), np.float32)
        return torch.cat(self.spatial_features).numpy()

    def all_logits(self) -> np.ndarray:
        """[N, K] float32: the logits of every image, in order."""
        return torch.cat(self.logits).numpy()


def batches(
    images: torch.Tensor | Iterable[torch.Tensor], batch_size: int, where: str
) -> tuple[Iterator[torch.Tensor], int]:
    """Split a uint8 tensor [N, C, H, W], or each of an iterable of them, into <= batch_size.

    Returns the batches and the number of images (0 when an iterator does not tell).
    """
    if isinstance(images, torch.Tensor):
        check_images(images, (1, 3), where)
        return iter(images.split(batch_size)), len(images)
    total = sum(len(b) for b in images) if isinstance(images, Sequence) else 0

    def split() -> Iterator[torch.Tensor]:
        for batch in images:
            check_images(batch, (1, 3), where)
            yield from batch.split(batch_size)

    return split(), total


def collect(
    chunks: Iterable[torch.Tensor],
    evaluator: Evaluator,
    *,
    keep_pool: int | None,
    keep_logits: bool,
    keep_spatial: bool = False,
    total: int = 0,
    progress: Progress | None = None,
    workers: int = 0,
) -> FeatureStats:
    """One pass of `evaluator` over uint8 batches; keeps the first `keep_pool` pool features
    (None: all) and, if asked, every logit and every spatial feature. `workers`: preprocessing
    processes (eval.prep_workers; -1 automatic, bench.evaluation.prefetch.resolve_workers)."""
    stats = _pass(chunks, evaluator, keep_pool, keep_logits, keep_spatial, total, progress, workers)
    if stats.n == 0:
        raise BenchError(f"no images to compute {evaluator.label} features of")
    return stats


def collect_shards(
    n: int,
    images: Callable[[range], torch.Tensor],
    evaluator: Evaluator,
    *,
    batch_size: int,
    keep_pool: int | None,
    keep_logits: bool,
    keep_spatial: bool = False,
    progress: Progress | None = None,
    workers: int = 0,
) -> FeatureStats:
    """`collect` over images 0..n-1, `images(indices)` giving a uint8 batch, split over ranks.

    Under torchrun each rank extracts the features of its contiguous shard
    (casdm.distributed.shard) and every rank ends with the statistics of all n images, each
    counted once: moments summed over ranks, kept features and logits gathered in index
    order. Equal to one process's pass up to float rounding; progress counts the rank's shard.
    """
    rank, world = distributed.rank(), distributed.world_size()
    mine = distributed.shard(n, rank, world)
    chunks = (
        images(range(start, min(start + batch_size, mine.stop)))
        for start in range(mine.start, mine.stop, batch_size)
    )
    # The first keep_pool features overall: this shard's part of them.
    keep = None if keep_pool is None else max(0, min(len(mine), keep_pool - mine.start))
    stats = _pass(chunks, evaluator, keep, keep_logits, keep_spatial, len(mine), progress, workers)
    if world > 1:
        pool_dim, spatial_dim, classes = evaluator.dims
        stats.pool.reduce_over_ranks(pool_dim, evaluator.device)
        stats.spatial.reduce_over_ranks(spatial_dim, evaluator.device)
        stats.pool_features = [_gather_rows(stats.pool_features, pool_dim)]
        if keep_logits:
            stats.logits = [_gather_rows(stats.logits, classes)]
        if keep_spatial:
            stats.spatial_features = [_gather_rows(stats.spatial_features, spatial_dim)]
    if stats.n == 0:
        raise BenchError(f"no images to compute {evaluator.label} features of")
    return stats


def _gather_rows(chunks: list[torch.Tensor], dim: int) -> torch.Tensor:
    """Every rank's float32 CPU rows [n_r, dim] (this rank's in `chunks`), in rank order."""
    return distributed.all_gather_cat(torch.cat([torch.empty(0, dim), *chunks]))


def _pass(
    chunks: Iterable[torch.Tensor],
    evaluator: Evaluator,
    keep_pool: int | None,
    keep_logits: bool,
    keep_spatial: bool,
    total: int,
    progress: Progress | None,
    workers: int,
) -> FeatureStats:
    stats = FeatureStats()
    kept = 0
    workers = prefetch.resolve_workers(workers, evaluator)
    with prefetch.feature_batches(chunks, evaluator, workers) as features:
        for pool, spatial, logits in features:
            stats.pool.update(pool)
            stats.spatial.update(spatial)
            take = len(pool) if keep_pool is None else min(len(pool), keep_pool - kept)
            if take > 0:
                stats.pool_features.append(pool[:take].float().cpu())
                kept += take
            if keep_logits:
                stats.logits.append(logits.float().cpu())
            if keep_spatial:
                stats.spatial_features.append(spatial.float().cpu())
            if progress is not None:
                progress(stats.n, total)
    return stats
