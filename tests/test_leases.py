"""The lease rule (bench.leases) and taking over the trials of lost workers (bench.claims)."""

import os
import socket
import subprocess
import sys
import time
from collections import Counter

import optuna
import pytest
from mlflow import MlflowClient
from optuna.trial import TrialState, create_trial

from bench import leases
from bench.claims import Storage
from bench.runner import run_study
from bench.study import load_study


def running(**attrs) -> optuna.trial.FrozenTrial:
    return create_trial(state=TrialState.RUNNING, user_attrs=attrs)


def dead_process() -> dict:
    """The owner record of a process that has exited."""
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(0.2)"])
    owner = {**leases.this_process(), "pid": child.pid, "started": leases._started(child.pid)}
    child.wait()
    return owner


def test_this_process_is_alive_and_an_exited_one_is_gone():
    assert not leases.owner_gone(leases.this_process())
    assert leases.owner_gone(dead_process())


def test_a_reused_pid_is_not_mistaken_for_the_owner():
    owner = {**leases.this_process(), "started": "1"}  # this pid, but started at another time
    assert leases.owner_gone(owner)


def test_another_machines_process_is_never_judged_by_pid():
    owner = {**dead_process(), "host": socket.gethostname() + "-elsewhere"}
    assert not leases.owner_gone(owner)


def test_a_rebooted_machine_has_lost_its_workers():
    assert leases.owner_gone({**leases.this_process(), "boot": "an earlier boot"})


def test_stale_when_the_owner_is_gone_whatever_the_heartbeat():
    trial = running(owner=dead_process(), heartbeat=time.time())
    reason = leases.stale_reason(trial, lease_s=300, now=time.time())
    assert reason is not None and "is gone" in reason


def test_a_remote_trial_is_stale_only_once_its_lease_expires():
    owner = {**leases.this_process(), "host": "node-7", "pid": 4242}
    now = time.time()
    assert leases.stale_reason(running(owner=owner, heartbeat=now - 299), 300, now) is None
    reason = leases.stale_reason(running(owner=owner, heartbeat=now - 301), 300, now)
    assert reason is not None and "no heartbeat for 301 s" in reason and "node-7" in reason


def test_a_trial_without_owner_or_heartbeat_is_judged_by_its_start():
    trial = running()
    start = trial.datetime_start.timestamp()
    assert leases.stale_reason(trial, 300, start + 10) is None
    assert leases.stale_reason(trial, 300, start + 301) is not None


@pytest.mark.parametrize("kind", ["sqlite", "journal"])
def test_reap_fails_lost_trials_and_leaves_live_ones(workspace, kind):
    study = load_study("claims")
    cells = study.cells()[:3]
    url = "sqlite:///reap.db" if kind == "sqlite" else f"journal:///{workspace.root / 'r.log'}"
    store = Storage(url, study, seed=0)
    store.enqueue_missing(cells, study)
    lost, _ = store.claim(cells)
    store.storage.set_trial_user_attr(store.trial_id(lost.number), "owner", dead_process())
    remote, _ = store.claim(cells)
    remote_owner = {"host": "node-7", "boot": "", "pid": 1, "started": ""}
    store.storage.set_trial_user_attr(store.trial_id(remote.number), "owner", remote_owner)
    store.storage.set_trial_user_attr(store.trial_id(remote.number), "heartbeat", time.time())
    mine, _ = store.claim(cells)  # owned by this (live) process

    reaped = Storage(url, study, seed=0).reap(lease_s=300)
    assert [t.number for t in reaped] == [lost.number]
    assert reaped[0].user_attrs["failure"] == "lost" and "is gone" in reaped[0].user_attrs["error"]
    states = {t.number: t.state.name for t in store.trials()}
    assert states == {lost.number: "FAIL", remote.number: "RUNNING", mine.number: "RUNNING"}
    assert store.enqueue_missing(cells, study) == (1, [])  # the lost cell, to resume


def test_a_worker_whose_trial_was_taken_over_discards_its_result(workspace, monkeypatch):
    import bench.trial

    study = load_study("tiny", ["architecture.name=ddpm", "metric.name=none"])
    real = bench.trial.run_trial

    def partitioned(config, workdir, **kwargs):
        # Another worker decides this one is lost (an expired lease) while it still trains.
        taken = Storage(workspace.storage, study, seed=0).reap(lease_s=1e-9)
        assert len(taken) == 1
        return real(config, workdir, **kwargs)

    monkeypatch.setattr(bench.trial, "run_trial", partitioned)
    first = run_study(study, quiet=True)
    assert [t.state for t in first.trials] == ["DISCARDED"]
    monkeypatch.setattr(bench.trial, "run_trial", real)
    second = run_study(study, quiet=True)
    assert [t.state for t in second.trials] == ["COMPLETE"]
    storage = optuna.storages.RDBStorage(workspace.storage)
    stored = optuna.load_study(study_name="tiny", storage=storage)
    states = Counter(t.state.name for t in stored.trials)
    assert states == Counter({"FAIL": 1, "COMPLETE": 1})  # the cell counts once


def test_a_worker_that_learns_it_was_taken_over_stops_training(workspace, monkeypatch):
    import bench.trial

    monkeypatch.setattr(leases, "HEARTBEAT_INTERVAL_S", 0.02)
    study = load_study("tiny", ["architecture.name=ddpm", "metric.name=none"])
    real = bench.trial.run_trial

    def partitioned(config, workdir, **kwargs):
        Storage(workspace.storage, study, seed=0).reap(lease_s=1e-9)  # taken over
        time.sleep(0.5)  # many heartbeat intervals: the next beat finds the trial finished
        return real(config, workdir, **kwargs)

    monkeypatch.setattr(bench.trial, "run_trial", partitioned)
    summary = run_study(study, quiet=True)
    assert [t.state for t in summary.trials] == ["DISCARDED"]
    [trial] = optuna.load_study(study_name="tiny", storage=workspace.storage).trials
    workdir = workspace.root / trial.user_attrs["workdir"]
    assert not (workdir / "samples.npz").exists()  # stopped in training, before sampling
    run = MlflowClient(workspace.tracking_uri).get_run(trial.user_attrs["mlflow_run_id"])
    assert run.info.status == "FAILED" and "taken over" in run.data.tags["error"]


def test_heartbeats_are_recorded_while_a_trial_is_held(workspace, monkeypatch):
    monkeypatch.setattr(leases, "HEARTBEAT_INTERVAL_S", 0.05)
    study = load_study("claims")
    store = Storage("sqlite:///beat.db", study, seed=0)
    store.enqueue_missing(study.cells()[:1], study)
    trial, _ = store.claim(study.cells()[:1])
    trial_id = store.trial_id(trial.number)
    with leases.held(store.storage, trial_id):
        time.sleep(0.3)
        first = store.storage.get_trial(trial_id).user_attrs["heartbeat"]
        time.sleep(0.3)
        second = store.storage.get_trial(trial_id).user_attrs["heartbeat"]
    assert time.time() - 1 < first < second
    assert store.storage.get_trial(trial_id).user_attrs["owner"]["pid"] == os.getpid()


def test_a_joiner_does_not_wait_for_a_creator_that_died_before_enqueueing(workspace, monkeypatch):
    import bench.worker

    study = load_study("tiny", ["architecture.name=ddpm", "metric.name=none"])
    creator = Storage(workspace.storage, study, seed=0)  # created, then "killed": no cells
    creator.optuna.set_user_attr("creator", dead_process())
    monkeypatch.setattr(bench.worker, "ENQUEUE_WAIT_S", 1e9)
    naps = []

    def sleep(seconds):
        naps.append(seconds)
        assert len(naps) < 5, "the joiner waits for a creator that is gone"

    monkeypatch.setattr(bench.worker.time, "sleep", sleep)
    summary = run_study(study, quiet=True)
    assert [t.state for t in summary.trials] == ["COMPLETE"] and naps == []
