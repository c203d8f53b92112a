"""A study in its Optuna storage: creating it, enqueueing its cells, claiming them one at a time,
resuming lost trials, and checking that a stored study is the one a study file describes.

How each grid cell runs exactly once across any number of workers: the claim protocol in
docs/DESIGN.md.
"""

import dataclasses
import hashlib
import json
import time
import warnings
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from bench import leases
from bench.config import RunConfig, portable_dict
from bench.errors import BenchError
from bench.locks import file_lock, lock_path
from bench.results import describe_storage, failure_kind, open_storage, storage_file
from bench.study import Study

if TYPE_CHECKING:
    import optuna

# The states of a trial that holds its cell (lowest number: the cell's canonical trial).
ALIVE = ("WAITING", "RUNNING", "COMPLETE")


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
    """SHA-256 of the configs without their device and other settings that may differ between
    machines (bench.config.portable_dict)."""
    documents = [portable_dict(config) for config in configs]
    text = json.dumps([*documents, *extra], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


# --- the storage side ---------------------------------------------------------------------


class Storage:
    """An Optuna study in its storage, with the claim lock SQLite needs (docs/DESIGN.md)."""

    def __init__(self, url: str, study: Study, *, seed: int):
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.url = url
        kind, path = storage_file(url)
        self.lock = lock_path(path) if kind == "sqlite" else None
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
            # optuna-dashboard and Optuna's plots name the objective by its score, not
            # "Objective 0".
            with warnings.catch_warnings():  # "experimental" since Optuna 3.2; stable in use
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                self.optuna.set_metric_names([study.objective_score])
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
            for trial in self.trials((*ALIVE, "FAIL")):
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
            canonical = min(t.number for t in self.trials(ALIVE) if _fixed(t) == params)
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


# --- a stored study against its study file ------------------------------------------------


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
    taken = [_fixed(t) for t in existing.get_trials(deepcopy=False) if t.state.name in ALIVE[1:]]
    return [p for p in cells if _encoded(p) not in taken]
