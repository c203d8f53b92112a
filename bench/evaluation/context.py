"""The scoring context: what a score's compute function `(ctx) -> float` reads.

One context per scoring call holds the samples' feature statistics (bench.evaluation.stream),
the reference, the evaluator and the settings, plus a per-call cache so that scores computed
from one expensive quantity share it. `resample(index)` gives the context of a bootstrap
resample: the same reference and settings, the samples replaced by `samples[index]` (moments
from weighted sums over the kept features, no copy of them), and a fresh cache.
"""

from collections.abc import Callable
from typing import Any, Literal

import numpy as np
import torch

from bench.evaluation.evaluator import Evaluator
from bench.evaluation.reference import Reference
from bench.evaluation.scores import MissingInput, ScoreSettings
from bench.evaluation.stream import FeatureStats

Kind = Literal["pool", "spatial"]


class ScoringContext:
    """The inputs of every score of one scoring call (or of one bootstrap resample).

    stats: the samples' FeatureStats (streamed moments; every pool feature and logit; the
    spatial features only when a bootstrap was asked for); reference: the Reference;
    evaluator: the Evaluator (its `device`, `label`); settings: ScoreSettings (IS protocol and
    splits); index: None for the samples as drawn, else the [N] sample indices of a resample;
    cache: anything a compute function stores with `cached`, for this context only.
    """

    def __init__(
        self,
        stats: FeatureStats,
        reference: Reference,
        evaluator: Evaluator,
        settings: ScoreSettings,
        *,
        index: np.ndarray | None = None,
        shared: dict[str, Any] | None = None,
    ):
        self.stats = stats
        self.reference = reference
        self.evaluator = evaluator
        self.settings = settings
        self.index = index
        self.cache: dict[str, Any] = {}
        # Centred device copies of the kept features, made once and shared by the resamples.
        self._shared = {} if shared is None else shared

    @property
    def device(self) -> torch.device:
        return self.evaluator.device

    @property
    def n(self) -> int:
        """The number of samples scored."""
        return self.stats.n

    def cached(self, key: str, compute: Callable[[], Any]) -> Any:
        """`compute()`, computed once per context under `key`."""
        if key not in self.cache:
            self.cache[key] = compute()
        return self.cache[key]

    def moments(self, kind: Kind) -> tuple[np.ndarray, np.ndarray]:
        """Mean [D] and sample covariance [D, D] (float64) of the samples' `kind` features."""
        if self.index is None:
            moments = self.stats.pool if kind == "pool" else self.stats.spatial
            return moments.mean(), moments.cov()
        centre, centred = self._centred(kind)
        n = len(centred)
        weights = torch.from_numpy(np.bincount(self.index, minlength=n)).to(centred)
        mean = weights @ centred / n  # each sample counted as often as it is drawn
        outer = (centred * weights[:, None]).T @ centred
        cov = (outer - n * torch.outer(mean, mean)) / (n - 1)
        return (centre + mean).cpu().numpy(), cov.cpu().numpy()

    def features(self, kind: Kind) -> np.ndarray:
        """[N, D] float32 features of the samples (MissingInput when they were not kept)."""
        kept = self.stats.kept_pool() if kind == "pool" else self.stats.kept_spatial()
        if self.index is None:
            if len(kept) == 0:
                raise MissingInput(f"the samples' {kind} features were not kept")
            return kept
        self._check_complete(kept, kind)
        return kept[self.index]

    def logits(self) -> np.ndarray:
        """[N, K] float32 logits of the samples."""
        logits = self.stats.all_logits()
        if self.index is None:
            return logits
        self._check_complete(logits, "logits")
        return logits[self.index]

    def reference_features(self) -> np.ndarray:
        """[M, D] float32 pool features of the reference (MissingInput when it holds none)."""
        if self.reference.features is None:
            raise MissingInput("the reference holds no features (statistics only)")
        return self.reference.features

    def resample(self, index: np.ndarray) -> "ScoringContext":
        """The context of the samples `samples[index]` (index: [N] ints in [0, N))."""
        return ScoringContext(
            self.stats,
            self.reference,
            self.evaluator,
            self.settings,
            index=np.asarray(index, dtype=np.int64),
            shared=self._shared,
        )

    def _centred(self, kind: Kind) -> tuple[torch.Tensor, torch.Tensor]:
        if kind not in self._shared:
            kept = self.stats.kept_pool() if kind == "pool" else self.stats.kept_spatial()
            self._check_complete(kept, f"{kind} features")
            features = torch.as_tensor(kept, dtype=torch.float64, device=self.device)
            centre = features.mean(0)
            self._shared[kind] = (centre, features.sub_(centre))
        return self._shared[kind]

    def _check_complete(self, kept: np.ndarray, what: str) -> None:
        if len(kept) != self.stats.n:
            raise MissingInput(
                f"a resample needs all {self.stats.n} samples' {what}, {len(kept)} were kept"
            )
