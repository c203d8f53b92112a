"""`bench run`'s MLflow sidecar: the same MLflow content as in one process, errors with MLflow's
codes, Ctrl-C-proof, gone with its parent, and MLflow never imported by `bench run` itself."""

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient
from PIL import Image

from bench.errors import BenchError
from bench.tracking import Tracker
from bench.tracking_sidecar import SidecarBackend, TrackingError

pytestmark = pytest.mark.skipif(os.name != "posix", reason="the sidecar is POSIX only")


@pytest.fixture
def sidecar(workspace):
    with SidecarBackend(workspace.tracking_uri) as backend:
        yield backend


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    return f"sqlite:///{tmp_path_factory.mktemp('shared') / 'mlflow.db'}"


@pytest.fixture(scope="module")
def shared(store):
    """One sidecar (starting one imports MLflow: seconds) for the tests that leave it alive,
    each logging to an experiment of its own in `store`."""
    with SidecarBackend(store) as backend:
        yield backend


def _log_a_study(tracker: Tracker, files: Path) -> None:
    """What a worker and `bench plot` log: the view, a finished and a killed trial run, the
    study summary run, artifacts and an upscaled image."""
    tracker.set_view(["architecture.name"], ["fid", "is_mean"], "fid", ascending=True)
    run = tracker.start_run("ddpm l2", tags={"optuna.trial_number": 0, "cell": "ddpm l2"})
    run.log_params({f"key{i:03d}": i for i in range(150)} | {"model.mults": (1, 2)})
    run.log_train({"step": 2, "loss": 0.5, "lr": 1e-4})
    run.log_train({"step": 4, "loss": 0.25, "lr": 2e-4})
    run.log_metrics({"fid": 12.5, "is_mean": 3.25, "kid": float("nan")})
    run.set_tags({"notices": "resumed"})
    (files / "config.json").write_text('{"seed": 0}')
    run.log_artifact(files / "config.json")
    run.log_artifact(files / "config.json", "evaluator/nested")
    Image.new("L", (8, 4), color=200).save(files / "samples.png")
    run.log_image(files / "samples.png", min_px=16)
    run.finish()
    killed = tracker.start_run("cas-dm none", tags={"optuna.trial_number": 1})
    killed.log_train({"step": 2, "loss": 1.0})
    tracker.run(killed.run_id).fail("interrupted (KeyboardInterrupt: SIGINT)", "KILLED")
    summary = tracker.study_run("tiny")
    assert tracker.study_run("tiny").run_id == summary.run_id  # found again, not duplicated
    summary.log_artifact(files / "config.json", artifact_path="figures")
    assert tracker.histories(run.run_id, "train/") == {
        "train/loss": [(2, 0.5), (4, 0.25)],
        "train/lr": [(2, 1e-4), (4, 2e-4)],
    }
    copied = tracker.download_artifacts(run.run_id, "evaluator", files / "download")
    assert (copied / "nested" / "config.json").read_text() == '{"seed": 0}'


def _content(tracking_uri: str, experiment: str, into: Path) -> dict:
    """Everything MLflow holds of an experiment, without ids, timestamps and artifact roots
    (the artifacts are downloaded under `into`)."""
    client = MlflowClient(tracking_uri)
    found = client.get_experiment_by_name(experiment)
    tags = dict(found.tags)
    view = json.loads(tags.pop("mlflow.sharedViewState.bench"))
    assert view.pop("createdAt") == view.pop("updatedAt")
    runs = {}
    for run in client.search_runs([found.experiment_id]):
        run_id = run.info.run_id
        root = Path(client.download_artifacts(run_id, "", str(into / run_id)))
        runs[run.info.run_name] = {
            "status": run.info.status,
            "params": run.data.params,
            "metrics": run.data.metrics,
            "tags": {k: v for k, v in run.data.tags.items() if k != "mlflow.runName"},
            "histories": {
                key: [(m.step, m.value) for m in client.get_metric_history(run_id, key)]
                for key in run.data.metrics
            },
            "artifacts": {
                p.relative_to(root).as_posix(): p.read_bytes()
                for p in sorted(root.rglob("*"))
                if p.is_file()
            },
        }
    return {"tags": tags, "view": view, "runs": runs}


def test_a_sidecar_tracker_logs_what_an_in_process_one_does(store, shared, tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    _log_a_study(Tracker(store, "in-process"), tmp_path / "a")
    _log_a_study(Tracker(store, "sidecar", shared), tmp_path / "b")
    ours = _content(store, "in-process", tmp_path / "ours")
    theirs = _content(store, "sidecar", tmp_path / "theirs")
    assert theirs == ours
    runs = theirs["runs"]
    assert {name: run["status"] for name, run in runs.items()} == {
        "ddpm l2": "FINISHED",
        "cas-dm none": "KILLED",
        "tiny (study summary)": "FINISHED",
    }
    assert len(runs["ddpm l2"]["params"]) == 151
    assert runs["ddpm l2"]["params"]["model.mults"] == "[1, 2]"
    assert runs["ddpm l2"]["metrics"] == {
        "fid": 12.5,
        "is_mean": 3.25,
        "train/loss": 0.25,
        "train/lr": 2e-4,
    }
    assert runs["cas-dm none"]["tags"]["error"] == "interrupted (KeyboardInterrupt: SIGINT)"
    assert set(runs["ddpm l2"]["artifacts"]) == {
        "config.json",
        "evaluator/nested/config.json",
        "samples.png",
    }
    with Image.open(tmp_path / "b" / "samples.png") as small:
        assert small.size == (8, 4)
    assert theirs["tags"]["mlflow.experimentKind"] == "custom_model_development"
    assert json.loads(theirs["view"]["state"])["orderByKey"] == "metrics.`fid`"


def test_an_mlflow_error_is_raised_in_the_parent_with_its_code(store, shared):
    tracker = Tracker(store, "errors", shared)
    missing = "0" * 32
    with pytest.raises(TrackingError) as raised:
        tracker.run(missing).finish()
    err = raised.value
    assert type(err).__name__ == "MlflowException" and isinstance(err, RuntimeError)
    assert err.error_code == "RESOURCE_DOES_NOT_EXIST"
    assert str(err) == f"Run with id={missing} not found"
    assert any("raised in the MLflow sidecar process" in note for note in err.__notes__)
    with pytest.raises(TrackingError) as raised:
        tracker.run(tracker.start_run("x", {}).run_id).log_artifact(Path("nowhere.png"))
    assert type(raised.value).__name__ == "FileNotFoundError"
    assert raised.value.error_code is None
    # The sidecar goes on after an error.
    assert tracker.start_run("after", {}).run_id


def test_the_sidecar_ignores_sigint_and_sigterm(store, shared):
    tracker = Tracker(store, "signals", shared)
    os.kill(shared.pid, signal.SIGINT)
    os.kill(shared.pid, signal.SIGTERM)
    time.sleep(0.5)
    run = tracker.start_run("cell", {})
    run.fail("interrupted", "KILLED")
    assert MlflowClient(store).get_run(run.run_id).info.status == "KILLED"


def test_an_interrupted_call_completes_before_the_next_one(store, shared):
    """Ctrl-C while the parent waits for a reply: the wait ends at once, the operation still
    completes in the sidecar, and the next operation gets its own reply."""
    tracker = Tracker(store, "interrupted", shared)
    run = tracker.start_run("cell", {})
    os.kill(shared.pid, signal.SIGSTOP)  # the sidecar hangs (a slow upload)
    interrupt = threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGINT))
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        interrupt.start()
        started = time.monotonic()
        with pytest.raises(KeyboardInterrupt):
            run.log_metrics({"fid": 1.5}, step=3)
        assert time.monotonic() - started < 5
    finally:
        signal.signal(signal.SIGINT, previous)
        os.kill(shared.pid, signal.SIGCONT)
    run.fail("interrupted", "KILLED")
    stored = MlflowClient(store).get_run(run.run_id)
    assert stored.info.status == "KILLED" and stored.data.metrics == {"fid": 1.5}
    assert tracker.histories(run.run_id, "") == {"fid": [(3, 1.5)]}


def test_a_dead_sidecar_fails_every_call_at_once(workspace, sidecar):
    tracker = Tracker(workspace.tracking_uri, "dead", sidecar)
    os.kill(sidecar.pid, signal.SIGKILL)
    for _ in range(2):
        with pytest.raises(BenchError, match="killed by signal 9"):
            tracker.start_run("cell", {})


def test_close_ends_the_sidecar_cleanly_or_at_once_when_it_was_never_asked(workspace):
    sidecar = SidecarBackend(workspace.tracking_uri)
    Tracker(workspace.tracking_uri, "closed", sidecar)
    sidecar.close()
    assert sidecar._process.returncode == 0  # it saw its socket close and returned
    unused = SidecarBackend(workspace.tracking_uri)
    started = time.monotonic()
    unused.close()  # `bench run` stopped before its first trial: no wait for MLflow's imports
    assert time.monotonic() - started < 1 and unused._process.returncode == -signal.SIGKILL


def _gone(pid: int) -> bool:
    """Whether process `pid` has ended (a zombie not yet reaped counts as ended)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return True
    return state in ("Z", "X")


_PARENT = """
import sys, time
from bench.tracking import Tracker
from bench.tracking_sidecar import SidecarBackend
sidecar = SidecarBackend(sys.argv[1])
Tracker(sys.argv[1], "orphan", sidecar)  # the sidecar is up and serving
print(sidecar.pid, flush=True)
time.sleep(600)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_the_sidecar_dies_with_its_parent(workspace):
    parent = subprocess.Popen(
        [sys.executable, "-c", _PARENT, workspace.tracking_uri],
        env=workspace.env,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        child = int(parent.stdout.readline())
        assert not _gone(child)
        parent.kill()
        parent.wait()
        deadline = time.monotonic() + 10
        while not _gone(child) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _gone(child)
    finally:
        parent.kill()
        parent.wait()
        parent.stdout.close()


_RUN_PROBE = """
import sys
from bench.cli import main
code = main(sys.argv[1:])
print(code, "mlflow" in sys.modules, "torch" in sys.modules)
"""


@pytest.mark.slow
def test_bench_run_makes_its_mlflow_calls_in_the_sidecar(workspace):
    """A fresh `bench run` of one tiny cell: its runs are in MLflow, MLflow never in its
    process."""
    cell = ["--set", "architecture.name=ddpm", "--set", "metric.name=none"]
    done = subprocess.run(
        [sys.executable, "-c", _RUN_PROBE, "run", "--study", "tiny", *cell, "--quiet"],
        cwd=workspace.root,
        env={**workspace.env, "CASDM_MLFLOW_SIDECAR": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.stdout.split()[-3:] == ["0", "False", "True"], done.stdout + done.stderr
    client = MlflowClient(workspace.tracking_uri)
    (run,) = client.search_runs([client.get_experiment_by_name("tiny").experiment_id])
    assert run.info.run_name == "ddpm none" and run.info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "train/loss")] == [2, 4]
    assert {a.path for a in client.list_artifacts(run.info.run_id)} == {
        "samples.png",
        "config.json",
    }
