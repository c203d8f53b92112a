"""MLflow tracking: one experiment per study, one run per trial, through `MlflowClient` only.

No global MLflow state (no `mlflow.set_experiment` / active run), so several trackers can live in
one process and nothing leaks between tests. The deprecated optuna_integration.MLflowCallback is
not used: the runner records the MLflow run id on the Optuna trial and the trial number on the run.
"""

import contextlib
import logging
import math
import os
import shutil
import sqlite3
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

DEFAULT_TRACKING_URI = "sqlite:///results/mlflow.db"

# MLflow refuses longer parameter values; a flattened RunConfig never comes close.
_MAX_PARAM_CHARS = 6000
# MLflow 3's UI shows an experiment as model training (runs, metrics), not GenAI (traces), by
# this experiment tag; VIEW_KEY names the saved view (columns, sort) the `bench ui` URL opens.
EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")
VIEW_TAG_PREFIX = "mlflow.sharedViewState."
VIEW_KEY = "bench"
SAMPLE_GRID_MIN_PX = 512  # sample grids are logged upscaled (nearest) to at least this size
# The study-level run (figures, report, table) is tagged ROLE_TAG = "study"; trial runs "trial".
ROLE_TAG = "bench.role"


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
        logging.getLogger(__name__).debug("no template store (%s); MLflow creates one", err)


def default_artifact_root(uri: str) -> str | None:
    """Where a local SQLite store keeps artifacts: `<db folder>/mlartifacts` (not ./mlruns).

    A tracking server (http://...) decides for itself, so None there.
    """
    path = sqlite_path(uri)
    if path is None:
        return None
    return (path.resolve().parent / "mlartifacts").as_uri()


def param_value(value: Any) -> str:
    """A config value as MLflow shows it: lists as `[1, 2]`, everything else via str()."""
    text = str(list(value)) if isinstance(value, tuple) else str(value)
    return text[:_MAX_PARAM_CHARS]


class RunLog:
    """One MLflow run (one trial): params, training curves, final metrics, artifacts, status."""

    def __init__(self, client: Any, run_id: str):
        self.client = client
        self.run_id = run_id

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Flattened config keys -> values (logged once; MLflow params are immutable)."""
        from mlflow.entities import Param

        batch = [Param(key, param_value(value)) for key, value in sorted(params.items())]
        # MLflow takes at most 100 params per batch.
        for start in range(0, len(batch), 100):
            self.client.log_batch(self.run_id, params=batch[start : start + 100])

    def log_metrics(self, metrics: Mapping[str, float], step: int = 0) -> None:
        """Finite numeric metrics at `step` (NaN/inf are skipped: MLflow stores them poorly)."""
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [
            Metric(key, float(value), now, step)
            for key, value in metrics.items()
            if isinstance(value, int | float) and math.isfinite(value)
        ]
        if batch:
            self.client.log_batch(self.run_id, metrics=batch)

    def log_train(self, record: Mapping[str, float]) -> None:
        """One training record as `train/<key>` curves at its step (the train callback)."""
        step = int(record["step"])
        self.log_metrics({f"train/{k}": v for k, v in record.items() if k != "step"}, step=step)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        """Free-form labels (trial number, evaluator, random weights)."""
        from mlflow.entities import RunTag

        self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        """Copy a file (sample grid PNG, config JSON) into the run's artifacts."""
        self.client.log_artifact(self.run_id, str(path), artifact_path=artifact_path)

    def log_image(self, path: Path, min_px: int = SAMPLE_GRID_MIN_PX) -> None:
        """An image under its own name, enlarged by a whole factor (nearest neighbour, so pixels
        stay sharp blocks) until its shorter side is at least `min_px`: an 82 px grid of 8x8
        digits is unreadable in the UI."""
        import tempfile

        from PIL import Image

        with Image.open(path) as image:
            factor = max(1, math.ceil(min_px / min(image.size)))
            big = image.resize((image.width * factor, image.height * factor), Image.NEAREST)
        with tempfile.TemporaryDirectory() as folder:
            copy = Path(folder) / path.name
            big.save(copy)
            self.client.log_artifact(self.run_id, str(copy))

    def finish(self) -> None:
        """End the run as FINISHED."""
        self.client.set_terminated(self.run_id, status="FINISHED")

    def fail(self, error: str, status: str = "FAILED") -> None:
        """End the run as FAILED (or KILLED: interrupted), with the reason as its "error" tag."""
        self.set_tags({"error": error[:5000]})
        self.client.set_terminated(self.run_id, status=status)


class Tracker:
    """The MLflow experiment of one study (created once; a concurrent creator is tolerated)."""

    def __init__(self, tracking_uri: str, experiment_name: str):
        from mlflow import MlflowClient

        # MLflow logs its store's schema set-up at INFO on first use: noise in `bench run`.
        logging.getLogger("mlflow").setLevel(logging.WARNING)
        tracking_uri = absolute_uri(tracking_uri)
        path = sqlite_path(tracking_uri)
        if path is not None:
            create_sqlite_store(path)
        self.tracking_uri = tracking_uri
        self.client = MlflowClient(tracking_uri=tracking_uri)
        self.experiment_id = self._experiment(experiment_name)

    def _experiment(self, name: str) -> str:
        """The id of experiment `name`, creating it if absent; losing a creation race is fine."""
        from mlflow.exceptions import MlflowException

        found = self.client.get_experiment_by_name(name)
        if found is not None:
            return found.experiment_id
        try:
            return self.client.create_experiment(
                name, artifact_location=default_artifact_root(self.tracking_uri)
            )
        except MlflowException as err:
            if err.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
        found = self.client.get_experiment_by_name(name)
        if found is None:
            raise RuntimeError(f"MLflow experiment {name!r} was reported to exist but is missing")
        return found.experiment_id

    def start_run(self, run_name: str, tags: Mapping[str, Any]) -> RunLog:
        """A new run named `run_name` (the trial's cell) in the study's experiment."""
        run = self.client.create_run(
            self.experiment_id, run_name=run_name, tags={k: str(v) for k, v in tags.items()}
        )
        return RunLog(self.client, run.info.run_id)

    def run(self, run_id: str) -> RunLog:
        """An existing run of this store (a lost worker's, to be marked failed)."""
        return RunLog(self.client, run_id)

    def set_view(
        self, params: list[str], metrics: list[str], order_by: str, ascending: bool
    ) -> None:
        """The experiment's kind and the saved view `bench ui` opens: these params and metrics
        as the runs table's columns, sorted by the metric `order_by`."""
        import json
        import time

        columns = [
            "attributes.`Run Name`",
            *(f"params.`{key}`" for key in params),
            *(f"metrics.`{key}`" for key in metrics),
        ]
        state: dict[str, Any] = {"selectedColumns": columns, "runsHiddenMode": "SHOW_ALL"}
        state.update(orderByKey=f"metrics.`{order_by}`", orderByAsc=ascending)
        now = int(time.time() * 1000)
        view = {"name": "bench", "createdAt": now, "updatedAt": now, "state": json.dumps(state)}
        self.client.set_experiment_tag(self.experiment_id, *EXPERIMENT_KIND)
        self.client.set_experiment_tag(
            self.experiment_id, VIEW_TAG_PREFIX + VIEW_KEY, json.dumps(view)
        )

    def study_run(self, study_name: str) -> RunLog:
        """The study's summary run (figures, report, table): found by its ROLE_TAG, else new."""
        found = self.client.search_runs(
            [self.experiment_id], filter_string=f"tags.`{ROLE_TAG}` = 'study'", max_results=1
        )
        if found:
            return RunLog(self.client, found[0].info.run_id)
        run = self.client.create_run(
            self.experiment_id,
            run_name=f"{study_name} (study summary)",
            tags={ROLE_TAG: "study", "optuna.study": study_name},
        )
        self.client.set_terminated(run.info.run_id, status="FINISHED")
        return RunLog(self.client, run.info.run_id)

    def histories(self, run_id: str, prefix: str) -> dict[str, list[tuple[int, float]]]:
        """Every metric of a run whose key starts with `prefix`: key -> [(step, value)]."""
        run = self.client.get_run(run_id)
        return {
            key: sorted((m.step, m.value) for m in self.client.get_metric_history(run_id, key))
            for key in run.data.metrics
            if key.startswith(prefix)
        }
