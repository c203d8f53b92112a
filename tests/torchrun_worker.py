"""The suite's one torchrun launch: each rank joins the gloo group once, runs the training and
sampling runs of tests/distributed_worker.py, then the scoring runs of
tests/distributed_eval_worker.py, and leaves the group. tests/test_distributed.py compares what
they return with the same code run in one process.

`python -m torch.distributed.run --standalone --nproc_per_node=2 tests/torchrun_worker.py CACHE
OUT` (CACHE: the tiny study's evaluator cache, holding the digits classifier) writes
OUT/rank<r>.pt for each rank r (plain data: load it with weights_only=True): {"train": ...,
"eval": ..., "threads_after_shutdown": the names of the rank's threads once it left the group}.
"""

import sys
from pathlib import Path

import distributed_eval_worker
import distributed_worker
import torch

from casdm import distributed


def main(seeded_cache: Path, out: Path) -> None:
    torch.set_num_threads(1)  # two processes share two cores
    dist = distributed.init_from_env("cpu")
    train, score = out / "train", out / "eval"
    train.mkdir(exist_ok=True)
    score.mkdir(exist_ok=True)
    try:
        result = {
            "train": distributed_worker.run(train),
            "eval": distributed_eval_worker.run(seeded_cache, score),
        }
    finally:
        distributed.shutdown()
    result["threads_after_shutdown"] = _thread_names()
    torch.save(result, out / f"rank{dist.rank}.pt")


def _thread_names() -> list[str]:
    """The names of this process's threads (Linux)."""
    tasks = Path("/proc/self/task")
    return sorted((task / "comm").read_text().strip() for task in tasks.iterdir())


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
