"""Fault injection: real `bench run` processes killed, interrupted and fed bad files, offline.

Faults fire at exact points through CASDM_FAULTS (casdm.faults), so no test depends on a sleep.
Each test checks the Optuna database, the MLflow runs and the trial folders afterwards; the
final scores of a resumed trial must equal those of an uninterrupted run bit for bit (CPU).

Most runs are forked children of this test process (conftest.run_forked): real processes that
a SIGKILL really kills, without a fresh interpreter's seconds of imports. Two tests start
`python -m bench` itself, as a user does: a SIGKILL mid-training, and the killed one of two
workers racing (its survivor is forked).
"""

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import optuna
import pytest
import torch
from conftest import run_forked
from mlflow import MlflowClient

from bench.cli import main
from bench.results import open_storage

pytestmark = pytest.mark.slow

# One cell (ddpm, no metric loss) trained for 6 steps with a checkpoint every 2.
ONE_CELL = [
    "architecture.name=ddpm",
    "metric.name=none",
    "train.steps=6",
    "train.checkpoint_every=2",
]
SCOPE = "ddpm_none"  # casdm.faults scope of that cell (its folder name's prefix)


def bench(
    workspace,
    *args: str,
    faults="",
    overrides=ONE_CELL,
    results="results",
    fresh_interpreter=False,
    **environ,
):
    """`bench run --study tiny ...` to completion (or death) in a forked child, or with
    fresh_interpreter as `python -m bench` (MLflow in its sidecar); the CompletedProcess."""
    env = {**workspace.env, **environ}
    env.pop("CASDM_FAULTS", None)
    if faults:
        env["CASDM_FAULTS"] = faults
    argv = ["run", "--study", "tiny", "--quiet", "--results", results, *args]
    for override in overrides:
        argv += ["--set", override]
    if not fresh_interpreter:
        return run_forked(argv, cwd=workspace.root, env=env)
    return subprocess.run(
        [sys.executable, "-m", "bench", *argv],
        cwd=workspace.root,
        env={**env, "CASDM_MLFLOW_SIDECAR": "1"},  # a cold process, as users run it
        capture_output=True,
        text=True,
        timeout=600,
    )


def trials(workspace, results="results") -> list[optuna.trial.FrozenTrial]:
    url = f"sqlite:///{workspace.root / results / 'optuna.db'}"
    storage = open_storage(url, create=False)
    return optuna.load_study(study_name="tiny", storage=storage).get_trials()


def mlflow_run(workspace, trial, results="results"):
    client = MlflowClient(f"sqlite:///{workspace.root / results / 'mlflow.db'}")
    return client.get_run(trial.user_attrs["mlflow_run_id"])


def workdir(workspace, trial) -> Path:
    return workspace.root / trial.user_attrs["workdir"]


def checkpoint_step(path: Path) -> int:
    return int(torch.load(path, weights_only=True)["step"])


@pytest.fixture(scope="module")
def uninterrupted(module_workspace):
    """The scores of the one-cell study run start to finish without a fault."""
    done = bench(module_workspace)
    assert done.returncode == 0, done.stdout + done.stderr
    [trial] = trials(module_workspace)
    assert "resumed_from" not in trial.user_attrs
    return trial.user_attrs["scores"]


def assert_dead(process) -> None:
    assert process.returncode == -signal.SIGKILL, process.stdout + process.stderr


def test_sigkill_during_training_resumes_from_the_last_checkpoint(workspace, uninterrupted):
    killed = bench(workspace, faults=f"kill@train.step=3/{SCOPE}", fresh_interpreter=True)
    assert_dead(killed)
    [trial] = trials(workspace)
    assert trial.state.name == "RUNNING"  # nobody could say otherwise: the process vanished
    assert mlflow_run(workspace, trial).info.status == "RUNNING"
    assert checkpoint_step(workdir(workspace, trial) / "checkpoint.pt") == 2

    rerun = bench(workspace)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    lost, resumed = trials(workspace)
    assert lost.state.name == "FAIL" and lost.user_attrs["failure"] == "lost"
    assert f"process {lost.user_attrs['owner']['pid']}" in lost.user_attrs["error"]
    assert mlflow_run(workspace, lost).info.status == "FAILED"
    assert "worker lost" in mlflow_run(workspace, lost).data.tags["error"]
    assert resumed.state.name == "COMPLETE" and resumed.user_attrs["retry_of"] == lost.number
    assert resumed.user_attrs["resumed_from"] == 2
    assert workdir(workspace, resumed) == workdir(workspace, lost)
    run = mlflow_run(workspace, resumed)
    assert run.info.status == "FINISHED" and run.data.tags["resumed_from_step"] == "2"
    client = MlflowClient(f"sqlite:///{workspace.results / 'mlflow.db'}")
    assert [m.step for m in client.get_metric_history(run.info.run_id, "train/loss")] == [4, 6]
    assert resumed.user_attrs["scores"] == uninterrupted


def test_a_journal_storage_takes_over_a_killed_workers_trial_too(workspace, uninterrupted):
    journal = f"journal:///{workspace.root / 'study.log'}"
    assert_dead(bench(workspace, "--storage", journal, faults=f"kill@train.step=5/{SCOPE}"))
    rerun = bench(workspace, "--storage", journal)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    storage = open_storage(journal, create=False)
    lost, resumed = optuna.load_study(study_name="tiny", storage=storage).get_trials()
    assert (lost.state.name, lost.user_attrs["failure"]) == ("FAIL", "lost")
    assert resumed.state.name == "COMPLETE" and resumed.user_attrs["resumed_from"] == 4
    assert resumed.user_attrs["scores"] == uninterrupted


@pytest.mark.parametrize("stage", ["sample", "score"])
def test_sigkill_while_sampling_or_scoring_resumes_without_training(
    workspace, uninterrupted, stage
):
    assert_dead(bench(workspace, faults=f"kill@{stage}/{SCOPE}"))
    rerun = bench(workspace)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    resumed = trials(workspace)[-1]
    assert resumed.user_attrs["resumed_from"] == 6  # the final checkpoint: nothing to train
    client = MlflowClient(f"sqlite:///{workspace.results / 'mlflow.db'}")
    assert client.get_metric_history(resumed.user_attrs["mlflow_run_id"], "train/loss") == []
    reused = [n for n in resumed.user_attrs.get("notices", []) if "reusing the 20 samples" in n]
    assert len(reused) == (stage == "score")  # samples were saved before scoring began
    assert resumed.user_attrs["scores"] == uninterrupted


def test_sigkill_while_a_checkpoint_is_written_keeps_the_previous_one(workspace, uninterrupted):
    killed = bench(workspace, faults=f"kill@write:checkpoint.pt=2/{SCOPE}")  # step 4's write
    assert_dead(killed)
    [trial] = trials(workspace)
    folder = workdir(workspace, trial)
    assert checkpoint_step(folder / "checkpoint.pt") == 2  # complete, and the last one written
    assert len(list(folder.glob(".checkpoint.pt.*.tmp"))) == 1  # the half-written step 4

    rerun = bench(workspace)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    resumed = trials(workspace)[-1]
    assert resumed.state.name == "COMPLETE" and resumed.user_attrs["resumed_from"] == 2
    assert "partly written" in resumed.user_attrs["notices"][0]
    assert list(folder.glob(".*.tmp")) == []
    assert resumed.user_attrs["scores"] == uninterrupted


def test_a_corrupt_checkpoint_falls_back_to_the_previous_one(workspace, uninterrupted):
    assert_dead(bench(workspace, faults=f"kill@train.step=4/{SCOPE}"))
    folder = workdir(workspace, trials(workspace)[0])
    assert checkpoint_step(folder / "checkpoint.pt") == 4
    assert checkpoint_step(folder / "checkpoint.prev.pt") == 2
    data = (folder / "checkpoint.pt").read_bytes()
    (folder / "checkpoint.pt").write_bytes(data[: len(data) // 2])  # a torn write

    rerun = bench(workspace)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    resumed = trials(workspace)[-1]
    assert resumed.user_attrs["resumed_from"] == 2
    notices = resumed.user_attrs["notices"]
    assert "truncated or corrupt" in notices[0] and "checkpoint.pt.corrupt" in notices[0]
    assert "resuming from" in notices[1] and "checkpoint.prev.pt" in notices[1]
    assert "truncated or corrupt" in mlflow_run(workspace, resumed).data.tags["notices"]
    assert (folder / "checkpoint.pt.corrupt").read_bytes() == data[: len(data) // 2]
    assert resumed.user_attrs["scores"] == uninterrupted


def test_nan_exceptions_and_oom_fail_their_trials_with_the_reason_and_the_study_goes_on(
    workspace,
):
    faults = "nan@train.loss=3/ddpm_l2,raise@sample/cas-dm_none,oom@score/cas-dm_l2"
    done = bench(workspace, faults=faults, overrides=[])  # the 2 x 2 grid
    assert done.returncode == 1, done.stdout + done.stderr
    cells = {t.user_attrs["cell"]: t for t in trials(workspace)}
    assert cells["ddpm none"].state.name == "COMPLETE"
    errors = {
        "ddpm l2": "FloatingPointError: non-finite training loss nan (gradient norm nan) at step 3",
        "cas-dm none": "RuntimeError: injected fault at sample",
        "cas-dm l2": "OutOfMemoryError: injected out-of-memory at score",
    }
    for cell, start in errors.items():
        trial = cells[cell]
        assert trial.state.name == "FAIL" and trial.user_attrs["failure"] == "error"
        assert trial.user_attrs["error"].startswith(start), trial.user_attrs["error"]
        run = mlflow_run(workspace, trial)
        assert run.info.status == "FAILED" and run.data.tags["error"] == trial.user_attrs["error"]
    assert "lower train.batch_size" in cells["cas-dm l2"].user_attrs["error"]

    again = bench(workspace, overrides=[])  # failed cells are not retried by themselves
    assert again.returncode == 0 and len(trials(workspace)) == 4
    assert "3 cell(s) failed in an earlier run" in again.stdout and "--retry-failed" in again.stdout
    retried = bench(workspace, "--retry-failed", overrides=[])
    assert retried.returncode == 0, retried.stdout + retried.stderr
    everything = trials(workspace)
    complete = Counter(t.user_attrs["cell"] for t in everything if t.state.name == "COMPLETE")
    assert complete == Counter({"ddpm none": 1, "ddpm l2": 1, "cas-dm none": 1, "cas-dm l2": 1})
    assert {t.user_attrs["retry_of"] for t in everything[4:]} == {1, 2, 3}


def test_ctrl_c_marks_the_trial_interrupted_and_the_next_run_resumes_it(workspace, uninterrupted):
    stopped = bench(workspace, faults=f"interrupt@train.step=3/{SCOPE}")
    assert stopped.returncode == 130, stopped.stdout + stopped.stderr
    assert "run the same command again to resume" in stopped.stderr
    [trial] = trials(workspace)
    assert trial.state.name == "FAIL" and trial.user_attrs["failure"] == "interrupted"
    assert mlflow_run(workspace, trial).info.status == "KILLED"
    rerun = bench(workspace)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    resumed = trials(workspace)[-1]
    assert resumed.state.name == "COMPLETE" and resumed.user_attrs["resumed_from"] == 2
    assert resumed.user_attrs["scores"] == uninterrupted


def test_sigterm_stops_like_ctrl_c(workspace):
    # A preemption, with MLflow in its sidecar (as `bench run` runs by default): the sidecar
    # ignores the signal, and the worker marks the run KILLED through it.
    stopped = bench(workspace, faults=f"terminate@train.step=3/{SCOPE}", CASDM_MLFLOW_SIDECAR="1")
    assert stopped.returncode == 130, stopped.stdout + stopped.stderr
    [trial] = trials(workspace)
    assert trial.user_attrs["failure"] == "interrupted" and "SIGTERM" in trial.user_attrs["error"]
    assert mlflow_run(workspace, trial).info.status == "KILLED"


def test_two_workers_one_killed_mid_trial_every_cell_completes_exactly_once(workspace):
    victim = subprocess.Popen(
        [sys.executable, "-m", "bench", "run", "--study", "tiny", "--quiet"],
        cwd=workspace.root,
        # Dies in its first trial; its MLflow sidecar dies with it (cold processes: as users run).
        env={**workspace.env, "CASDM_FAULTS": "kill@train.step=2", "CASDM_MLFLOW_SIDECAR": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    # The survivor joins once the victim has created the study, so the victim gets a trial.
    while not (workspace.results / "optuna.db").exists() and victim.poll() is None:
        time.sleep(0.05)
    survivor = workspace.fork_bench("run", "--study", "tiny", "--quiet")
    assert victim.wait(timeout=600) == -signal.SIGKILL, victim.stdout.read()
    survived = survivor.wait(timeout=600)
    assert survived.returncode == 0, survived.stdout + survived.stderr
    restart = bench(workspace, overrides=[])
    assert restart.returncode == 0, restart.stdout + restart.stderr

    everything = trials(workspace)
    complete = Counter(t.user_attrs["cell"] for t in everything if t.state.name == "COMPLETE")
    assert complete == Counter({"ddpm none": 1, "ddpm l2": 1, "cas-dm none": 1, "cas-dm l2": 1})
    assert not [t for t in everything if t.state.name in ("RUNNING", "WAITING")]
    lost = [t for t in everything if t.state.name == "FAIL"]
    assert [t.user_attrs["failure"] for t in lost] == ["lost"]
    client = MlflowClient(f"sqlite:///{workspace.results / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("tiny")
    runs = client.search_runs([experiment.experiment_id])
    assert Counter(r.info.status for r in runs) == Counter({"FINISHED": 4, "FAILED": 1})


def test_a_corrupt_statistics_cache_and_classifier_are_rebuilt_with_the_same_scores(
    workspace, uninterrupted
):
    cache = workspace.results / "cache"
    [classifier] = (cache / "classifier").glob("*.pt")
    statistics = list(cache.rglob("*.npz"))
    assert statistics, "the seeded results hold the reference statistics"
    for path in [classifier, *statistics]:
        path.write_bytes(path.read_bytes()[:200])
    done = bench(workspace, PYTHONWARNINGS="default")  # the tests' environment hides warnings
    assert done.returncode == 0, done.stdout + done.stderr
    assert "unusable" in done.stderr and "retraining" in done.stderr
    assert trials(workspace)[0].user_attrs["scores"] == uninterrupted
    for path in [classifier, *statistics]:
        assert path.stat().st_size > 200  # rebuilt


def test_a_truncated_pretrained_weights_file_is_reported_before_any_trial(workspace):
    from casdm import weights

    path = weights.weights_path("alexnet")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"PK\x03\x04 not all of alexnet")
    done = bench(workspace, overrides=["metric.name=lpips"])
    assert done.returncode == 2, done.stdout + done.stderr
    assert str(path) in done.stderr and "bench weights fetch alexnet" in done.stderr
    assert not (workspace.results / "optuna.db").exists()


class _Payload:
    """Pickles as a call to os.system: what a malicious checkpoint would run when loaded."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_pickle_bearing_checkpoint_is_rejected_and_never_run(workspace, capsys):
    assert_dead(bench(workspace, faults=f"kill@train.step=3/{SCOPE}"))
    folder = workdir(workspace, trials(workspace)[0])
    marker = workspace.root / "pwned"
    torch.save({"step": 2, "payload": _Payload(marker)}, folder / "checkpoint.pt")

    rerun = bench(workspace)
    assert rerun.returncode == 2, rerun.stdout + rerun.stderr
    assert "pickled Python objects" in rerun.stderr and "posix.system" in rerun.stderr
    assert not marker.exists()
    assert main(["sample", str(folder / "checkpoint.pt"), "--quiet"]) == 2
    assert "pickled Python objects" in capsys.readouterr().err
    assert not marker.exists()


@pytest.mark.parametrize("name", ["../../x", "..", "a/../../x", "x;rm -rf"])
def test_a_malicious_study_name_is_rejected_and_writes_nothing(workspace, name):
    before = sorted(p for p in workspace.root.parent.rglob("*"))
    done = workspace.run_bench("run", "--study", name)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "is neither a study name" in done.stderr or "unknown study" in done.stderr
    assert sorted(p for p in workspace.root.parent.rglob("*")) == before
