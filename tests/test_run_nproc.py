"""`bench run --nproc K`: the same command re-run under torchrun, each trial over K processes.

The end-to-end test here is also the suite's torchrun run of `bench run` (two trials in a row,
each over two gloo processes, rank 0 alone gathering the samples, scoring and reporting)."""

import argparse
import sys
from collections import Counter

import numpy as np
import optuna
import pytest
from mlflow import MlflowClient

from bench.commands import run as run_command
from bench.results import open_storage

TWO_CELLS = ["--set", "metric.name=none"]  # tiny: ddpm and cas-dm, without a metric loss


def _run_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bench run")
    run_command.add_arguments(parser)
    return parser


@pytest.mark.slow
def test_two_gloo_processes_run_each_cell_once_with_one_mlflow_run_each(workspace):
    # `bench run` in a forked child (no imports to pay), which starts torchrun and its two
    # `python -m bench` workers as real processes.
    done = workspace.run_bench("run", "--study", "tiny", *TWO_CELLS, "--nproc", "2", "--quiet")
    out = done.stdout + done.stderr
    assert done.returncode == 0, out
    assert out.count("study tiny: 2 of 2 trials complete") == 1  # rank 0 alone reports
    trials = optuna.load_study(
        study_name="tiny", storage=open_storage(workspace.storage, create=False)
    ).get_trials()
    assert [t.state.name for t in trials] == ["COMPLETE"] * 2
    assert Counter(t.user_attrs["cell"] for t in trials) == Counter(["ddpm none", "cas-dm none"])
    client = MlflowClient(workspace.tracking_uri)
    runs = client.search_runs([client.get_experiment_by_name("tiny").experiment_id])
    assert sorted(r.info.run_id for r in runs) == sorted(
        t.user_attrs["mlflow_run_id"] for t in trials
    )
    assert {r.info.status for r in runs} == {"FINISHED"}
    for trial in trials:
        # Each rank sampled half; rank 0 gathered, saved and scored all of them.
        samples = np.load(workspace.root / trial.user_attrs["workdir"] / "samples.npz")["arr_0"]
        assert samples.shape == (20, 8, 8, 1)


def test_the_relaunch_forwards_every_run_option_but_nproc():
    argv = ["--study", "tiny", "--storage", "sqlite:///x.db", "--tracking-uri", "http://h:5000"]
    argv += ["--n-trials", "3", "--device", "cpu", "--set", "a=1", "--set", "b=x y", "--quiet"]
    argv += ["--results", "out", "--nproc", "4", "--retry-failed", "--lease", "30"]
    argv += ["--threads", "2"]
    args = _run_parser().parse_args(argv)
    command = run_command.torchrun_command(args)
    assert command[0] == sys.executable
    prefix = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=4", "-m", "bench"]
    assert command[1 : 1 + len(prefix)] == prefix
    forwarded = command[1 + len(prefix) :]
    assert forwarded[0] == "run" and "--nproc" not in forwarded
    again = _run_parser().parse_args(forwarded[1:])
    assert vars(again) == {**vars(args), "nproc": None}
    # Every option of `bench run` is forwarded (a new option must be added to the relaunch).
    defaults = vars(_run_parser().parse_args(["--study", "another"]))
    assert {k for k, v in vars(args).items() if v != defaults[k]} == defaults.keys() - {"dry_run"}


def test_nproc_0_is_refused_before_any_work(workspace, capsys):
    from bench.cli import main

    assert main(["run", "--study", "tiny", "--nproc", "0"]) == 2
    assert "error: --nproc must be >= 1, got 0" in capsys.readouterr().err
    assert not (workspace.results / "optuna.db").exists()


def test_a_dry_run_with_nproc_plans_in_this_process(workspace, capsys):
    from bench.cli import main

    assert main(["run", "--study", "tiny", *TWO_CELLS, "--nproc", "2", "--dry-run"]) == 0
    assert "tiny: 2 of 2 trials pending" in capsys.readouterr().out
    assert not (workspace.results / "optuna.db").exists()


def test_nproc_under_torchrun_is_refused(workspace, monkeypatch, capsys):
    from bench.cli import main

    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(["run", "--study", "tiny", "--nproc", "2"]) == 2
    assert (
        "error: --nproc starts torchrun itself, but this process already runs under torchrun "
        "(WORLD_SIZE=2); leave --nproc out"
    ) in capsys.readouterr().err
