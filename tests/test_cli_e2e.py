"""The `bench` commands end to end: real processes, a real MLflow server, offline, on the CPU."""

import contextlib
import csv
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections import Counter
from pathlib import Path

import numpy as np
import optuna
import pytest
from mlflow import MlflowClient

from bench.cli import main
from bench.results import open_storage
from bench.tracking import Tracker

pytestmark = pytest.mark.slow

ONE_CELL = ["--set", "architecture.name=ddpm", "--set", "metric.name=none"]
TINY_TRAIN_CONFIG = """\
seed = 3
device = "cpu"
data = { dataset = "digits", resolution = 8 }
model = { base_channels = 8, channel_mults = [1], attention_resolutions = [] }
architecture = { name = "cas-dm" }
diffusion = { timesteps = 50 }
train = { steps = 3, batch_size = 4, warmup_steps = 0, log_every = 1 }
sample = { steps = 2, num_samples = 6, batch_size = 4 }
"""


def _trials(name: str, url: str) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name=name, storage=open_storage(url, create=False)).get_trials()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_for_http(url: str, process: subprocess.Popen, timeout: float = 180) -> None:
    """Poll `url` until it answers 200; fail early if `process` exits."""
    deadline = time.monotonic() + timeout
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never a proxy
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"exited with {process.returncode}:\n{process.stdout.read()}")
        try:
            with opener.open(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"{url} did not answer within {timeout}s")


def _stop(process: subprocess.Popen) -> None:
    """Terminate a server started in its own session, with every process of its group."""
    group = os.getpgid(process.pid)
    os.killpg(group, signal.SIGTERM)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(group, signal.SIGKILL)
        process.wait()


POSTGRES_URL = os.environ.get("CASDM_TEST_POSTGRES_URL")
TINY_CELLS = ["ddpm none", "ddpm l2", "cas-dm none", "cas-dm l2"]


@pytest.fixture(params=["sqlite", "journal", "postgres"])
def shared_storage(request, workspace):
    """(study name, --storage URL) two workers share: the default SQLite file, a journal file,
    or a real PostgreSQL server (the many-machine set-up; CASDM_TEST_POSTGRES_URL, which the
    CI sets, names it: without it that case is skipped)."""
    if request.param == "sqlite":
        yield "tiny", workspace.storage
        return
    if request.param == "journal":
        yield "tiny", f"journal:///{workspace.root / 'study.log'}"
        return
    if not POSTGRES_URL:
        pytest.skip(
            "CASDM_TEST_POSTGRES_URL is not set: no PostgreSQL server to test against (.ci/run "
            "starts one and sets it, e.g. postgresql+psycopg2://bench:bench@127.0.0.1:5432/db)"
        )
    name = f"pg_{uuid.uuid4().hex[:12]}"  # a study of its own on the shared server
    shutil.copy(
        workspace.root / "studies" / "tiny.toml", workspace.root / "studies" / f"{name}.toml"
    )
    yield name, POSTGRES_URL
    with contextlib.suppress(KeyError):  # KeyError: the workers never created it
        optuna.delete_study(study_name=name, storage=POSTGRES_URL)


def test_two_bench_run_processes_complete_every_cell_exactly_once(
    workspace, shared_storage, capsys
):
    name, url = shared_storage
    # Both start on a storage without the study (for SQLite, without the database file):
    # they race to create it and to claim its cells. Two forked children: real processes,
    # without the seconds of imports (test_faults races two fresh `python -m bench` on SQLite).
    run = ["run", "--study", name, "--storage", url, "--quiet"]
    done = [forked.wait(400) for forked in [workspace.fork_bench(*run) for _ in range(2)]]
    outputs = [d.stdout + d.stderr for d in done]
    codes = [d.returncode for d in done]
    assert codes == [0, 0], "\n".join(outputs)

    trials = _trials(name, url)
    assert [t.state.name for t in trials] == ["COMPLETE"] * 4
    cells = Counter(t.user_attrs["cell"] for t in trials)
    assert cells == Counter(TINY_CELLS)
    ran = [line for out in outputs for line in out.splitlines() if line.startswith("  trial ")]
    assert sorted(ran) == sorted(set(ran)) and len(ran) == 4  # each trial run by one process

    client = MlflowClient(workspace.tracking_uri)
    experiments = [e for e in client.search_experiments() if e.name == name]
    assert len(experiments) == 1
    runs = client.search_runs([experiments[0].experiment_id])
    assert sorted(r.info.run_name for r in runs) == sorted(cells)
    assert {r.info.status for r in runs} == {"FINISHED"}
    assert {r.info.run_id for r in runs} == {t.user_attrs["mlflow_run_id"] for t in trials}

    # The table is built from that storage: each cell's value from its one trial.
    capsys.readouterr()
    assert main(["table", name, "--storage", url]) == 0
    out = capsys.readouterr().out
    assert "cas-dm" in out and "ddpm" in out and "partial" not in out
    with (workspace.results / name / "table.csv").open() as f:
        rows = [r for r in csv.DictReader(f) if r["reference"] == "false"]
    fid = {t.user_attrs["cell"]: t.user_attrs["scores"]["fid"] for t in trials}
    assert len(rows) == 8  # 4 cells x (fid, is_mean), each from its one trial
    for row in rows:
        assert row["n"] == "1"
        if row["score"] == "fid":
            cell = f"{row['architecture.name']} {row['metric.name']}"
            assert float(row["mean"]) == pytest.approx(fid[cell])


def test_a_real_mlflow_server_receives_the_runs(workspace, tmp_path):
    port = _free_port()
    server_dir = tmp_path / "server"
    server_dir.mkdir()
    shutil.copy(workspace.results / "mlflow.db", server_dir / "m.db")  # tables already made
    env = {**workspace.env, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--backend-store-uri",
            f"sqlite:///{server_dir / 'm.db'}",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        cwd=server_dir,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own process group: _stop ends the server's workers too
    )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_for_http(f"{url}/health", server)
        code = main(["run", "--study", "tiny", *ONE_CELL, "--tracking-uri", url, "--quiet"])
        assert code == 0
        client = MlflowClient(url)
        experiment = client.get_experiment_by_name("tiny")
        (run,) = client.search_runs([experiment.experiment_id])
        (trial,) = _trials("tiny", workspace.storage)
        assert run.info.run_id == trial.user_attrs["mlflow_run_id"]
        assert run.info.run_name == "ddpm none" and run.info.status == "FINISHED"
        assert run.data.tags["optuna.trial_number"] == "0"
        assert run.data.params["architecture.name"] == "ddpm"
        assert run.data.metrics["fid"] == pytest.approx(trial.user_attrs["scores"]["fid"])
        assert [m.step for m in client.get_metric_history(run.info.run_id, "train/loss")] == [2, 4]
        assert {a.path for a in client.list_artifacts(run.info.run_id)} == {
            "samples.png",
            "config.json",
        }
    finally:
        _stop(server)
    assert not (workspace.results / "mlartifacts").exists()  # the server stored them


def test_dry_run_prints_pending_trials_and_cost_and_creates_nothing(workspace, capsys):
    assert main(["run", "--study", "tiny", "--dry-run"]) == 0
    out = capsys.readouterr().out
    for cell in ("ddpm none", "ddpm l2", "cas-dm none", "cas-dm l2"):
        assert cell in out
    assert "4 of 4 trials pending" in out
    assert "total: 128 training images (steps x batch size), 80 samples" in out
    flat = " ".join(out.split())  # rich wraps lines at the terminal width
    assert re.search(r"on cpu: \d+\.\d\d device-hours \(cpu;", flat)
    assert "this is a CPU estimate, measured on this machine's CPU" in flat
    assert "dry run: nothing was run or created" in out
    assert not (workspace.results / "optuna.db").exists()
    assert MlflowClient(workspace.tracking_uri).get_experiment_by_name("tiny") is None


def test_missing_lpips_weights_exit_2_before_anything_is_created(workspace, capsys):
    assert main(["run", "--study", "tiny", "--set", "metric.name=lpips", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: alexnet-owt-7be5be79.pth")
    assert "bench weights fetch alexnet" in err
    assert not (workspace.results / "optuna.db").exists()
    assert MlflowClient(workspace.tracking_uri).get_experiment_by_name("tiny") is None


def test_random_lpips_trunk_runs_when_set_and_is_labelled_everywhere(
    workspace, capsys, monkeypatch
):
    args = ["--set", "architecture.name=ddpm", "--set", "metric.name=lpips"]
    assert main(["run", "--study", "tiny", *args, "--set", "metric.trunk=random", "--quiet"]) == 0
    (trial,) = _trials("tiny", workspace.storage)
    assert trial.state.name == "COMPLETE" and trial.user_attrs["cell"] == "ddpm lpips"
    study = optuna.load_study(
        study_name="tiny", storage=open_storage(workspace.storage, create=False)
    )
    caveat = "LPIPS used a random (untrained) trunk: a smoke test, not a result."
    assert study.user_attrs["meta"]["caveats"] == [caveat]
    run = MlflowClient(workspace.tracking_uri).get_run(trial.user_attrs["mlflow_run_id"])
    assert run.data.tags["caveats"] == caveat
    assert run.data.tags["metric"] == "lpips-alex(random-trunk)"
    assert run.data.params["metric.trunk"] == "random"

    capsys.readouterr()
    monkeypatch.setenv("COLUMNS", "160")  # rich's table width when stdout is not a terminal
    assert main(["show", "tiny"]) == 0
    shown = capsys.readouterr().out
    assert "ddpm lpips" in shown and "COMPLETE" in shown and "real data" in shown
    assert "caveats: LPIPS used a random (untrained) trunk" in shown


def test_train_then_sample_from_its_checkpoint_reproduces_its_samples(workspace, capsys):
    Path("run.toml").write_text(TINY_TRAIN_CONFIG)
    assert main(["train", "--config", "run.toml", "--out", "out", "--quiet"]) == 0
    out = Path("out")
    assert {p.name for p in out.iterdir()} == {
        "config.json",
        "checkpoint.pt",
        "samples.png",
        "samples.npz",
    }
    trained = np.load(out / "samples.npz")["arr_0"]
    assert trained.shape == (6, 8, 8, 1) and trained.dtype == np.uint8

    assert main(["sample", "out/checkpoint.pt", "--n", "5", "--out", "s.npz", "--quiet"]) == 0
    resampled = np.load("s.npz")["arr_0"]
    # DDIM with eta 0 draws x_T of sample i from (seed, i) alone: the same EMA weights give
    # the same images, whatever N and the batch size.
    np.testing.assert_array_equal(resampled, trained[:5])
    assert Path("s.png").read_bytes()[:4] == b"\x89PNG"

    assert main(["sample", "out/checkpoint.pt", "--n", "4", "--steps", "1", "--quiet"]) == 0
    assert np.load(out / "samples_ddim1_n4.npz")["arr_0"].shape == (4, 8, 8, 1)


def test_train_and_sample_reject_bad_input_with_exit_2(workspace, capsys):
    Path("bad.toml").write_text("[train]\nstepz = 3\n")
    assert main(["train", "--config", "bad.toml"]) == 2
    assert "bad.toml: train.stepz: unknown key" in capsys.readouterr().err
    assert main(["sample", "missing.pt"]) == 2
    assert "no checkpoint at missing.pt" in capsys.readouterr().err
    Path("notes.pt").write_text("not a checkpoint at all")
    assert main(["sample", "notes.pt"]) == 2
    err = capsys.readouterr().err
    assert "notes.pt is not a checkpoint bench can sample from (truncated or corrupt)" in err
    assert "bench run" in err and "weights_only" not in err and "retrained" not in err
    Path("run.toml").write_text(TINY_TRAIN_CONFIG)
    assert main(["train", "--config", "run.toml", "--out", "out", "--quiet"]) == 0
    capsys.readouterr()
    assert main(["sample", "out/checkpoint.pt", "--steps", "0"]) == 2
    assert "--steps: must be >= 1, got 0" in capsys.readouterr().err
    assert main(["sample", "out/checkpoint.pt", "--steps", "51"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --steps:") and "diffusion.timesteps" in err and "51" in err


def test_ui_execs_mlflow_on_the_tracking_store_bound_to_loopback(workspace, capsys, monkeypatch):
    experiment_id = Tracker(workspace.tracking_uri, "tiny").experiment_id
    monkeypatch.delenv("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", raising=False)
    execs = []
    monkeypatch.setattr(os, "execv", lambda path, argv: execs.append(argv))
    assert main(["ui", "--study", "tiny", "--port", "5123"]) == 0
    printed = capsys.readouterr().out
    # The runs table, as model training (MLflow 3 opens the GenAI overview otherwise).
    url = f"http://127.0.0.1:5123/#/experiments/{experiment_id}/runs?workflowType=machine_learning"
    assert (
        printed.splitlines()[-1]
        == f"MLflow UI on sqlite:///results/mlflow.db: {url}  (Ctrl-C stops it)"
    )
    (argv,) = execs
    assert argv[:4] == [sys.executable, "-m", "mlflow", "ui"]
    options = dict(zip(argv[4::2], argv[5::2], strict=True))
    assert options["--backend-store-uri"] == "sqlite:///results/mlflow.db"
    assert options["--host"] == "127.0.0.1" and options["--port"] == "5123"
    assert os.environ["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] == "false"


def test_ui_refuses_a_missing_store_and_a_tracking_server(workspace, capsys):
    assert main(["ui", "--results", "elsewhere"]) == 2
    assert "no MLflow tracking store at elsewhere/mlflow.db" in capsys.readouterr().err
    assert main(["ui", "--tracking-uri", "http://127.0.0.1:5000"]) == 2
    assert "is a tracking server, which has its own UI" in capsys.readouterr().err
