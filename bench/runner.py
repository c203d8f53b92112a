"""Run (or join) a study in an Optuna storage: each grid cell exactly once across all workers.

Any number of `bench run` processes, on one machine or many, may work on one study at once:
the claim protocol in docs/DESIGN.md. This module checks what can be checked before any
database exists (the study file, the pretrained weights every cell needs, the evaluator and its
reference statistics), then hands over to the worker (bench.worker) on rank 0 and to
bench.follower on the other ranks of a torchrun; a dry run plans instead (bench.planning).
"""

from pathlib import Path
from typing import TYPE_CHECKING

from bench import leases
from bench.cells import required_weights, with_device
from bench.errors import BenchError
from bench.follower import Stop, announce, follow
from bench.planning import plan_study
from bench.progress import make_progress
from bench.results import storage_file, storage_url_for
from bench.study import Study
from bench.tracking_backend import absolute_uri, tracking_uri_for
from bench.worker import RunSummary, Worker

if TYPE_CHECKING:
    from bench.tracking_backend import MlflowBackend


def run_study(
    study: Study,
    *,
    storage: str | None = None,
    tracking_uri: str | None = None,
    n_trials: int | None = None,
    device: str | None = None,
    quiet: bool = False,
    dry_run: bool = False,
    results: Path = Path("results"),
    retry_failed: bool = False,
    lease_s: float = leases.LEASE_S,
    tracking: "MlflowBackend | None" = None,
) -> RunSummary:
    """Create or join `study` in `storage` and run trials until no cell is left (or n_trials).

    storage: an Optuna storage URL (default sqlite:///<results>/optuna.db); tracking_uri: an
    MLflow tracking URI (default sqlite:///<results>/mlflow.db); n_trials: at most this many
    trials in this process; device overrides every config's device; retry_failed: run the
    cells whose trials failed with an error again (lost and interrupted ones resume anyway);
    lease_s: the heartbeat lease after which another worker's RUNNING trial is taken over;
    tracking: the backend of every MLflow call, on `tracking_uri` (`bench run` passes its
    sidecar, bench.tracking_sidecar; by default an MlflowBackend in this process).

    Under torchrun (`torchrun --nproc_per_node=N -m bench run ...`) the N processes run each
    trial together (DDP training, sharded sampling, casdm.distributed): rank 0 alone talks to
    Optuna and MLflow and scores, and tells the other ranks which cell comes next.
    """
    storage = storage or storage_url_for(results)
    tracking_uri = absolute_uri(tracking_uri or tracking_uri_for(results))
    storage_file(storage)  # reject a malformed URL before any work
    if n_trials is not None and n_trials < 1:
        raise BenchError(f"--n-trials must be >= 1, got {n_trials}")
    if not lease_s > 0:
        raise BenchError(f"--lease must be a positive number of seconds, got {lease_s}")
    configs = [with_device(c, device) for c in study.trial_configs()]
    summary = RunSummary(study.name, storage, tracking_uri, study.size)
    if dry_run:
        summary.plan = plan_study(study, storage, device)
        return summary

    from bench.trial import Scorer, resolve_device
    from casdm import distributed, weights

    joined = distributed.world_size() == 1  # whether a process group is ours to leave
    dist = distributed.init_from_env(resolve_device(configs[0].device))
    joined = joined and dist.world_size > 1
    try:
        if dist.world_size > 1:
            device = str(dist.device)  # this rank's GPU (LOCAL_RANK), or the CPU with gloo
            configs = [with_device(c, device) for c in configs]
        summary.rank = dist.rank
        # Rank 0 downloads missing weights first; the other ranks then find the files.
        distributed.main_first(lambda: [weights.ensure(n) for n in required_weights(configs)])
        scorer = Scorer(results / "cache", resolve_device(configs[0].device))
        with make_progress(quiet or not dist.is_main) as progress:
            progress.log(f"preparing the evaluator for {study.name}")
            for config in configs:
                scorer.prepare(config, progress)  # collective under torchrun
            if not dist.is_main:
                follow(study, device, scorer, configs)
                return summary
            try:
                worker = Worker(
                    study,
                    scorer,
                    progress,
                    results,
                    device,
                    summary,
                    retry_failed=retry_failed,
                    lease_s=lease_s,
                )
                worker.lead(configs, storage, tracking_uri, n_trials, tracking)
            finally:
                announce(Stop())  # under torchrun: the other ranks stop too
    finally:
        if joined:
            distributed.shutdown()
    return summary
