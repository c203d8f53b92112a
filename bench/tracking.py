"""MLflow tracking as the harness sees it: one experiment per study (`Tracker`), one run per
trial (`RunLog`).

Both hold a backend (bench.tracking_backend) that makes every MLflow call: an `MlflowBackend` in
this process by default, or `bench run`'s sidecar process (bench.tracking_sidecar), whose
calls are just as synchronous. This module imports no MLflow. The deprecated
optuna_integration.MLflowCallback is not used: the runner records the MLflow run id on the
Optuna trial and the trial number on the run.
"""

import json
import math
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from bench.tracking_backend import MlflowBackend, absolute_uri

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


def param_value(value: Any) -> str:
    """A config value as MLflow shows it: lists as `[1, 2]`, everything else via str()."""
    text = str(list(value)) if isinstance(value, tuple) else str(value)
    return text[:_MAX_PARAM_CHARS]


class RunLog:
    """One MLflow run (one trial): params, training curves, final metrics, artifacts, status."""

    def __init__(self, backend: MlflowBackend, run_id: str):
        self.backend = backend
        self.run_id = run_id

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Flattened config keys -> values (logged once; MLflow params are immutable)."""
        batch = [(key, param_value(value)) for key, value in sorted(params.items())]
        self.backend.log_batch(self.run_id, params=batch)

    def log_metrics(self, metrics: Mapping[str, float], step: int = 0) -> None:
        """Finite numeric metrics at `step` (NaN/inf are skipped: MLflow stores them poorly)."""
        now = int(time.time() * 1000)
        batch = [
            (key, float(value), now, step)
            for key, value in metrics.items()
            if isinstance(value, int | float) and math.isfinite(value)
        ]
        if batch:
            self.backend.log_batch(self.run_id, metrics=batch)

    def log_train(self, record: Mapping[str, float]) -> None:
        """One training record as `train/<key>` curves at its step (the train callback)."""
        step = int(record["step"])
        self.log_metrics({f"train/{k}": v for k, v in record.items() if k != "step"}, step=step)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        """Free-form labels (trial number, evaluator, random weights)."""
        self.backend.log_batch(self.run_id, tags={k: str(v) for k, v in tags.items()})

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        """Copy a file (sample grid PNG, config JSON) into the run's artifacts."""
        self.backend.log_artifact(self.run_id, str(path), artifact_path)

    def log_image(self, path: Path, min_px: int = SAMPLE_GRID_MIN_PX) -> None:
        """An image under its own name, enlarged by a whole factor (nearest neighbour, so pixels
        stay sharp blocks) until its shorter side is at least `min_px`: an 82 px grid of 8x8
        digits is unreadable in the UI."""
        from PIL import Image

        with Image.open(path) as image:
            factor = max(1, math.ceil(min_px / min(image.size)))
            big = image.resize((image.width * factor, image.height * factor), Image.NEAREST)
        with tempfile.TemporaryDirectory() as folder:
            copy = Path(folder) / path.name
            big.save(copy)
            self.backend.log_artifact(self.run_id, str(copy))

    def finish(self) -> None:
        """End the run as FINISHED."""
        self.backend.set_terminated(self.run_id, "FINISHED")

    def fail(self, error: str, status: str = "FAILED") -> None:
        """End the run as FAILED (or KILLED: interrupted), with the reason as its "error" tag."""
        self.set_tags({"error": error[:5000]})
        self.backend.set_terminated(self.run_id, status)


class Tracker:
    """The MLflow experiment of one study (created once; a concurrent creator is tolerated).

    backend: where the MLflow calls go (an MlflowBackend or bench.tracking_sidecar's proxy of
    one) on `tracking_uri`; by default a new MlflowBackend in this process.
    """

    def __init__(
        self, tracking_uri: str, experiment_name: str, backend: MlflowBackend | None = None
    ):
        tracking_uri = absolute_uri(tracking_uri)
        if backend is None:
            backend = MlflowBackend(tracking_uri)
        elif backend.tracking_uri != tracking_uri:
            raise ValueError(f"a backend on {backend.tracking_uri} given for {tracking_uri}")
        self.tracking_uri = tracking_uri
        self.backend = backend
        self.experiment_id = backend.experiment_id(experiment_name)

    def start_run(self, run_name: str, tags: Mapping[str, Any]) -> RunLog:
        """A new run named `run_name` (the trial's cell) in the study's experiment."""
        tags = {k: str(v) for k, v in tags.items()}
        return RunLog(self.backend, self.backend.create_run(self.experiment_id, run_name, tags))

    def run(self, run_id: str) -> RunLog:
        """An existing run of this store (a lost worker's, to be marked failed)."""
        return RunLog(self.backend, run_id)

    def set_view(
        self, params: list[str], metrics: list[str], order_by: str, ascending: bool
    ) -> None:
        """The experiment's kind and the saved view `bench ui` opens: these params and metrics
        as the runs table's columns, sorted by the metric `order_by`."""
        columns = [
            "attributes.`Run Name`",
            *(f"params.`{key}`" for key in params),
            *(f"metrics.`{key}`" for key in metrics),
        ]
        state: dict[str, Any] = {"selectedColumns": columns, "runsHiddenMode": "SHOW_ALL"}
        state.update(orderByKey=f"metrics.`{order_by}`", orderByAsc=ascending)
        now = int(time.time() * 1000)
        view = {"name": "bench", "createdAt": now, "updatedAt": now, "state": json.dumps(state)}
        kind_key, kind = EXPERIMENT_KIND
        tags = {kind_key: kind, VIEW_TAG_PREFIX + VIEW_KEY: json.dumps(view)}
        self.backend.set_experiment_tags(self.experiment_id, tags)

    def study_run(self, study_name: str) -> RunLog:
        """The study's summary run (figures, report, table): found by its ROLE_TAG, else new."""
        found = self.backend.search_run_ids(self.experiment_id, f"tags.`{ROLE_TAG}` = 'study'", 1)
        if found:
            return RunLog(self.backend, found[0])
        run_id = self.backend.create_run(
            self.experiment_id,
            f"{study_name} (study summary)",
            {ROLE_TAG: "study", "optuna.study": study_name},
        )
        self.backend.set_terminated(run_id, "FINISHED")
        return RunLog(self.backend, run_id)

    def histories(self, run_id: str, prefix: str) -> dict[str, list[tuple[int, float]]]:
        """Every metric of a run whose key starts with `prefix`: key -> [(step, value)]."""
        return self.backend.metric_histories(run_id, prefix)

    def download_artifacts(self, run_id: str, path: str, dst_path: Path) -> Path:
        """Copy a run's artifact (file or folder) `path` into the folder `dst_path`; its copy."""
        return Path(self.backend.download_artifacts(run_id, path, str(dst_path)))
