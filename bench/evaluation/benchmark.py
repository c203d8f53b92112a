"""Evaluator throughput against clean-fid, on the same images, network and weights, in one run.

Ours: `score` (FID, sFID, IS, KID, precision/recall) from one streamed pass under one protocol,
against a reference whose statistics (and covariance square roots) are cached beforehand.
clean-fid's workflow: `compute_fid` then `compute_kid` on the same images against the same
reference statistics, i.e. what each of them runs: `get_model_features` in the same mode (its
per-image resize) with its feature function for that mode on the same network, then
`frechet_distance`; the same pass again, then `kernel_distance`. The cheapest way clean-fid can
give both (one pass, FID and KID from its features) is reported too, from the same runs' parts.
The two sides alternate over `repeats` repetitions (each repetition's first side alternating
too) and the ratios are of the medians, so a machine whose load changes affects both alike.
"""

import re
import resource
import statistics
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.evaluation.evaluators import DEFAULT_FID_PROTOCOL, PROTOCOLS
from bench.evaluation.inception import inception_evaluator, random_inception
from bench.evaluation.prefetch import resolve_workers
from bench.evaluation.reference import ROOTS, Reference, reference_radii
from bench.evaluation.scoring import score
from bench.evaluation.stream import collect
from casdm import weights

REFERENCE_IMAGES = 1000  # reference set size (not timed); the cost measured is the samples'


def _images(n: int, batch_size: int, resolution: int, seed: int) -> Iterator[torch.Tensor]:
    """n random uint8 RGB images [B, 3, res, res], generated batch by batch (never all held)."""
    for start in range(0, n, batch_size):
        generator = torch.Generator().manual_seed(seed * 1_000_003 + start)
        size = min(batch_size, n - start)
        yield torch.randint(0, 256, (size, 3, resolution, resolution), generator=generator).to(
            torch.uint8
        )


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class _PeakMemory:
    """Peak memory of one phase: CUDA max allocated, and the process's peak RSS.

    Linux resets the RSS high-water mark on writing 5 to /proc/self/clear_refs; elsewhere
    the figure is the whole process's peak (ru_maxrss), which `rss_kind` says.
    """

    def __init__(self, device: torch.device):
        self.device = device
        try:
            Path("/proc/self/clear_refs").write_text("5")
            self.rss_kind = "phase_peak_rss"
        except OSError:
            self.rss_kind = "process_peak_rss"
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)

    def rss_mb(self) -> float:
        if self.rss_kind == "phase_peak_rss":
            status = Path("/proc/self/status").read_text()
            return int(re.search(r"VmHWM:\s+(\d+)", status).group(1)) / 1024
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak / 2**20 if sys.platform == "darwin" else peak / 1024  # bytes vs KiB

    def cuda_mb(self) -> float | None:
        if self.device.type != "cuda":
            return None
        return torch.cuda.max_memory_allocated(self.device) / 2**20


class _Generator:
    """clean-fid's `G(z)` interface over our image batches: float [B, 3, H, W] in [0, 255]."""

    def __init__(self, batches: Iterator[torch.Tensor], device: torch.device):
        self.batches = batches
        self.device = device

    def __call__(self, z: torch.Tensor) -> torch.Tensor:
        return next(self.batches).to(self.device).float()


def evaluation_benchmark(
    n_images: int,
    resolution: int = 32,
    *,
    random_weights: bool,
    device: torch.device | str = "cpu",
    batch_size: int = 100,
    repeats: int = 3,
    seed: int = 0,
    protocol: str = DEFAULT_FID_PROTOCOL,
    prep_workers: int = -1,
    channels_last: bool = True,
) -> dict[str, Any]:
    """Images/s of `score` vs clean-fid's compute_fid + compute_kid on n_images random images.

    Returns images_per_s and cleanfid_images_per_s (medians over `repeats` interleaved
    repetitions), ratio (clean-fid's workflow time / ours), ratio_one_pass (clean-fid's one-pass
    FID + KID time / ours), `prep_workers` (ours: eval.prep_workers, -1 automatic: worker
    processes resize ahead of an accelerator, none on a CPU), `channels_last` (ours:
    eval.channels_last; clean-fid's calls are NCHW either way), both runs' scores (`scores`,
    `cleanfid_scores`; from the last repetition), fid_relative_difference and the peak memory
    of our scoring (first repetition).
    """
    from cleanfid.fid import frechet_distance, get_model_features, kernel_distance

    device = torch.device(device)
    batch_size = min(batch_size, n_images)
    if n_images % batch_size:
        raise ValueError(
            f"n_images ({n_images}) must be a multiple of batch_size ({batch_size}): clean-fid "
            "extracts whole batches only"
        )
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    if random_weights:
        evaluator = random_inception(protocol, device=device)
    else:
        path = weights.ensure(PROTOCOLS[protocol].weights)
        evaluator = inception_evaluator(protocol, path, device=device)
    evaluator.channels_last = channels_last

    # The reference (untimed; it also warms our path up): features of other random images.
    n_ref = min(n_images, REFERENCE_IMAGES)
    ref_stats = collect(
        _images(n_ref, batch_size, resolution, seed + 1),
        evaluator,
        keep_pool=None,
        keep_logits=False,
    )
    reference = Reference(
        mu=ref_stats.pool.mean(),
        sigma=ref_stats.pool.cov(),
        mu_s=ref_stats.spatial.mean(),
        sigma_s=ref_stats.spatial.cov(),
        features=ref_stats.kept_pool(),
        radii=reference_radii(ref_stats.kept_pool(), device),
        meta={"evaluator": evaluator.name, "weights_hash": evaluator.weights_hash},
    )
    for name in ROOTS:  # cached with the reference statistics, as reference_statistics does
        reference.root(name, device)
    workers = resolve_workers(prep_workers, evaluator)
    model_fn = evaluator.cleanfid_extractor()
    with torch.no_grad():  # warm-up, as our reference pass warmed our network up
        model_fn(torch.zeros(1, 3, 299, 299, device=device))

    def ours() -> dict[str, float]:
        return score(
            _images(n_images, batch_size, resolution, seed),
            evaluator,
            reference,
            batch_size=batch_size,
            prep_workers=workers,
        )

    def features() -> np.ndarray:
        return get_model_features(
            _Generator(_images(n_images, batch_size, resolution, seed), device),
            model_fn,
            mode=protocol,
            z_dim=1,
            num_gen=n_images,
            batch_size=batch_size,
            device=device,
            verbose=False,
        )

    def cleanfid() -> tuple[dict[str, float], float]:
        """compute_fid then compute_kid; returns the scores and the one-pass time."""
        start = time.perf_counter()
        feats = features()
        fid = frechet_distance(
            feats.mean(0), np.cov(feats, rowvar=False), reference.mu, reference.sigma
        )
        one_pass = time.perf_counter() - start
        feats = features()  # compute_kid's own pass over the same images
        start = time.perf_counter()
        kid = kernel_distance(feats, reference.features)
        one_pass += time.perf_counter() - start
        return {"fid": float(fid), "kid": float(kid)}, one_pass

    times: dict[str, list[float]] = {"ours": [], "cleanfid": [], "one_pass": []}
    memory = None
    for repetition in range(repeats):
        for side in ("ours", "cleanfid") if repetition % 2 == 0 else ("cleanfid", "ours"):
            probe = _PeakMemory(device) if side == "ours" and memory is None else None
            _sync(device)
            start = time.perf_counter()
            if side == "ours":
                our_scores = ours()
            else:
                cleanfid_scores, one_pass = cleanfid()
            _sync(device)
            times[side].append(time.perf_counter() - start)
            if side == "cleanfid":
                times["one_pass"].append(one_pass)
            if probe is not None:
                memory = (probe.rss_kind, probe.rss_mb(), probe.cuda_mb())
    median = {side: statistics.median(values) for side, values in times.items()}
    rss_kind, peak_rss_mb, peak_cuda_mb = memory

    return {
        "device": str(device),
        "evaluator": evaluator.label,
        "protocol": protocol,
        "n_images": n_images,
        "resolution": resolution,
        "batch_size": batch_size,
        "prep_workers": workers,
        "channels_last": channels_last,
        "repeats": repeats,
        "images_per_s": n_images / median["ours"],
        "cleanfid_images_per_s": n_images / median["cleanfid"],
        "ratio": median["cleanfid"] / median["ours"],
        "ratio_one_pass": median["one_pass"] / median["ours"],
        "seconds": median["ours"],
        "cleanfid_seconds": median["cleanfid"],
        "cleanfid_one_pass_seconds": median["one_pass"],
        "scores": our_scores,
        "cleanfid_scores": cleanfid_scores,
        "fid_relative_difference": abs(our_scores["fid"] - cleanfid_scores["fid"])
        / abs(cleanfid_scores["fid"]),
        "peak_rss_mb": peak_rss_mb,
        "peak_rss_kind": rss_kind,
        "peak_cuda_mb": peak_cuda_mb,
    }
