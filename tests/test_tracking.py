"""The MLflow layer: one experiment per study, one run per trial, read back with MlflowClient."""

import contextlib
import math
import sqlite3
from pathlib import Path

import pytest
from mlflow import MlflowClient

from bench.tracking import Tracker, param_value
from bench.tracking_backend import (
    absolute_uri,
    default_artifact_root,
    sqlite_path,
    template_dir,
    tracking_uri_for,
)


def test_experiment_is_created_once_and_joined_by_later_trackers(workspace):
    first = Tracker(workspace.tracking_uri, "study-a")
    second = Tracker(workspace.tracking_uri, "study-a")
    other = Tracker(workspace.tracking_uri, "study-b")
    assert first.experiment_id == second.experiment_id != other.experiment_id
    names = [e.name for e in MlflowClient(workspace.tracking_uri).search_experiments()]
    assert names.count("study-a") == 1


def test_losing_the_experiment_creation_race_joins_the_winner(workspace, monkeypatch):
    winner = Tracker(workspace.tracking_uri, "raced")
    real = MlflowClient.get_experiment_by_name
    calls = []

    def not_yet_visible(self, name):
        # The first lookup happens before the other process's experiment is visible.
        calls.append(name)
        return None if len(calls) == 1 else real(self, name)

    monkeypatch.setattr(MlflowClient, "get_experiment_by_name", not_yet_visible)
    loser = Tracker(workspace.tracking_uri, "raced")
    assert loser.experiment_id == winner.experiment_id and len(calls) == 2


def test_run_holds_params_curves_metrics_tags_and_artifacts(workspace, tmp_path):
    tracker = Tracker(workspace.tracking_uri, "logged")
    run = tracker.start_run("cas-dm lpips=0.3 seed=1", tags={"optuna.trial_number": 7})
    run.log_params({"train.lr": 0.0002, "model.channel_mults": (1, 2, 2), "metric.name": "lpips"})
    run.log_train({"step": 50, "loss": 0.5, "lr": 1e-4, "grad_norm": 2.0, "eps_mse": 0.4})
    run.log_train({"step": 100, "loss": 0.25, "lr": 2e-4, "grad_norm": 1.0, "eps_mse": 0.2})
    run.log_metrics({"fid": 12.5, "is_mean": 3.25, "kid": math.nan})
    run.set_tags({"lpips_trunk": "random"})
    grid = tmp_path / "samples.png"
    grid.write_bytes(b"\x89PNG\r\n\x1a\nfake")
    run.log_artifact(grid)
    run.finish()

    client = MlflowClient(workspace.tracking_uri)
    stored = client.get_run(run.run_id)
    assert stored.info.run_name == "cas-dm lpips=0.3 seed=1"
    assert stored.info.status == "FINISHED"
    assert stored.info.experiment_id == tracker.experiment_id
    assert stored.data.params == {
        "train.lr": "0.0002",
        "model.channel_mults": "[1, 2, 2]",
        "metric.name": "lpips",
    }
    assert stored.data.tags["optuna.trial_number"] == "7"
    assert stored.data.tags["lpips_trunk"] == "random"
    assert stored.data.metrics["fid"] == 12.5 and stored.data.metrics["is_mean"] == 3.25
    assert "kid" not in stored.data.metrics  # NaN is not logged
    history = client.get_metric_history(run.run_id, "train/loss")
    assert [(m.step, m.value) for m in history] == [(50, 0.5), (100, 0.25)]
    assert [m.step for m in client.get_metric_history(run.run_id, "train/eps_mse")] == [50, 100]
    assert [a.path for a in client.list_artifacts(run.run_id)] == ["samples.png"]
    # A local SQLite store keeps artifacts beside the database, not in ./mlruns.
    artifact_dir = workspace.results / "mlartifacts"
    assert stored.info.artifact_uri.startswith(artifact_dir.resolve().as_uri())
    assert not (workspace.root / "mlruns").exists()


@pytest.mark.parametrize("status", ["FAILED", "KILLED"])
def test_failed_or_interrupted_trial_ends_its_run_with_the_reason(workspace, status):
    tracker = Tracker(workspace.tracking_uri, "failing")
    run = tracker.start_run("ddpm none", tags={})
    tracker.run(run.run_id).fail("RuntimeError: boom", status)
    stored = MlflowClient(workspace.tracking_uri).get_run(run.run_id)
    assert stored.info.status == status and stored.data.tags["error"] == "RuntimeError: boom"


def test_many_params_are_logged_in_batches_of_at_most_100(workspace):
    run = Tracker(workspace.tracking_uri, "wide").start_run("wide", tags={})
    run.log_params({f"key{i:03d}": i for i in range(250)})
    params = MlflowClient(workspace.tracking_uri).get_run(run.run_id).data.params
    assert len(params) == 250 and params["key249"] == "249"


def test_tracking_uris_and_paths():
    assert tracking_uri_for(Path("results")) == "sqlite:///results/mlflow.db"
    assert sqlite_path("sqlite:///results/mlflow.db") == Path("results/mlflow.db")
    assert sqlite_path("sqlite:////abs/m.db") == Path("/abs/m.db")
    assert sqlite_path("http://127.0.0.1:5000") is None
    assert default_artifact_root("http://127.0.0.1:5000") is None
    root = default_artifact_root("sqlite:////abs/m.db")
    assert root == "file:///abs/mlartifacts"
    relative = Path("results/mlflow.db").resolve().as_posix()
    assert absolute_uri("sqlite:///results/mlflow.db") == f"sqlite:///{relative}"
    assert absolute_uri("http://127.0.0.1:5000") == "http://127.0.0.1:5000"
    assert param_value((1, 2)) == "[1, 2]" and param_value(True) == "True"
    assert len(param_value("x" * 10_000)) == 6000


def _schema(database: Path) -> tuple[list, list]:
    """A SQLite database's tables and indexes with the lines of their SQL (columns, constraints;
    as a set: MLflow's migrations emit a table's CHECK constraints in varying order), and its
    Alembic revision."""
    with contextlib.closing(sqlite3.connect(database)) as db:
        objects = db.execute("SELECT type, name, sql FROM sqlite_master ORDER BY name").fetchall()
        revision = db.execute("SELECT version_num FROM alembic_version").fetchall()
    lines = [
        (kind, name, sorted(line.strip().rstrip(",") for line in (sql or "").splitlines()))
        for kind, name, sql in objects
    ]
    return lines, revision


def test_a_new_store_is_a_copy_of_the_schema_mlflow_builds(tmp_path, monkeypatch):
    """New stores are copied from an empty one made once per MLflow version; each is what
    MLflow builds itself (same tables, same schema revision, its Default experiment)."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    first = Tracker(f"sqlite:///{tmp_path / 'a' / 'mlflow.db'}", "study")
    (template,) = template_dir().glob("empty-mlflow-*.db")
    built = template.stat().st_mtime_ns
    second = Tracker(f"sqlite:///{tmp_path / 'b' / 'mlflow.db'}", "study")
    assert template.stat().st_mtime_ns == built  # made once, copied since
    own = tmp_path / "own.db"
    MlflowClient(f"sqlite:///{own}").search_experiments()  # MLflow runs its migrations
    for tracker, folder in ((first, "a"), (second, "b")):
        assert _schema(tmp_path / folder / "mlflow.db") == _schema(own)
        client = MlflowClient(tracker.tracking_uri)
        experiments = {e.name: e.artifact_location for e in client.search_experiments()}
        assert experiments == {
            "Default": MlflowClient(f"sqlite:///{own}").get_experiment("0").artifact_location,
            "study": (tmp_path / folder / "mlartifacts").as_uri(),
        }
        run = tracker.start_run("cell", tags={})
        run.log_metrics({"fid": 1.0})
        assert client.get_run(run.run_id).data.metrics == {"fid": 1.0}
