"""The scoring runs tests/test_distributed.py compares: run on each of 2 gloo processes by
tests/torchrun_worker.py, and in the test process itself as the 1-process reference. They
score with the digits classifier of the tiny study's evaluator cache (a copy of it without
reference statistics, so the reference pass runs too).
"""

import shutil
from pathlib import Path
from typing import Any

import torch

from bench.config import EvalConfig
from bench.errors import BenchError
from bench.evaluation import build_evaluator, reference_statistics, score
from bench.evaluation.stream import collect_shards
from casdm import distributed
from casdm.config import DataConfig
from casdm.data import load_dataset, to_uint8
from casdm.errors import InputError

DIGITS = DataConfig(dataset="digits", resolution=8)
# 101 reference images in batches of 16 (the ranks' shards of 50 and 51 end mid-batch).
EVAL = EvalConfig(
    evaluator="classifier",
    reference_images=101,
    batch_size=16,
    is_protocol="torch-fidelity",
    is_splits=2,
)
N_IMAGES = 23  # odd: shards of 11 and 12
KEEP = 15  # kept features cross the shard boundary: 11 from rank 0, 4 from rank 1

IS = {"is_protocol": EVAL.is_protocol, "is_splits": EVAL.is_splits}


def images() -> torch.Tensor:
    """uint8 [23, 1, 8, 8]: held-out digits, the second half blurred so scores are not tiny."""
    x = load_dataset(DIGITS, "test").images[:N_IMAGES].clone()  # [-1, 1]
    x[N_IMAGES // 2 :] = torch.nn.functional.avg_pool2d(x[N_IMAGES // 2 :], 3, 1, 1)
    return to_uint8(x)


def run(seeded_cache: Path, out: Path) -> dict[str, Any]:
    """Every evaluation the test compares, as plain data."""
    cache = out / "cache"
    if distributed.is_main():
        shutil.copytree(seeded_cache / "classifier", cache / "classifier")
    distributed.barrier()
    evaluator = build_evaluator(EVAL, DIGITS, device="cpu", cache_dir=cache)
    computed = reference_statistics(evaluator, DIGITS, EVAL, cache_dir=cache)
    cached = reference_statistics(evaluator, DIGITS, EVAL, cache_dir=cache)  # read by rank 0
    x = images()
    result: dict[str, Any] = {
        "scores": score(x, evaluator, computed, **IS, batch_size=4),
        "reference": _arrays(computed),
        "cached_reference": _arrays(cached),
        "reference_files": sorted(p.name for p in (cache / "reference").iterdir()),
    }
    progress: list[list[int]] = []
    kept = collect_shards(
        N_IMAGES,
        lambda indices: x[indices.start : indices.stop],
        evaluator,
        batch_size=4,
        keep_pool=KEEP,
        keep_logits=False,
        progress=lambda done, total: progress.append([done, total]),
    )
    result["kept"] = torch.from_numpy(kept.kept_pool())
    result["progress"] = progress
    result["errors"] = [_error(lambda: score(x[:3], evaluator, computed, **IS))]
    result["errors"].append(_error(lambda: distributed.main_only(_fail_on_rank_0)))
    result["errors"].append(_error(lambda: distributed.main_first(_fail_on_rank_0)))
    result["main_only"] = distributed.main_only(lambda: f"from rank {distributed.rank()}")
    return result


def _fail_on_rank_0() -> str:
    if distributed.is_main():
        raise BenchError("rank 0 cannot do this")
    return "other rank"


def _error(fn: Any) -> str:
    try:
        fn()
    except InputError as err:
        return f"{type(err).__name__}: {err}"
    return "no error"


def _arrays(reference: Any) -> dict[str, torch.Tensor]:
    names = ("mu", "sigma", "mu_s", "sigma_s", "features", "radii")
    return {name: torch.from_numpy(getattr(reference, name)) for name in names}
