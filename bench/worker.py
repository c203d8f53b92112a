"""The worker: the process that claims a study's trials, runs them and records them in Optuna
and MLflow (rank 0 under torchrun).

How it joins a study and claims its cells: the claim protocol in docs/DESIGN.md.
"""

import contextlib
import hashlib
import math
import signal
import time
import traceback
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench import leases, threads
from bench.cells import study_caveats, with_device
from bench.claims import (
    Storage,
    config_digest,
    config_mismatch,
    encode,
    portable_digest,
    resumable,
)
from bench.config import RunConfig
from bench.errors import BenchError
from bench.evaluation import scores as score_registry
from bench.follower import PrepareEvaluators, RunTrial, ScoreReference, announce
from bench.progress import QuietProgress
from bench.results import import_storage_modules
from bench.study import Choices, Range, Study, slug
from bench.tracking import Tracker
from casdm import faults
from casdm.config import flatten, to_dict
from casdm.errors import InputError

if TYPE_CHECKING:
    import optuna

    from bench.planning import Plan
    from bench.tracking_backend import MlflowBackend
    from bench.trial import Scorer, TrialOutcome

# How long a joining worker waits for the creator's "cells_enqueued" marker before it enqueues
# the missing cells itself (the creator may have died; enqueueing again is safe: a cell's
# duplicate trials are pruned when claimed).
ENQUEUE_WAIT_S = 120.0


@dataclass(frozen=True)
class TrialRecord:
    """One trial this worker ran."""

    number: int
    cell: str
    state: str  # COMPLETE, FAIL, or DISCARDED (taken over by another worker)
    value: float | None
    wall_s: float
    error: str = ""


@dataclass
class RunSummary:
    """What `run_study` did: the storage, tracking store and the trials this worker ran."""

    study: str
    storage: str
    tracking_uri: str
    total: int
    created: bool = False
    trials: list[TrialRecord] = field(default_factory=list)
    done: int = 0  # COMPLETE trials in the study when this worker stopped
    plan: "Plan | None" = None  # set by a dry run, which runs nothing
    rank: int = 0  # this process's rank under torchrun (only rank 0 reports)
    held_back: list[str] = field(default_factory=list)  # failed cells not retried (cell names)

    @property
    def failed(self) -> int:
        return sum(t.state != "COMPLETE" for t in self.trials)


class Worker:
    """The process that claims, runs and records trials (rank 0 under torchrun)."""

    def __init__(
        self,
        study: Study,
        scorer: "Scorer",
        progress: QuietProgress,
        results: Path,
        device: str | None,
        summary: RunSummary,
        *,
        retry_failed: bool = False,
        lease_s: float = leases.LEASE_S,
    ):
        self.study = study
        self.scorer = scorer
        self.progress = progress
        self.results = results
        self.device = device
        self.summary = summary
        self.retry_failed = retry_failed
        self.lease_s = lease_s

    def lead(
        self,
        configs: list[RunConfig],
        storage: str,
        tracking_uri: str,
        n_trials: int | None,
        tracking: "MlflowBackend | None" = None,
    ) -> None:
        """Join the tracking store and the study, initialise it, run trials until done.

        tracking: the backend of every MLflow call (`bench run`'s sidecar,
        bench.tracking_sidecar); by default an MlflowBackend in this process.
        """
        base = configs[0]
        self.configs = configs
        self.meta = study_meta(base, self.scorer.label(base), configs)
        self.meta["overrides"] = list(self.study.overrides)  # `bench report` reruns with them
        import_storage_modules(storage)  # while the sidecar (if any) may still be starting
        self.tracker = Tracker(tracking_uri, self.study.name, tracking)
        self.tracker.set_view(*_view_columns(self.study))
        self.tracking_uri = tracking_uri
        self.store = Storage(storage, self.study, seed=base.seed)
        self.summary.created = self.store.created
        cells = self.study.cells()
        self.initialize(cells, config_digest(self.study))
        complete = len(self.store.trials(("COMPLETE",)))
        self.progress.begin_study(self.study.name, self.summary.total, complete)
        while n_trials is None or len(self.summary.trials) < n_trials:
            claimed = self.next_trial(cells)
            if claimed is None:
                break
            self.run_one(*claimed)
        self.summary.done = len(self.store.trials(("COMPLETE",)))

    def initialize(self, cells: list[dict[str, Any]], digest: str) -> None:
        """Before the first trial: meta, cells and the real-data row are in the study.

        The creator writes them; a joiner waits for the creator's "cells_enqueued" marker,
        checks that it runs the same configuration, fails trials of dead workers, re-enqueues
        cells without a live trial and, if the creator died early, writes what is missing.
        """
        store = self.store
        attrs: dict[str, Any] = {}
        if not store.created:
            deadline = time.monotonic() + ENQUEUE_WAIT_S
            while "cells_enqueued" not in (attrs := store.attrs()):
                creator = attrs.get("creator")
                if time.monotonic() > deadline or (creator and leases.owner_gone(creator)):
                    break  # the creator died (or stalls): enqueue what is missing ourselves
                time.sleep(0.5)
            if attrs.get("config_sha256", digest) != digest:
                raise BenchError(config_mismatch(self.study, store.url, attrs))
            self.reap()
        if "cells_enqueued" not in attrs:
            store.optuna.set_user_attr("config_sha256", digest)
            store.optuna.set_user_attr("total_cells", self.summary.total)
            store.optuna.set_user_attr("meta", self.meta)
        if self.study.is_grid:
            _, held_back = store.enqueue_missing(cells, self.study, retry_failed=self.retry_failed)
            self.summary.held_back = [self.study.cell_name(p) for p in held_back]
        self._share_evaluators()
        if "reference_scores" not in attrs and "reference_metrics" not in attrs:
            self._reference()
        store.optuna.set_user_attr("cells_enqueued", len(cells))

    def _share_evaluators(self) -> None:
        """One evaluator build per study, whichever machine each worker runs on.

        The first worker publishes its builds: their files (a trained classifier, the
        reference statistics) as artifacts of a run in the MLflow experiment "<study>/evaluator"
        and their hashes in the study's user attr "evaluator_builds". Every later worker whose
        own build differs downloads the published one into its cache and scores with it.
        """
        import tempfile

        from bench.trial import Scorer

        published = dict(self.store.attrs().get("evaluator_builds", {}))
        configs = {Scorer.key(c): c for c in self.configs}  # one per evaluator build
        adopt = []
        for key, config in configs.items():
            digest = hashlib.sha256(key.encode()).hexdigest()[:16]
            local = self.scorer.build(config)
            entry = published.get(digest)
            if entry is None:
                published[digest] = self._publish(config, local)
                self.store.optuna.set_user_attr("evaluator_builds", published)
            elif {k: entry.get(k) for k in local} != local:
                adopt.append((config, entry))
        if not adopt:
            return
        with tempfile.TemporaryDirectory() as folder:
            for config, entry in adopt:
                self.progress.log(
                    f"scoring with the study's evaluator build (weights "
                    f"{entry['weights_sha256'][:12]}, reference {entry['reference_sha256'][:12]}), "
                    "not this machine's"
                )
                try:
                    root = self.tracker.download_artifacts(
                        entry["mlflow_run_id"], "evaluator", Path(folder)
                    )
                except Exception as err:  # MLflow raises its own and OS errors alike
                    raise BenchError(
                        f"cannot download study {self.study.name!r}'s evaluator build (MLflow "
                        f"run {entry['mlflow_run_id']}: {type(err).__name__}: {err}); every "
                        "worker must reach the MLflow artifact store: use an MLflow server "
                        "(--tracking-uri http://...) or an artifact root on a shared disk"
                    ) from None
                self.scorer.adopt(config, root, entry["files"])
        announce(PrepareEvaluators())  # torchrun: preparing is collective
        self.scorer.forget()
        for config in self.configs:  # in the order bench.follower prepares them
            self.scorer.prepare(config)
        for config, entry in adopt:
            build = self.scorer.build(config)
            if {k: entry.get(k) for k in build} != build:
                raise BenchError(
                    f"the evaluator build published for study {self.study.name!r} (MLflow run "
                    f"{entry['mlflow_run_id']}) did not load as published: expected {entry}, "
                    f"got {build}; its artifacts are incomplete or changed"
                )

    def _publish(self, config: RunConfig, build: dict[str, str]) -> dict[str, Any]:
        """This worker's evaluator build for `config`, uploaded; its "evaluator_builds" entry."""
        files = self.scorer.files(config)
        experiment = f"{self.study.name}/evaluator"
        tracker = Tracker(self.tracking_uri, experiment, self.tracker.backend)
        run = tracker.start_run("evaluator build", tags={"optuna.study": self.study.name, **build})
        for name in files:
            parent = Path("evaluator", name).parent.as_posix()
            run.log_artifact(self.scorer.cache_dir / name, parent)
        run.finish()
        return {**build, "mlflow_run_id": run.run_id, "files": files}

    def _reference(self) -> None:
        config = with_device(self.study.config(self.study.cells()[0]), self.device)
        announce(ScoreReference())  # torchrun: scoring is collective
        self.progress.log("scoring held-out real data (the table's reference row)")
        scores = self.scorer.score_real_data(config, self.progress)
        self.store.optuna.set_user_attr("reference_evaluator_build", self.scorer.build(config))
        self.store.optuna.set_user_attr("reference_scores", scores)

    def reap(self) -> bool:
        """Fail the trials of lost workers (bench.leases) and their MLflow runs; any found?"""
        reaped = self.store.reap(self.lease_s)
        for trial in reaped:
            error = trial.user_attrs["error"]
            self.progress.log(f"[yellow]trial {trial.number}: {error}; it runs again[/yellow]")
            run_id = trial.user_attrs.get("mlflow_run_id")
            if run_id is not None:
                self.tracker.run(run_id).fail(error, "FAILED")
        return bool(reaped)

    def next_trial(self, cells: list[dict[str, Any]]) -> tuple["optuna.Trial", dict] | None:
        """The next trial to run and its params, or None when the study is done."""
        if self.reap() and self.study.is_grid:
            self.store.enqueue_missing(cells, self.study)  # the lost cells, to resume
        if self.study.is_grid:
            claimed = self.store.claim(cells)
            if claimed is None:
                return None
            trial, index = claimed
            params = cells[index]
            for key in params:
                # Records the enqueued value as the trial's param, with the axis as its choices.
                trial.suggest_categorical(key, [encode(v) for v in self.study.grid[key]])
            return trial, params
        counted = [t for t in self.store.trials() if t.state.name != "FAIL" or not resumable(t)]
        if len(counted) >= self.summary.total:
            return None  # lost and interrupted search trials are replaced by new ones
        with warnings.catch_warnings():
            # Optuna warns that heartbeats are meant for Study.optimize; bench.leases beats here.
            warnings.filterwarnings("ignore", "Heartbeat of storage", UserWarning)
            trial = self.store.optuna.ask()
        params = dict(cells[trial.number % len(cells)])  # fixed axes (seeds) in turn
        for key, axis in self.study.search.items():
            params[key] = _suggest(trial, key, axis)
        trial.set_user_attr("params", params)
        trial.set_user_attr("cell", self.study.cell_name(params))
        return trial, params

    def run_one(self, trial: "optuna.Trial", params: dict[str, Any]) -> None:
        """Run one claimed trial: MLflow run, training, sampling, scoring, tell.

        An exception fails the trial (failure "error") and the worker goes on; Ctrl-C or
        SIGTERM fails it as "interrupted" (it resumes on the next `bench run`) and stops.
        """
        from optuna.exceptions import UpdateFinishedTrialError

        threads.refresh(force=True)
        study, progress = self.study, self.progress
        config = with_device(study.config(params), self.device)
        cell = study.cell_name(params) or f"trial {trial.number}"
        workdir = (
            study.results_dir(self.results)
            / "trials"
            / trial_folder(study, config, cell, trial.number)
        )
        trial.set_user_attr("workdir", str(workdir))
        progress.begin_trial(cell, config.train.steps)
        start = time.perf_counter()
        self.run = None
        try:
            trial_id = self.store.trial_id(trial.number)
            with leases.held(self.store.storage, trial_id) as lease, faults.scope(slug(cell)):
                outcome = self._run(trial, params, config, cell, workdir, lease)
            value = outcome.scores.get(study.objective_score, math.nan)
            if not math.isfinite(value):
                trial.set_user_attr("scores", outcome.scores)
                raise FloatingPointError(
                    f"the objective {study.objective_score} is {value} (scores: {outcome.scores})"
                )
            self._record(trial, params, cell, outcome, self.run)
            self.store.optuna.tell(trial, value)
        except (UpdateFinishedTrialError, leases.TakenOver):
            self._taken_over(trial, cell, time.perf_counter() - start)
            return
        except Exception as err:
            self._fail(trial, cell, err, time.perf_counter() - start, "error")
            if isinstance(err, InputError):
                raise  # bad input fails every trial alike: stop with its message (exit 2)
            progress.log(f"[red]trial {trial.number} ({cell}) failed; going on[/red]")
            progress.log(traceback.format_exc())
            return
        except BaseException as err:  # KeyboardInterrupt (Ctrl-C, SIGTERM), SystemExit: stop
            with _signals_deferred():  # a second Ctrl-C must not cut the bookkeeping short
                self._fail(trial, cell, err, time.perf_counter() - start, "interrupted")
            raise
        progress.end_trial()
        progress.advance_study()
        progress.log(trial_line(trial.number, cell, outcome.wall_s, outcome.scores, study))
        self.summary.trials.append(
            TrialRecord(trial.number, cell, "COMPLETE", value, outcome.wall_s)
        )

    def _run(
        self,
        trial: "optuna.Trial",
        params: dict[str, Any],
        config: RunConfig,
        cell: str,
        workdir: Path,
        lease: leases.Lease,
    ) -> "TrialOutcome":
        """The trial's MLflow run (self.run) and its work; notices go to both databases.

        Training stops at its next log step once the lease is lost (one process only: under
        torchrun the other ranks could not follow rank 0 out of a collective).
        """
        from bench.trial import run_trial
        from casdm import distributed

        study = self.study
        run = self.run = self.tracker.start_run(
            cell,
            tags={
                "optuna.study": study.name,
                "optuna.trial_number": trial.number,
                "cell": cell,
                "metric": config.metric.label,
                "caveats": " ".join(config.caveats()),
                "evaluator": self.meta["evaluator"],
                "evaluator_random_weights": config.eval.random_weights,
            },
        )
        trial.set_user_attr("mlflow_run_id", run.run_id)
        run.log_params(flatten(to_dict(config)))
        notices: list[str] = []

        def notice(text: str) -> None:
            notices.append(text)
            self.progress.log(f"[yellow]trial {trial.number} ({cell}): {text}[/yellow]")
            trial.set_user_attr("notices", notices)
            run.set_tags({"notices": "\n".join(notices)[:5000]})

        def on_train(record: Mapping[str, float]) -> None:
            threads.refresh()  # a worker started since this trial began shrinks our team
            if distributed.world_size() == 1:
                lease.check()
            run.log_train(record)

        announce(RunTrial(params, str(workdir)))  # other ranks
        outcome = run_trial(
            config,
            workdir,
            progress=self.progress,
            on_train=on_train,
            on_notice=notice,
            scorer=self.scorer,
        )
        if outcome.resumed_from is not None:
            trial.set_user_attr("resumed_from", outcome.resumed_from)
            run.set_tags({"resumed_from_step": outcome.resumed_from})
        return outcome

    def _fail(
        self, trial: "optuna.Trial", cell: str, err: BaseException, wall_s: float, failure: str
    ) -> None:
        """Mark the trial FAIL in Optuna and its MLflow run (if any) FAILED or KILLED.

        failure: "error", or "interrupted" (the cell resumes on the next `bench run`).
        """
        from optuna.exceptions import UpdateFinishedTrialError
        from optuna.trial import TrialState

        error = f"{type(err).__name__}: {err}".rstrip(": ")
        if failure == "interrupted":
            error = (
                f"interrupted ({error}); `bench run` on this study resumes it from its last "
                "checkpoint"
            )
        elif isinstance(err, MemoryError | _cuda_oom()):
            error += "; lower train.batch_size, sample.batch_size or eval.batch_size"
        try:
            trial.set_user_attr("failure", failure)
            trial.set_user_attr("error", error)
            self.store.optuna.tell(trial, state=TrialState.FAIL)
        except UpdateFinishedTrialError:
            self._taken_over(trial, cell, wall_s)
            return
        if self.run is not None:
            self.run.fail(error, "KILLED" if failure == "interrupted" else "FAILED")
        self.progress.end_trial()
        self.summary.trials.append(TrialRecord(trial.number, cell, "FAIL", None, wall_s, error))

    def _taken_over(self, trial: "optuna.Trial", cell: str, wall_s: float) -> None:
        """Another worker took the trial over (our lease expired): its result is discarded."""
        error = (
            f"trial {trial.number} was taken over by another worker (this worker's lease "
            "expired, see bench.leases); its work here stops and is discarded, the cell "
            "counts once"
        )
        self.progress.log(f"[red]{error}[/red]")
        if self.run is not None:
            self.run.fail(error, "FAILED")
        self.progress.end_trial()
        self.summary.trials.append(
            TrialRecord(trial.number, cell, "DISCARDED", None, wall_s, error)
        )

    def _record(
        self,
        trial: "optuna.Trial",
        params: dict[str, Any],
        cell: str,
        outcome: "TrialOutcome",
        run: Any,
    ) -> None:
        """Scores and costs onto the Optuna trial (user_attrs) and the MLflow run."""
        attrs = {
            "scores": outcome.scores,
            "cell": cell,
            "params": params,
            "wall_s": outcome.wall_s,
            "images_per_s": outcome.images_per_s,
            "peak_memory_mb": outcome.peak_memory_mb,
            "peak_memory_kind": outcome.peak_memory_kind,
            "num_params": outcome.num_params,
            "evaluator": outcome.evaluator,
            "cost": outcome.cost(),  # bench.costs
            "bootstrap": outcome.bootstrap,  # bench.evaluation.bootstrap
            "protocols": outcome.protocols,
            "evaluator_build": outcome.evaluator_build,
        }
        for key, value in attrs.items():
            trial.set_user_attr(key, value)
        run.log_metrics(
            {
                **outcome.scores,
                "wall_s": outcome.wall_s,
                "train_wall_s": outcome.train_wall_s,
                "train_images_per_s": outcome.images_per_s,
                f"peak_memory_{outcome.peak_memory_kind}_mb": outcome.peak_memory_mb,
                "num_params": outcome.num_params,
                **{f"cost/{k}": v for k, v in outcome.cost().items() if v is not None},
                **outcome.bootstrap,
            }
        )
        run.set_tags(
            {
                "peak_memory_kind": outcome.peak_memory_kind,
                "evaluator.weights_sha256": outcome.evaluator_build["weights_sha256"],
                "evaluator.reference_sha256": outcome.evaluator_build["reference_sha256"],
                **{f"protocol.{key}": label for key, label in outcome.protocols.items()},
            }
        )
        run.log_image(outcome.grid_png)  # upscaled: readable in the MLflow UI
        run.log_artifact(outcome.config_json)
        run.finish()


def trial_line(
    number: int, cell: str, wall_s: float, scores: Mapping[str, float], study: Study
) -> str:
    """The lines printed when a trial finishes: its cell and time, then its table scores at
    the table's precision (two lines, so that 80 columns hold them)."""
    from bench.progress import duration_text

    shown = "  ".join(
        f"{score_registry.get(key).header()} {score_registry.get(key).text(scores[key])}"
        for key in study.table.scores
        if isinstance(scores.get(key), int | float) and math.isfinite(scores[key])
    )
    return f"trial {number} ({cell}) finished in {duration_text(wall_s)}\n  {shown}"


def _view_columns(study: Study) -> tuple[list[str], list[str], str, bool]:
    """What the MLflow runs table shows first: the study's axes and table scores, best
    objective first."""
    axes = list(study.grid) if study.is_grid else list(study.search)
    scores = list(dict.fromkeys([study.objective_score, *study.table.scores]))
    return axes, scores, study.objective_score, study.direction == "minimize"


def _cuda_oom() -> type[BaseException]:
    import torch

    return torch.OutOfMemoryError


@contextlib.contextmanager
def _signals_deferred() -> Iterator[None]:
    """SIGINT and SIGTERM wait until the block is done (POSIX; elsewhere they do not wait)."""
    if not hasattr(signal, "pthread_sigmask"):
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def trial_folder(study: Study, config: RunConfig, cell: str, number: int) -> str:
    """A trial's folder name: a grid cell's name and a digest of its config (device excluded),
    so a checkpoint is only ever resumed by a run of the same configuration; a search trial's
    number (its params are drawn anew, never resumed by another trial)."""
    if not study.is_grid:
        return f"trial-{number:04d}"
    return f"{slug(cell)}-{portable_digest([config])[:10]}"


def _suggest(trial: "optuna.Trial", key: str, axis: Range | Choices) -> Any:
    """One search axis's value for this trial (TPE)."""
    if isinstance(axis, Choices):
        value = trial.suggest_categorical(key, [encode(c) for c in axis.choices])
        return next(c for c in axis.choices if encode(c) == value)
    if axis.integer:
        step = int(axis.step or 1)
        return trial.suggest_int(key, int(axis.low), int(axis.high), step=step, log=axis.log)
    return trial.suggest_float(key, axis.low, axis.high, step=axis.step, log=axis.log)


def study_meta(config: RunConfig, evaluator: str, configs: list[RunConfig]) -> dict[str, Any]:
    """The study user_attr "meta" the tables' captions read (docs/DESIGN.md: what a study
    leaves in its storage).

    "protocols": {score key: the protocol it follows} (bench.evaluation.protocols).
    """
    from bench.trial import Scorer

    return {
        "dataset": config.data.dataset,
        "resolution": config.data.resolution,
        "evaluator": evaluator,
        "num_samples": config.sample.num_samples,
        "sampler": config.sample.sampler,
        "steps": config.sample.steps,
        "sampler_caption": config.sample.component.describe(config.sample.options),
        "clip_x0": config.sample.clip_x0,
        "random_weights": config.eval.random_weights,
        "protocols": Scorer.protocols(config),
        "caveats": study_caveats(configs),
    }
