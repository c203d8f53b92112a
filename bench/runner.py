"""Run (or join) a study in an Optuna storage: each grid cell exactly once across all workers.

Any number of `bench run` processes, on one machine or many, may work on one study at once.
How a grid cell runs exactly once:

1. Creating. `optuna.create_study(load_if_exists=False)` succeeds in exactly one process: the
   study name is unique in an RDB (the INSERT of the loser fails) and in a journal (the first
   CREATE_STUDY record wins). That process, the creator, enqueues every cell once as a WAITING
   trial, stores the study's meta and the real-data reference row, and then sets the study
   attribute "cells_enqueued". Others wait for that marker before claiming anything.
2. Claiming. A worker takes a WAITING trial by switching it to RUNNING in the storage, the way
   `Study.ask` pops enqueued trials. That switch is atomic in PostgreSQL/MySQL (SELECT ... FOR
   UPDATE) and in a journal (ownership follows the order of the log records). SQLite ignores
   FOR UPDATE and its driver reads outside a transaction, so two processes could pop the same
   trial: for SQLite every claim holds an exclusive lock on `<database>.lock` (fcntl; SQLite
   is a one-machine storage anyway).
3. Safety net. A cell's canonical trial is its lowest-numbered WAITING/RUNNING/COMPLETE trial.
   A worker that pops any other trial of the same cell marks it PRUNED (user_attr
   "duplicate_of") instead of running it, so a cell enqueued twice still runs once.
4. Resuming. When it joins and before each claim, a worker fails the RUNNING trials whose
   worker is lost (the lease rule of bench.leases: a dead process on this machine at once, any
   other after LEASE_S without a heartbeat) and enqueues their cells again; so does it for a
   trial interrupted by Ctrl-C or SIGTERM, and for a creator that died before enqueueing. The
   new trial resumes from the trial folder's checkpoint. A cell whose trial failed with an
   error (NaN loss, out of memory, a crash) waits for `--retry-failed`.

A study with [search] ranges uses TPE instead: each worker asks for new trials until the study
holds n_trials of them, lost and interrupted ones not counted (with several workers it may
overshoot by up to one per worker); a lost search trial is replaced, not resumed.
Everything that can be checked is checked before any database exists: the study file, the
pretrained weights every cell needs, the evaluator and its reference statistics.
"""

import contextlib
import dataclasses
import hashlib
import json
import math
import signal
import statistics
import time
import traceback
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench import leases, threads
from bench.config import RunConfig
from bench.errors import BenchError
from bench.progress import QuietProgress, make_progress
from bench.results import (
    describe_storage,
    failure_kind,
    open_storage,
    storage_file,
    storage_url_for,
)
from bench.study import Choices, Range, Study, slug
from bench.tracking import Tracker, absolute_uri, sqlite_path, tracking_uri_for
from casdm import faults
from casdm.catalog import LPIPS_TRUNKS
from casdm.config import flatten, to_dict
from casdm.errors import InputError

if TYPE_CHECKING:
    import optuna
    import torch

    from bench.trial import Scorer, TrialOutcome

# How long a joining worker waits for the creator's "cells_enqueued" marker before it enqueues
# the missing cells itself (the creator may have died; enqueueing again is safe, see step 3).
ENQUEUE_WAIT_S = 120.0
# The dry run's cost estimate times batches of at most this many images.
MEASURE_BATCH = 64
# ... and takes the median of this many timed training steps and sampling steps.
MEASURE_REPEATS = 3
_ALIVE = ("WAITING", "RUNNING", "COMPLETE")


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


# --- values as Optuna params --------------------------------------------------------------


def encode(value: Any) -> Any:
    """An axis value as an Optuna categorical choice (lists become their JSON text)."""
    return json.dumps(value) if isinstance(value, list | tuple) else value


def _encoded(params: dict[str, Any]) -> dict[str, Any]:
    return {key: encode(value) for key, value in params.items()}


def config_digest(study: Study) -> str:
    """SHA-256 of every cell's config (device excluded: it may differ between machines)."""
    configs = [study.config(params) for params in study.cells()]
    if study.is_grid:
        return portable_digest(configs)
    space = {key: dataclasses.asdict(axis) for key, axis in study.search.items()}
    return portable_digest(configs, space)


def portable_digest(configs: list[RunConfig], *extra: Any) -> str:
    """SHA-256 of the configs without their device (which may differ between machines)."""
    documents = [to_dict(config) for config in configs]
    for document in documents:
        document.pop("device", None)
    text = json.dumps([*documents, *extra], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


# --- locks and heartbeats -----------------------------------------------------------------


@contextlib.contextmanager
def file_lock(path: Path | None) -> Iterator[None]:
    """An exclusive fcntl lock on `path` (None: no lock), held for the `with` block."""
    if path is None:
        yield
        return
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _lock_path(database: Path | None) -> Path | None:
    return None if database is None else database.with_name(database.name + ".lock")


# --- checks before any database exists -----------------------------------------------------


def _configs_to_check(study: Study) -> list[RunConfig]:
    """Every config a trial may run: each grid cell, or each search choice at its bounds."""
    if study.is_grid:
        return [study.config(params) for params in study.cells()]
    configs = []
    for params in study.cells():
        configs.append(study.config(params))
        for key, axis in study.search.items():
            values = axis.choices if isinstance(axis, Choices) else (axis.low, axis.high)
            configs.extend(study.config({**params, key: value}) for value in values)
    return configs


def required_weights(configs: list[RunConfig]) -> list[str]:
    """casdm.weights names the configs' LPIPS trunks need (pretrained trunks only), sorted."""
    return sorted(
        {
            LPIPS_TRUNKS[c.metric.net]
            for c in configs
            if c.metric.name == "lpips" and c.metric.trunk == "pretrained"
        }
    )


def lpips_trunks(configs: list[RunConfig]) -> str | None:
    """The LPIPS trunk label: "pretrained", "random", "pretrained+random", or None (no LPIPS)."""
    trunks = sorted({c.metric.trunk for c in configs if c.metric.name == "lpips"})
    return "+".join(trunks) if trunks else None


def _with_device(config: RunConfig, device: str | None) -> RunConfig:
    return config if device is None else dataclasses.replace(config, device=device)


# --- the storage side ---------------------------------------------------------------------


class _Storage:
    """An Optuna study in its storage, with the claim lock SQLite needs (see module doc)."""

    def __init__(self, url: str, study: Study, *, seed: int):
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.url = url
        kind, path = storage_file(url)
        self.lock = _lock_path(path) if kind == "sqlite" else None
        with file_lock(self.lock):
            self.storage = open_storage(url, create=True)
            self.created = self._create_or_load(study, seed)
        self.study_id = self.storage.get_study_id_from_name(study.name)

    def _create_or_load(self, study: Study, seed: int) -> bool:
        import optuna

        # Grid trials are all enqueued, so the sampler never draws for them.
        sampler = (
            optuna.samplers.RandomSampler(seed=seed)
            if study.is_grid
            else optuna.samplers.TPESampler(seed=seed)
        )
        try:
            self.optuna = optuna.create_study(
                storage=self.storage,
                study_name=study.name,
                direction=study.direction,
                sampler=sampler,
                load_if_exists=False,
            )
            self.optuna.set_user_attr("creator", leases.this_process())
            return True
        except optuna.exceptions.DuplicatedStudyError:
            if not study.is_grid:
                # A second TPE worker with the same seed would propose the creator's points.
                sampler = optuna.samplers.TPESampler(seed=None)
            self.optuna = optuna.load_study(
                study_name=study.name, storage=self.storage, sampler=sampler
            )
            return False

    def attrs(self) -> dict[str, Any]:
        return self.storage.get_study_user_attrs(self.study_id)

    def trials(self, states: tuple[str, ...] | None = None) -> list["optuna.trial.FrozenTrial"]:
        """The study's trials in `states` (state names), through the study's own storage object.

        Optuna wraps RDB storages in a cache that must know every trial we may claim.
        """
        from optuna.trial import TrialState

        wanted = None if states is None else tuple(TrialState[s] for s in states)
        return self.optuna.get_trials(deepcopy=False, states=wanted)

    def trial_id(self, number: int) -> int:
        return self.storage.get_trial_id_from_study_id_trial_number(self.study_id, number)

    def enqueue_missing(
        self, cells: list[dict[str, Any]], study: Study, *, retry_failed: bool = False
    ) -> tuple[int, list[dict[str, Any]]]:
        """Enqueue each cell that has no WAITING/RUNNING/COMPLETE trial and is due to run.

        A cell is due when it has no trial yet, or its latest trial failed because its worker
        was lost or interrupted (it resumes); one whose latest trial failed with an error only
        with `retry_failed`. Returns how many were enqueued and the cells held back.
        """
        with file_lock(self.lock):
            groups: dict[str, list[optuna.trial.FrozenTrial]] = {}
            for trial in self.trials((*_ALIVE, "FAIL")):
                groups.setdefault(json.dumps(_fixed(trial), sort_keys=True), []).append(trial)
            latest = {key: max(group, key=_latest_first) for key, group in groups.items()}
            enqueued, held_back = 0, []
            for params in cells:
                last = latest.get(json.dumps(_encoded(params), sort_keys=True))
                if last is not None and last.state.name != "FAIL":
                    continue  # alive
                if last is not None and not resumable(last) and not retry_failed:
                    held_back.append(params)
                    continue
                self.optuna.enqueue_trial(
                    _encoded(params),
                    user_attrs={
                        "cell": study.cell_name(params),
                        "params": params,
                        **({"retry_of": last.number} if last is not None else {}),
                    },
                )
                enqueued += 1
        return enqueued, held_back

    def reap(self, lease_s: float) -> list["optuna.trial.FrozenTrial"]:
        """Fail the RUNNING trials whose worker is lost (bench.leases); the trials failed."""
        from optuna.exceptions import UpdateFinishedTrialError
        from optuna.trial import TrialState

        reaped = []
        with file_lock(self.lock):
            running = self.trials(("RUNNING",))
            now = time.time()  # after the read: a heartbeat read is never in the future
            for trial in running:
                reason = leases.stale_reason(trial, lease_s, now)
                if reason is None:
                    continue
                trial_id = self.trial_id(trial.number)
                try:
                    self.storage.set_trial_user_attr(trial_id, "failure", "lost")
                    self.storage.set_trial_user_attr(trial_id, "error", reason)
                    self.storage.set_trial_state_values(trial_id, TrialState.FAIL)
                except UpdateFinishedTrialError:
                    continue  # its worker finished it after all
                reaped.append(self.storage.get_trial(trial_id))
        return reaped

    def claim(self, cells: list[dict[str, Any]]) -> tuple["optuna.Trial", int] | None:
        """Pop the next WAITING trial of a canonical cell; None when no cell is waiting."""
        import optuna
        from optuna.exceptions import UpdateFinishedTrialError
        from optuna.trial import TrialState

        encoded = [_encoded(p) for p in cells]
        while True:
            with file_lock(self.lock):
                popped = None
                for waiting in self.trials(("WAITING",)):
                    trial_id = self.trial_id(waiting.number)
                    try:
                        if self.storage.set_trial_state_values(trial_id, TrialState.RUNNING):
                            popped = waiting
                            break
                    except UpdateFinishedTrialError:
                        continue
            if popped is None:
                return None
            trial = optuna.Trial(self.optuna, trial_id)
            params = _fixed(popped)
            if params not in encoded:
                self.optuna.tell(trial, state=TrialState.FAIL)
                raise BenchError(
                    f"trial {popped.number} of study {self.optuna.study_name} has params "
                    f"{params}, which are not a cell of this study file; the study was created "
                    "from another version of it"
                )
            canonical = min(t.number for t in self.trials(_ALIVE) if _fixed(t) == params)
            if canonical != popped.number:
                trial.set_user_attr("duplicate_of", canonical)
                self.optuna.tell(trial, state=TrialState.PRUNED)
                continue
            return trial, encoded.index(params)


def _fixed(trial: "optuna.trial.FrozenTrial") -> dict[str, Any]:
    """The params a trial was enqueued with (or suggested, for trials that were not)."""
    return dict(trial.system_attrs.get("fixed_params", trial.params))


def _latest_first(trial: "optuna.trial.FrozenTrial") -> tuple[bool, int]:
    """Sort key: a live trial over a failed one, then the higher number."""
    return (trial.state.name != "FAIL", trial.number)


def resumable(trial: "optuna.trial.FrozenTrial") -> bool:
    """Whether a FAIL trial's cell runs again by itself (its worker was lost or interrupted)."""
    return failure_kind(trial) != "error"


# --- the worker ---------------------------------------------------------------------------


class _Worker:
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
        self, configs: list[RunConfig], storage: str, tracking_uri: str, n_trials: int | None
    ) -> None:
        """Join the tracking store and the study, initialise it, run trials until done."""
        base = configs[0]
        self.configs = configs
        self.meta = study_meta(base, self.scorer.label(base), configs)
        self.meta["overrides"] = list(self.study.overrides)  # `bench report` reruns with them
        with file_lock(_lock_path(sqlite_path(tracking_uri))):
            self.tracker = Tracker(tracking_uri, self.study.name)
            self.tracker.set_view(*_view_columns(self.study))
        self.tracking_uri = tracking_uri
        self.store = _Storage(storage, self.study, seed=base.seed)
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
        from casdm import distributed

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
                    root = self.tracker.client.download_artifacts(
                        entry["mlflow_run_id"], "evaluator", folder
                    )
                except Exception as err:  # MLflow raises its own and OS errors alike
                    raise BenchError(
                        f"cannot download study {self.study.name!r}'s evaluator build (MLflow "
                        f"run {entry['mlflow_run_id']}: {type(err).__name__}: {err}); every "
                        "worker must reach the MLflow artifact store: use an MLflow server "
                        "(--tracking-uri http://...) or an artifact root on a shared disk"
                    ) from None
                self.scorer.adopt(config, Path(root), entry["files"])
        distributed.broadcast_object(("evaluators", None))  # torchrun: preparing is collective
        self.scorer.forget()
        for config in self.configs:  # in the order _follow prepares them
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
        with file_lock(_lock_path(sqlite_path(self.tracking_uri))):
            tracker = Tracker(self.tracking_uri, f"{self.study.name}/evaluator")
        run = tracker.start_run("evaluator build", tags={"optuna.study": self.study.name, **build})
        for name in files:
            parent = Path("evaluator", name).parent.as_posix()
            run.client.log_artifact(run.run_id, str(self.scorer.cache_dir / name), parent)
        run.finish()
        return {**build, "mlflow_run_id": run.run_id, "files": files}

    def _reference(self) -> None:
        from casdm import distributed

        config = _with_device(self.study.config(self.study.cells()[0]), self.device)
        distributed.broadcast_object(("reference", None))  # torchrun: scoring is collective
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
        config = _with_device(study.config(params), self.device)
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
                "lpips_trunk": config.metric.trunk if config.metric.name == "lpips" else "none",
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

        distributed.broadcast_object(("trial", (params, str(workdir))))  # other ranks
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
    from bench.evaluation import scores as score_registry
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
    """The study user_attr "meta" the tables' captions read (contract: bench/results.py).

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
        "eta": config.sample.eta,
        "clip_x0": config.sample.clip_x0,
        "random_weights": config.eval.random_weights,
        "protocols": Scorer.protocols(config),
        "lpips_trunk": lpips_trunks(configs),
    }


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
) -> RunSummary:
    """Create or join `study` in `storage` and run trials until no cell is left (or n_trials).

    storage: an Optuna storage URL (default sqlite:///<results>/optuna.db); tracking_uri: an
    MLflow tracking URI (default sqlite:///<results>/mlflow.db); n_trials: at most this many
    trials in this process; device overrides every config's device; retry_failed: run the
    cells whose trials failed with an error again (lost and interrupted ones resume anyway);
    lease_s: the heartbeat lease after which another worker's RUNNING trial is taken over.

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
    configs = [_with_device(c, device) for c in _configs_to_check(study)]
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
            configs = [_with_device(c, device) for c in configs]
        summary.rank = dist.rank
        # Rank 0 downloads missing weights first; the other ranks then find the files.
        distributed.main_first(lambda: [weights.ensure(n) for n in required_weights(configs)])
        scorer = Scorer(results / "cache", resolve_device(configs[0].device))
        with make_progress(quiet or not dist.is_main) as progress:
            progress.log(f"preparing the evaluator for {study.name}")
            for config in configs:
                scorer.prepare(config, progress)  # collective under torchrun
            if not dist.is_main:
                _follow(study, device, scorer, configs)
                return summary
            try:
                worker = _Worker(
                    study,
                    scorer,
                    progress,
                    results,
                    device,
                    summary,
                    retry_failed=retry_failed,
                    lease_s=lease_s,
                )
                worker.lead(configs, storage, tracking_uri, n_trials)
            finally:
                distributed.broadcast_object(None)  # under torchrun: the other ranks stop too
    finally:
        if joined:
            distributed.shutdown()
    return summary


def _follow(study: Study, device: str | None, scorer: "Scorer", configs: list[RunConfig]) -> None:
    """Ranks > 0 of a torchrun: do, in step with rank 0, what it announces, until None.

    Rank 0 announces ("evaluators", None) after taking the study's evaluator build into the
    cache, ("reference", None) before scoring the held-out real data and ("trial", (params,
    workdir)) before each trial; preparing, training, sampling and scoring are collective.
    """
    from bench.trial import run_trial
    from casdm import distributed

    while (announced := distributed.broadcast_object(None)) is not None:
        what, payload = announced
        if what == "evaluators":
            scorer.forget()
            for config in configs:
                scorer.prepare(config)
            continue
        if what == "reference":
            scorer.score_real_data(_with_device(study.config(study.cells()[0]), device))
            continue
        params, workdir = payload
        try:
            run_trial(_with_device(study.config(params), device), Path(workdir), scorer=scorer)
        except Exception:
            # Rank 0 meets the same error and records the trial as failed; wait for the next.
            traceback.print_exc()


def config_mismatch(study: Study, url: str, attrs: Mapping[str, Any]) -> str:
    """Why `bench run` refuses to join a stored study created from another configuration."""
    stored = attrs.get("meta", {}).get("overrides")
    was = f" (it was run with --set {stored})" if stored is not None else ""
    return (
        f"study {study.name!r} in {describe_storage(url)} was created from a different "
        f"configuration than {study.path} with --set {list(study.overrides)}{was}; run it with "
        "the same study file and --set values, or use another --storage"
    )


def stored_mismatch(study: Study, storage: str) -> str | None:
    """config_mismatch's message if `storage` holds `study` from another configuration."""
    import optuna

    try:
        stored = optuna.load_study(
            study_name=study.name, storage=open_storage(storage, create=False)
        )
    except (BenchError, KeyError):
        return None
    digest = stored.user_attrs.get("config_sha256")
    if digest is None or digest == config_digest(study):
        return None
    return config_mismatch(study, storage, stored.user_attrs)


def pending_cells(study: Study, storage: str) -> list[dict[str, Any]]:
    """Cells with no COMPLETE or RUNNING trial in `storage`; reads only, creates nothing."""
    import optuna

    cells = study.cells()
    if not study.is_grid:
        return cells
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        stored = open_storage(storage, create=False)
        existing = optuna.load_study(study_name=study.name, storage=stored)
    except (BenchError, KeyError):
        return cells
    taken = [_fixed(t) for t in existing.get_trials(deepcopy=False) if t.state.name in _ALIVE[1:]]
    return [p for p in cells if _encoded(p) not in taken]


@dataclass(frozen=True)
class CellCost:
    """The work one trial does, and a rough time for it."""

    cell: str
    train_images: int  # train.steps x train.batch_size
    samples: int
    sampling_evals: int  # samples x sampler steps (model evaluations per image)
    seconds: float  # training + sampling, extrapolated from a measurement; scoring excluded


@dataclass(frozen=True)
class Plan:
    """What `bench run --dry-run` prints: the pending trials, their cost, the weights needed."""

    study: str
    total: int
    cells: list[CellCost]
    device: str
    weights: dict[str, str]  # casdm.weights name -> present / missing / corrupt
    method: str = (
        f"measured: the median of {MEASURE_REPEATS} training steps and of {MEASURE_REPEATS} "
        "sampling steps of a random-weight model at the run's batch sizes (at most "
        f"{MEASURE_BATCH}) on this machine's device, extrapolated linearly per image; "
        "evaluation not included"
    )

    @property
    def seconds(self) -> float:
        """The pending trials' estimated training and sampling time on `device`, one worker."""
        return sum(c.seconds for c in self.cells)

    @property
    def device_hours(self) -> float:
        """`seconds` in hours of the measured device: divide by the workers to get wall time."""
        return self.seconds / 3600


def plan_study(study: Study, storage: str, device: str | None = None) -> Plan:
    """The pending trials of `study` and a cost estimate; creates nothing, downloads nothing."""
    from bench.trial import resolve_device
    from casdm import weights

    mismatch = stored_mismatch(study, storage)
    if mismatch is not None:
        raise BenchError(f"dry run: `bench run` would stop before any trial: {mismatch}")
    pending = pending_cells(study, storage)
    if not study.is_grid:
        # A search has no fixed cells: n_trials trials like its base config.
        pending = [study.cells()[i % len(study.cells())] for i in range(study.size)]
    configs = [_with_device(study.config(p), device) for p in pending]
    torch_device = resolve_device(configs[0].device if configs else device or "auto")
    measured: dict[str, tuple[float, float]] = {}
    costs = []
    for params, config in zip(pending, configs, strict=True):
        key = json.dumps(
            [
                to_dict(config.architecture),
                to_dict(config.model),
                to_dict(config.metric),
                config.data.resolution,
                config.train.batch_size,
                config.sample.batch_size,
            ],
            sort_keys=True,
        )
        if key not in measured:
            measured[key] = measure_step_seconds(config, torch_device)
        train_s, forward_s = measured[key]
        train_images = config.train.steps * config.train.batch_size
        evals = config.sample.num_samples * config.sample.steps
        costs.append(
            CellCost(
                cell=study.cell_name(params) or "base",
                train_images=train_images,
                samples=config.sample.num_samples,
                sampling_evals=evals,
                seconds=train_images * train_s + evals * forward_s,
            )
        )
    needed = required_weights(_configs_to_check(study))
    return Plan(
        study=study.name,
        total=study.size,
        cells=costs,
        device=str(torch_device),
        weights={name: weights.status(name) for name in needed},
    )


def measure_step_seconds(config: RunConfig, device: "torch.device") -> tuple[float, float]:
    """Seconds per image of a training step and of a sampling step of `config`'s model.

    Runs casdm's own `train` for 1 + MEASURE_REPEATS steps (the first warms up, and compiles
    with train.compile; the median of the others is taken, so one step slowed by another
    process does not skew the estimate) and `generate` for one sampler step 1 + MEASURE_REPEATS
    times (the median of all but the first), on a random-weight model with random images, at
    the run's batch sizes capped at MEASURE_BATCH, with 3 channels (the channel count barely
    changes the cost); an LPIPS metric gets a random trunk (the same cost, no download).
    """
    import torch

    from casdm.architectures import build_model
    from casdm.metrics import build_metric
    from casdm.samplers import generate
    from casdm.schedule import Schedule
    from casdm.train import train

    shape = (3, config.data.resolution, config.data.resolution)
    schedule = Schedule.named(config.diffusion.schedule, config.diffusion.timesteps)
    model = build_model(config.architecture, config.model, schedule, *shape[:2])
    metric = build_metric(dataclasses.replace(config.metric, trunk="random"), shape)
    train_batch = min(MEASURE_BATCH, config.train.batch_size)
    images = torch.rand((train_batch, *shape), generator=torch.Generator().manual_seed(0))
    steps = dataclasses.replace(
        config.train,
        steps=1 + MEASURE_REPEATS,
        batch_size=train_batch,
        warmup_steps=0,
        log_every=1,
    )
    result = train(model, metric, images * 2 - 1, steps, seed=0, device=device)
    train_s = statistics.median(1 / record["images_per_s"] for record in result.history[1:])

    sample_batch = min(MEASURE_BATCH, config.sample.batch_size)
    one_step = dataclasses.replace(
        config.sample, steps=1, num_samples=sample_batch, batch_size=sample_batch
    )
    timings = []
    for _ in range(1 + MEASURE_REPEATS):
        start = time.perf_counter()
        generate(result.ema, schedule, one_step, shape, seed=0, device=device)  # syncs: .cpu()
        timings.append(time.perf_counter() - start)
    return train_s, statistics.median(timings[1:]) / sample_batch
