"""Reference statistics of a dataset split, a folder of images or an ADM reference batch,
cached as .npz.

A cache file holds ADM's keys (`mu`, `sigma`, `mu_s`, `sigma_s`), the reference pool features
KID and precision/recall compare against (`features`: the first REFERENCE_FEATURES images in
file order, as clean-fid's `get_folder_features(num=...)` takes them, so that KID draws its
subsets by index from the very array clean-fid's `compute_kid` would), their
k-NN radii (`radii`: the reference half of precision/recall, computed once here rather than at
every scoring), the symmetric square roots of both covariances (`sigma_root`, `sigma_s_root`:
FID's and sFID's trace term against this reference, `formulas.TraceSqrt`; reading two 2048-d
roots takes a fraction of a second, computing them seconds on a CPU) and a JSON metadata
record (`meta`) naming what it was computed from. It is computed once per (dataset, split,
resolution, evaluator and its protocol, weights hash, number of images), written atomically,
and rebuilt, with a warning, when unreadable or made for something else.

Images are always passed in file order (a dataset split's own order; a folder's files sorted
by path as clean-fid sorts them). `eval.reference_images` caps them to a seeded random subset,
still passed in file order: a dataset stored sorted by class is not cut to its first classes.
A cache file written before the roots were kept is still valid: its roots are computed on first
use and added to the file.
"""

import hashlib
import json
import warnings
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.config import EvalConfig
from bench.errors import BenchError
from bench.evaluation.evaluator import Evaluator
from bench.evaluation.formulas import PR_NEIGHBOURS, manifold_radii, psd_sqrt
from bench.evaluation.stream import FeatureStats, Progress, collect_shards
from casdm import distributed
from casdm.config import DataConfig
from casdm.data import image_files, load_dataset, read_images, to_uint8
from casdm.files import atomic_write

FORMAT = 2  # bump when what a cache file holds changes (2: images in file order)
# Pool features kept for KID and precision/recall: the first 10,000 images in file order (ADM's
# reference batches hold 10,000 images; 10,000 x 2,048 float32 is 82 MB). Up to this size KID
# is clean-fid's compute_kid against the whole reference; above, against its first 10,000 files.
REFERENCE_FEATURES = 10_000
SUBSET_SEED = 0  # which images a capped reference uses (a seeded permutation, then sorted)
ADM_KEYS = ("mu", "sigma", "mu_s", "sigma_s")
ROOTS = {"sigma": "sigma_root", "sigma_s": "sigma_s_root"}  # covariance -> its cached root


@dataclass(frozen=True, eq=False)
class Reference:
    """Statistics of real images in an evaluator's feature space."""

    mu: np.ndarray  # [D] float64
    sigma: np.ndarray  # [D, D]
    mu_s: np.ndarray  # [S]
    sigma_s: np.ndarray  # [S, S]
    features: np.ndarray | None  # [M, D] float32 pool features; None: KID, P/R unavailable
    radii: np.ndarray | None  # [M] float32 squared k-NN radii of `features` (None if M <= k)
    meta: dict[str, Any]
    path: Path | None = None  # the cache file holding it (None: an ADM batch's own statistics)
    # psd_sqrt of "sigma" and "sigma_s", as read from the cache or computed on first use
    roots: dict[str, np.ndarray] = field(default_factory=dict, repr=False)

    def root(self, name: str, device: torch.device | str = "cpu") -> np.ndarray:
        """[D, D] float64 psd_sqrt of the covariance `name` ("sigma" or "sigma_s"), memoised
        (computed on `device` the first time)."""
        if name not in self.roots:
            self.roots[name] = psd_sqrt(getattr(self, name), device)
        return self.roots[name]

    def sha256(self) -> str:
        """Hex SHA-256 of the statistics' bytes (mu, sigma, mu_s, sigma_s, features, radii)."""
        digest = hashlib.sha256()
        for name in (*ADM_KEYS, "features", "radii"):
            array = getattr(self, name)
            digest.update(name.encode())
            if array is not None:
                digest.update(np.ascontiguousarray(array).tobytes())
        return digest.hexdigest()


def reference_statistics(
    evaluator: Evaluator,
    data_cfg: DataConfig,
    eval_cfg: EvalConfig,
    *,
    cache_dir: Path,
    progress: Progress | None = None,
) -> Reference:
    """The reference for `evaluator`: eval_cfg.reference (a folder of images, all of them, or
    an ADM .npz) if set, else the dataset split."""
    if eval_cfg.reference:
        path = Path(eval_cfg.reference).expanduser()
        if path.is_dir():
            return _folder_reference(path, evaluator, eval_cfg, Path(cache_dir), progress)
        return _adm_reference(path, evaluator, eval_cfg, Path(cache_dir), progress)
    key = {
        "source": "dataset",
        "dataset": data_cfg.dataset,
        "split": eval_cfg.reference_split,
        "resolution": data_cfg.resolution,
        "reference_images": eval_cfg.reference_images,
        **_evaluator_key(evaluator),
    }

    def compute() -> tuple[FeatureStats, int]:
        # uint8 [N, C, H, W]; rank 0 loads first, so a dataset downloaded on first use
        # is fetched once, not by every rank at the same time.
        split = eval_cfg.reference_split
        images = distributed.main_first(lambda: load_dataset(data_cfg, split).pixels)
        return _pass(images, evaluator, eval_cfg, progress)

    return _cached(Path(cache_dir), data_cfg.dataset, key, evaluator, compute)


def _evaluator_key(evaluator: Evaluator) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "evaluator": evaluator.name,
        "weights_hash": evaluator.weights_hash,
        "reference_features": REFERENCE_FEATURES,
        "subset_seed": SUBSET_SEED,
    }


def _pass(
    images: torch.Tensor, evaluator: Evaluator, eval_cfg: EvalConfig, progress: Progress | None
) -> tuple[FeatureStats, int]:
    """Features of `images` (uint8, or float in [-1, 1]) in their order; capped as asked to a
    seeded subset, kept in file order."""
    n = len(images)
    if eval_cfg.reference_images:
        n = min(n, eval_cfg.reference_images)
    if n < 2:
        raise BenchError(
            f"reference statistics need at least 2 images (a covariance), got {n}; raise "
            "eval.reference_images or use a larger reference set"
        )
    if n < len(images):
        generator = torch.Generator().manual_seed(SUBSET_SEED)
        order = torch.randperm(len(images), generator=generator)[:n].sort().values
    else:
        order = torch.arange(n)

    def batch(indices: range) -> torch.Tensor:
        chunk = images[order[indices.start : indices.stop]]
        return chunk if chunk.dtype == torch.uint8 else to_uint8(chunk)

    stats = collect_shards(
        n,
        batch,
        evaluator,
        batch_size=eval_cfg.batch_size,
        keep_pool=REFERENCE_FEATURES,
        keep_logits=False,
        progress=progress,
        workers=eval_cfg.prep_workers,
    )
    return stats, n


def _folder_reference(
    folder: Path,
    evaluator: Evaluator,
    eval_cfg: EvalConfig,
    cache_dir: Path,
    progress: Progress | None,
) -> Reference:
    """Every image of `folder`, in clean-fid's file order: the reference of
    `compute_fid(samples, folder)` and `compute_kid(samples, folder)`. Cached under the
    folder's path and a digest of its listing (names, sizes, modification times)."""
    files = image_files(folder)
    listing = hashlib.sha256()
    for file in files:
        stat = file.stat()
        listing.update(f"{file.relative_to(folder)}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    key = {
        "source": "folder",
        "folder": str(folder.resolve()),
        "listing_sha256": listing.hexdigest(),
        "reference_images": eval_cfg.reference_images,
        **_evaluator_key(evaluator),
    }

    def compute() -> tuple[FeatureStats, int]:
        return _pass(read_images(folder), evaluator, eval_cfg, progress)

    return _cached(cache_dir, folder.name, key, evaluator, compute)


def _adm_reference(
    path: Path,
    evaluator: Evaluator,
    eval_cfg: EvalConfig,
    cache_dir: Path,
    progress: Progress | None,
) -> Reference:
    """An ADM reference batch: its stored `mu`... if present (as ADM), `arr_0` for the rest."""
    if not path.is_file():
        raise BenchError(
            f"reference {path} does not exist; expected a folder of images or an ADM .npz with "
            f"'arr_0' (uint8 NHWC images) and/or {', '.join(ADM_KEYS)}"
        )
    try:
        with np.load(path) as npz:
            names = set(npz.files)
            stats = {k: np.asarray(npz[k], dtype=np.float64) for k in ADM_KEYS if k in names}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        raise BenchError(f"reference batch {path} is not a readable .npz ({err})") from None
    has_images = "arr_0" in names
    if stats and len(stats) < len(ADM_KEYS):
        missing = ", ".join(k for k in ADM_KEYS if k not in stats)
        raise BenchError(f"reference batch {path} has precomputed statistics but lacks {missing}")
    if not stats and not has_images:
        raise BenchError(
            f"reference batch {path} has neither 'arr_0' nor {', '.join(ADM_KEYS)} "
            f"(keys: {', '.join(sorted(names)) or 'none'})"
        )
    if stats:
        _check_dims(stats, evaluator, f"reference batch {path}")
        # ADM's stored statistics come from TensorFlow running the graph (with its own
        # resize); the closest protocol here is legacy_tensorflow, whose TorchScript network
        # agrees with it to float rounding, not bit for bit.
        warnings.warn(
            f"{path}: using its precomputed statistics as ADM does; they were made by ADM's "
            f"TensorFlow Inception, so FID/sFID by {evaluator.label} are comparable to ADM's "
            "evaluator (closest with protocol legacy_tensorflow), not exact",
            stacklevel=3,
        )
    meta_base = {"source": "adm-npz", "npz": str(path.resolve()), **_evaluator_key(evaluator)}
    if not has_images:
        return Reference(**stats, features=None, radii=None, meta={**meta_base, "images": 0})
    stat = path.stat()
    key = {
        **meta_base,
        "npz_size": stat.st_size,
        "npz_mtime_ns": stat.st_mtime_ns,
        "reference_images": eval_cfg.reference_images,
    }

    def compute() -> tuple[FeatureStats, int]:
        return _pass(read_images(path), evaluator, eval_cfg, progress)

    reference = _cached(Path(cache_dir), path.stem, key, evaluator, compute)
    if stats:
        return Reference(
            **stats,
            features=reference.features,
            radii=reference.radii,
            meta=reference.meta,
            path=reference.path,
        )
    return reference


def _check_dims(stats: dict[str, np.ndarray], evaluator: Evaluator, where: str) -> None:
    d, s, _ = evaluator.dims
    expected = {"mu": (d,), "sigma": (d, d), "mu_s": (s,), "sigma_s": (s, s)}
    for name, shape in expected.items():
        if stats[name].shape != shape:
            raise BenchError(
                f"{where}: {name} has shape {list(stats[name].shape)}, but {evaluator.label} "
                f"features need {list(shape)}"
            )


def _cache_path(cache_dir: Path, name: str, key: dict[str, Any]) -> Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    slug = "".join(c if c.isalnum() or c in "-_" else "_" for c in name)[:40]
    return cache_dir / "reference" / f"{slug}-{key['evaluator'].replace(':', '_')}-{digest}.npz"


def _cached(
    cache_dir: Path,
    name: str,
    key: dict[str, Any],
    evaluator: Evaluator,
    compute: Callable[[], tuple[FeatureStats, int]],
) -> Reference:
    """The reference cached under `key`, or `compute()`d now and cached."""
    path = _cache_path(cache_dir, name, key)
    # Under torchrun rank 0 alone reads the cache and says whether it is usable, so that every
    # rank agrees on computing it together (each its shard of the images) or on receiving it.
    reference = _read(path, key, evaluator) if distributed.is_main() else None
    if distributed.broadcast_object(reference is not None):
        return distributed.broadcast_object(reference)
    stats, n = compute()
    features = stats.kept_pool()
    reference = Reference(
        mu=stats.pool.mean(),
        sigma=stats.pool.cov(),
        mu_s=stats.spatial.mean(),
        sigma_s=stats.spatial.cov(),
        features=features,
        radii=reference_radii(features, evaluator.device),
        meta={**key, "images": n, "features": len(features)},
        path=path,
    )
    if distributed.is_main():
        for name in ROOTS:
            reference.root(name, evaluator.device)
        _write(reference)
    return reference


def _write(reference: Reference) -> None:
    """Write `reference` (with the roots it holds) to its cache file, atomically."""
    arrays = {k: getattr(reference, k) for k in (*ADM_KEYS, "features", "radii")}
    if reference.radii is None:
        del arrays["radii"]
    arrays.update({ROOTS[name]: root for name, root in reference.roots.items()})
    meta = np.array(json.dumps(reference.meta))
    atomic_write(reference.path, lambda f: np.savez(f, **arrays, meta=meta))


def reference_radii(features: np.ndarray, device: torch.device) -> np.ndarray | None:
    """Squared k-NN radii of the reference features, or None when there are too few points."""
    if len(features) <= PR_NEIGHBOURS:
        return None  # scoring then reports the error: a manifold needs more than k points
    return manifold_radii(torch.from_numpy(features).to(device)).cpu().numpy()


def _read(path: Path, key: dict[str, Any], evaluator: Evaluator) -> Reference | None:
    """The cached reference at `path` if intact and made for `key`; None (rebuild) if not."""
    if not path.is_file():
        return None
    try:
        with np.load(path) as npz:
            meta = json.loads(str(npz["meta"]))
            stats = {k: np.asarray(npz[k], dtype=np.float64) for k in ADM_KEYS}
            features = np.asarray(npz["features"], dtype=np.float32)
            radii = np.asarray(npz["radii"], np.float32) if "radii" in npz.files else None
            roots = {
                name: np.asarray(npz[key], dtype=np.float64)
                for name, key in ROOTS.items()
                if key in npz.files
            }
        if {k: meta.get(k) for k in key} != key:
            raise ValueError("it was computed for other settings")
        _check_dims(stats, evaluator, str(path))
        if features.ndim != 2 or features.shape[1] != evaluator.dims[0]:
            raise ValueError(f"its features have shape {list(features.shape)}")
        if (radii is None) != (len(features) <= PR_NEIGHBOURS) or (
            radii is not None and radii.shape != (len(features),)
        ):
            raise ValueError("its radii do not match its features")
        for name, root in roots.items():
            if root.shape != stats[name].shape:
                raise ValueError(f"its {ROOTS[name]} has shape {list(root.shape)}")
        if not all(np.isfinite(a).all() for a in (*stats.values(), *roots.values())):
            raise ValueError("it holds non-finite statistics")
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, BenchError) as err:
        warnings.warn(f"reference cache {path} is unusable ({err}); rebuilding it", stacklevel=4)
        return None
    reference = Reference(
        **stats, features=features, radii=radii, meta=meta, path=path, roots=roots
    )
    if len(roots) < len(ROOTS):  # written before the roots were cached: add them, once
        for name in ROOTS:
            reference.root(name, evaluator.device)
        _write(reference)
    return reference
