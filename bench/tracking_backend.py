"""Every MLflow call of the harness, on plain data: `MlflowBackend` and its tracking store.

Its operations take and return only ids, strings, numbers, lists and dicts (MLflow's entities
are built and read inside), so the backend may live in another process: `bench run` hosts it
in a sidecar (bench.tracking_sidecar), where MLflow's seconds of imports and store set-up run
in parallel with the worker's own start-up; tests, `bench plot` and `bench report` keep it in
their own process. bench.tracking's `Tracker` and `RunLog` are the harness's view of it.

This module imports no MLflow at module level, and opens the store on its first operation
(creating a new SQLite store from a template, under the store's lock file: bench.locks), so
that a `bench run` that stops before any trial writes nothing.
"""

import contextlib
import logging
import os
import shutil
import sqlite3
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from bench.locks import file_lock, lock_path

# MLflow takes at most 100 params in one log_batch.
_PARAMS_PER_BATCH = 100

_log = logging.getLogger(__name__)


def tracking_uri_for(results: Path) -> str:
    """The default tracking store of a results folder: `sqlite:///<results>/mlflow.db`."""
    return f"sqlite:///{results.as_posix()}/mlflow.db"


def sqlite_path(uri: str) -> Path | None:
    """The database file of an `sqlite:///PATH` URI (relative or absolute), else None."""
    if not uri.startswith("sqlite:///"):
        return None
    return Path(uri.removeprefix("sqlite:///"))


def absolute_uri(uri: str) -> str:
    """`sqlite:///relative/path` made absolute; other URIs unchanged.

    MLflow caches one store per URI string, so a relative path would keep pointing at the
    first working directory's database after a chdir (as in tests, or a notebook).
    """
    path = sqlite_path(uri)
    return uri if path is None else f"sqlite:///{path.resolve().as_posix()}"


def template_dir() -> Path:
    """Where empty SQLite stores are kept: $XDG_CACHE_HOME/casdm-bench/mlflow (~/.cache/...)."""
    root = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(root) / "casdm-bench" / "mlflow"


def _empty_store() -> Path:
    """An empty SQLite store of this MLflow version's schema, made once (in template_dir).

    MLflow builds a new store by running every schema migration since its first (seconds);
    a copy of this one is current already. The template holds no experiment: MLflow adds its
    Default experiment on first opening a copy, with that copy's artifact location.
    """
    import mlflow

    template = template_dir() / f"empty-mlflow-{mlflow.__version__}.db"
    if template.is_file():
        return template
    template.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=template.parent) as folder:
        built = Path(folder) / "empty.db"
        from mlflow import MlflowClient

        MlflowClient(tracking_uri=f"sqlite:///{built.as_posix()}").search_experiments()
        with sqlite3.connect(built) as db:
            db.execute("DELETE FROM experiments WHERE experiment_id = 0")
        db.close()
        os.replace(built, template)  # concurrent builders: the last one's identical copy wins
    return template


def create_sqlite_store(path: Path) -> None:
    """A new SQLite tracking store at `path`, copied from _empty_store; an existing one is kept.

    The copy appears at `path` complete or not at all (a hard link of a finished copy), so a
    concurrent creator or reader never sees a partial file. Where the template cannot be made
    (no writable cache) or linked, MLflow creates the store itself on first use.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists():
        return
    try:
        template = _empty_store()
        with tempfile.TemporaryDirectory(dir=path.parent) as folder:
            copy = Path(folder) / path.name
            shutil.copyfile(template, copy)
            with contextlib.suppress(FileExistsError):  # another process created it first
                os.link(copy, path)
    except OSError as err:
        _log.debug("no template store (%s); MLflow creates one", err)


def default_artifact_root(uri: str) -> str | None:
    """Where a local SQLite store keeps artifacts: `<db folder>/mlartifacts` (not ./mlruns).

    A tracking server (http://...) decides for itself, so None there.
    """
    path = sqlite_path(uri)
    if path is None:
        return None
    return (path.resolve().parent / "mlartifacts").as_uri()


class MlflowBackend:
    """One tracking store, through `MlflowClient` only (no global MLflow state: no
    `mlflow.set_experiment`, no active run, so several backends live in one process and nothing
    leaks between tests).

    Its public methods but `warm_up` are the operations bench.tracking_sidecar forwards: plain
    data in, plain data out. Opening a local SQLite store (creating it if absent, and MLflow's
    own set-up of it) and creating an experiment hold the store's lock file, as concurrent
    workers may do both at once.
    """

    def __init__(self, tracking_uri: str):
        self.tracking_uri = absolute_uri(tracking_uri)
        self._opened: Any = None  # the MlflowClient, once the store is open

    def warm_up(self) -> None:
        """Import MLflow and its store's module, and make the template of a missing SQLite
        store: the seconds of a first operation, less the store's opening (tens of ms), which
        writes. A failure here is left for the first operation to raise."""
        try:
            from mlflow import MlflowClient  # noqa: F401  (all of MLflow)

            path = sqlite_path(self.tracking_uri)
            if path is not None:
                import mlflow.store.tracking.sqlalchemy_store  # noqa: F401

                if not path.is_file():
                    _empty_store()
        except Exception as err:
            _log.debug("MLflow warm-up failed (%s); the first operation raises it", err)

    def _client(self) -> Any:
        """The MlflowClient of the store, opened (and a new SQLite store created) on first use."""
        if self._opened is None:
            from mlflow import MlflowClient

            # MLflow logs its store's schema set-up at INFO on first use: noise in `bench run`.
            logging.getLogger("mlflow").setLevel(logging.WARNING)
            path = sqlite_path(self.tracking_uri)
            with file_lock(lock_path(path)):
                if path is not None:
                    create_sqlite_store(path)
                self._opened = MlflowClient(tracking_uri=self.tracking_uri)
        return self._opened

    def experiment_id(self, name: str) -> str:
        """The id of experiment `name`, creating it if absent; losing a creation race is fine."""
        from mlflow.exceptions import MlflowException

        client = self._client()
        with file_lock(lock_path(sqlite_path(self.tracking_uri))):
            found = client.get_experiment_by_name(name)
            if found is not None:
                return found.experiment_id
            try:
                return client.create_experiment(
                    name, artifact_location=default_artifact_root(self.tracking_uri)
                )
            except MlflowException as err:
                if err.error_code != "RESOURCE_ALREADY_EXISTS":
                    raise
            found = client.get_experiment_by_name(name)
        if found is None:
            raise RuntimeError(f"MLflow experiment {name!r} was reported to exist but is missing")
        return found.experiment_id

    def set_experiment_tags(self, experiment_id: str, tags: Mapping[str, str]) -> None:
        """Set (or replace) tags of an experiment, one at a time, in this order."""
        client = self._client()
        with file_lock(lock_path(sqlite_path(self.tracking_uri))):
            for key, value in tags.items():
                client.set_experiment_tag(experiment_id, key, value)

    def create_run(self, experiment_id: str, run_name: str, tags: Mapping[str, str]) -> str:
        """A new RUNNING run; its id."""
        run = self._client().create_run(experiment_id, run_name=run_name, tags=dict(tags))
        return run.info.run_id

    def log_batch(
        self,
        run_id: str,
        *,
        params: Sequence[tuple[str, str]] = (),
        metrics: Sequence[tuple[str, float, int, int]] = (),
        tags: Mapping[str, str] | None = None,
    ) -> None:
        """Params (key, value), metrics (key, value, timestamp ms, step) and tags of a run;
        params in batches of at most 100, as MLflow takes them."""
        from mlflow.entities import Metric, Param, RunTag

        client = self._client()
        batch = [Param(key, value) for key, value in params]
        for start in range(0, len(batch), _PARAMS_PER_BATCH):
            client.log_batch(run_id, params=batch[start : start + _PARAMS_PER_BATCH])
        if metrics:
            client.log_batch(run_id, metrics=[Metric(*metric) for metric in metrics])
        if tags:
            client.log_batch(run_id, tags=[RunTag(key, value) for key, value in tags.items()])

    def log_artifact(self, run_id: str, local_path: str, artifact_path: str | None = None) -> None:
        """Copy a local file into the run's artifacts (under `artifact_path`, if given)."""
        self._client().log_artifact(run_id, local_path, artifact_path=artifact_path)

    def set_terminated(self, run_id: str, status: str) -> None:
        """End a run as FINISHED, FAILED or KILLED."""
        self._client().set_terminated(run_id, status=status)

    def search_run_ids(self, experiment_id: str, filter_string: str, max_results: int) -> list:
        """The ids of the experiment's runs that match `filter_string` (MLflow's search order)."""
        found = self._client().search_runs(
            [experiment_id], filter_string=filter_string, max_results=max_results
        )
        return [run.info.run_id for run in found]

    def metric_histories(self, run_id: str, prefix: str) -> dict[str, list[tuple[int, float]]]:
        """Every metric of a run whose key starts with `prefix`: key -> [(step, value)]."""
        client = self._client()
        run = client.get_run(run_id)
        return {
            key: sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))
            for key in run.data.metrics
            if key.startswith(prefix)
        }

    def download_artifacts(self, run_id: str, path: str, dst_path: str) -> str:
        """Copy a run's artifact (file or folder) `path` into `dst_path`; its local path."""
        return self._client().download_artifacts(run_id, path, dst_path)


# The operations another process may call (bench.tracking_sidecar): the public methods.
OPERATIONS = frozenset(
    name
    for name, member in vars(MlflowBackend).items()
    if callable(member) and not name.startswith("_") and name != "warm_up"
)
