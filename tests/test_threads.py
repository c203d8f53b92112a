"""The CPU thread policy of `bench run` workers (bench.threads)."""

import json
import subprocess
import sys

import pytest
import torch

from bench import leases, threads
from casdm.errors import InputError


@pytest.mark.parametrize(
    ("cores", "workers", "busy", "expected"),
    [
        (2, 1, 0.0, 2),  # alone on an idle machine: every core
        (2, 2, 0.0, 1),  # two workers share two cores
        (2, 1, 1.0, 1),  # another program keeps one core busy: never a team larger than idle
        (2, 3, 0.0, 1),  # more workers than cores: still one thread each
        (8, 3, 0.0, 2),
        (8, 1, 6.4, 2),
        (4, 1, 9.0, 1),
    ],
)
def test_policy_shares_the_idle_cores_among_the_workers(cores, workers, busy, expected):
    assert threads.policy_threads(cores, [{}] * workers, busy) == expected


def test_other_load_discounts_the_workers_own_threads(monkeypatch):
    monkeypatch.setattr(threads.os, "getloadavg", lambda: (3.2, 0.0, 0.0))
    assert threads.other_load([{"threads": 2}]) == pytest.approx(1.2)
    assert threads.other_load([{"threads": 2}, {"threads": 2}]) == 0.0


def test_overrides_in_order_option_env_omp(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    monkeypatch.setenv(threads.ENV, "2")
    assert threads.requested_threads(5) == (5, "--threads")
    assert threads.requested_threads(None) == (2, threads.ENV)
    monkeypatch.delenv(threads.ENV)
    assert threads.requested_threads(None) == (3, "OMP_NUM_THREADS")
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert threads.requested_threads(None) == (None, "policy")
    monkeypatch.setenv(threads.ENV, "zero")
    with pytest.raises(InputError, match=r"CASDM_THREADS must be an integer >= 1, got 'zero'"):
        threads.requested_threads(None)
    with pytest.raises(InputError, match=r"--threads must be an integer >= 1, got 0"):
        threads.requested_threads(0)


def test_cgroup_quota_v2_and_v1(tmp_path):
    cgroup = tmp_path / "self_cgroup"
    # v2: 1.5 cores
    cgroup.write_text("0::/job\n")
    (tmp_path / "job").mkdir()
    (tmp_path / "job" / "cpu.max").write_text("150000 100000\n")
    assert threads.cgroup_cpu_limit(tmp_path, cgroup) == 1.5
    (tmp_path / "job" / "cpu.max").write_text("max 100000\n")
    assert threads.cgroup_cpu_limit(tmp_path, cgroup) is None
    # v1: 3 cores under cpu,cpuacct
    cgroup.write_text("4:memory:/x\n2:cpu,cpuacct:/slurm\n")
    folder = tmp_path / "cpu,cpuacct" / "slurm"
    folder.mkdir(parents=True)
    (folder / "cpu.cfs_quota_us").write_text("300000\n")
    (folder / "cpu.cfs_period_us").write_text("100000\n")
    assert threads.cgroup_cpu_limit(tmp_path, cgroup) == 3.0
    (folder / "cpu.cfs_quota_us").write_text("-1\n")
    assert threads.cgroup_cpu_limit(tmp_path, cgroup) is None


def test_registry_counts_live_workers_and_drops_dead_ones(tmp_path):
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    pid = int(dead.stdout)
    owner = {**leases.this_process(), "pid": pid, "started": "1", "threads": 1}
    (tmp_path / f"{pid}.json").write_text(json.dumps(owner))
    with threads.registered_worker(tmp_path) as entry:
        workers = threads.live_workers(tmp_path)
        assert [w["pid"] for w in workers] == [leases.this_process()["pid"]]
        assert not (tmp_path / f"{pid}.json").exists()
        assert entry.exists()
    assert not entry.exists() and threads.live_workers(tmp_path) == []


def test_worker_threads_sets_and_restores_torch_threads(tmp_path, monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv(threads.ENV, raising=False)
    monkeypatch.setattr(threads, "available_cores", lambda: 4)
    monkeypatch.setattr(threads.os, "getloadavg", lambda: (0.0, 0.0, 0.0))
    before = torch.get_num_threads()
    other = tmp_path / "424242.json"
    with threads.worker_threads(folder=tmp_path) as policy:
        assert torch.get_num_threads() == 4 and policy.source == "policy"
        assert json.loads(policy.entry.read_text())["threads"] == 4
        # A second worker appears: the next refresh halves this one's team.
        other.write_text(json.dumps({**leases.this_process(), "threads": 2}))
        threads.refresh()  # within REFRESH_S of the last check: unchanged
        assert torch.get_num_threads() == 4
        threads.refresh(force=True)
        assert torch.get_num_threads() == 2
    assert torch.get_num_threads() == before
    with threads.worker_threads(3, folder=tmp_path) as policy:
        assert torch.get_num_threads() == 3 and policy.source == "--threads"
    assert torch.get_num_threads() == before
