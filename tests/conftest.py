"""Shared fixtures for the harness tests: an offline workspace with the tiny studies in it.

`workspace` chdirs into a fresh folder holding studies/*.toml (copied from tests/studies) and a
results/ folder pre-seeded with an initialised MLflow store and the evaluator cache, both built
once per session (creating MLflow's tables and training the digits classifier take seconds that
every test would otherwise repeat). The environment is offline: an empty TORCH_HOME (so no
pretrained weights are found), proxies pointing at a closed port (a download fails at once
instead of hanging), MLflow telemetry off, one torch thread (the tests share two cores).
"""

import contextlib
import functools
import gc
import importlib
import io
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
import weakref
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

TESTS = Path(__file__).parent
STUDIES = TESTS / "studies"

# Port 9 (discard) on loopback: nothing listens, so any download is refused immediately.
_CLOSED_PROXY = "http://127.0.0.1:9"
OFFLINE_ENV = {
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "true",
    "HTTP_PROXY": _CLOSED_PROXY,
    "HTTPS_PROXY": _CLOSED_PROXY,
    "http_proxy": _CLOSED_PROXY,
    "https_proxy": _CLOSED_PROXY,
    "NO_PROXY": "127.0.0.1,localhost",
    "no_proxy": "127.0.0.1,localhost",
    "OMP_NUM_THREADS": "1",
    "PYTHONWARNINGS": "ignore",
    # Forked `bench run`s share this process's imports, MLflow's included: a sidecar would
    # import it again. Tests of the sidecar itself (and a few fault tests) turn it back on.
    "CASDM_MLFLOW_SIDECAR": "0",
}


@dataclass
class Workspace:
    """A temporary working directory for `bench` commands, with its results folder."""

    root: Path
    env: dict[str, str]

    @property
    def results(self) -> Path:
        return self.root / "results"

    @property
    def storage(self) -> str:
        return f"sqlite:///{self.results / 'optuna.db'}"

    @property
    def tracking_uri(self) -> str:
        return f"sqlite:///{self.results / 'mlflow.db'}"

    def fork_bench(self, *args: str) -> "Forked":
        """`bench ARGS` started in a forked child (see `run_forked`); `.wait()` for its end."""
        return Forked(list(args), cwd=self.root, env=self.env)

    def run_bench(self, *args: str, **environ: str) -> subprocess.CompletedProcess:
        """`bench ARGS` run to its end (or death) in a forked child (see `run_forked`)."""
        return run_forked(list(args), cwd=self.root, env={**self.env, **environ})


# What a `bench run` imports lazily (the run command's worker, clean-fid and the torchvision
# it pulls in, MLflow's SQL store; and, through bench.results.import_storage_modules, what
# opening its Optuna storage imports): imported once in this process before the first fork, so
# that no forked child spends its ~3 s importing them again and then throws them away.
FORK_PRELOAD = (
    "bench.commands.run",
    "bench.worker",
    "bench.runner",
    "bench.trial",
    "bench.evaluation.evaluators",
    "casdm.train",
    "casdm.samplers",
    "casdm.data",
    "cleanfid.fid",
    "mlflow.store.tracking.sqlalchemy_store",
    "optuna",
)


@functools.cache
def _preload_for_forks() -> None:
    from bench.results import import_storage_modules

    for module in FORK_PRELOAD:
        importlib.import_module(module)
    import_storage_modules("sqlite:///")  # an SQLite storage's modules; nothing is opened


class Forked:
    """`bench ARGV` started in a forked child of this test process (see `run_forked`)."""

    def __init__(self, argv: list[str], *, cwd: Path, env: dict[str, str]):
        self.argv = ["bench", *argv]
        _preload_for_forks()
        # Closed by wait(), which the child's output outlives.
        self._out = tempfile.TemporaryFile()  # noqa: SIM115
        self._err = tempfile.TemporaryFile()  # noqa: SIM115
        engines = _connection_pools()
        # Frozen, this process's objects are never visited by the child's garbage collections,
        # so the pages holding them stay shared instead of being copied (measured: a third of
        # the child's page faults, 0.1 s of system time per forked run).
        gc.freeze()
        self.pid = -1
        try:
            self.pid = os.fork()
        finally:
            if self.pid != 0:  # this process, forked or not (the child stays frozen)
                gc.unfreeze()
        if self.pid == 0:  # the child: never returns into pytest
            code = 1
            try:
                os.dup2(self._out.fileno(), 1)
                os.dup2(self._err.fileno(), 2)
                sys.stdout = io.TextIOWrapper(io.FileIO(1, "w", closefd=False), line_buffering=True)
                sys.stderr = io.TextIOWrapper(io.FileIO(2, "w", closefd=False), line_buffering=True)
                for signum in (signal.SIGINT, signal.SIGTERM):
                    signal.signal(signum, signal.SIG_DFL)
                os.environ.clear()
                os.environ.update(env)
                os.chdir(cwd)
                _fresh_warnings(env.get("PYTHONWARNINGS", ""))
                for engine in engines:  # SQLAlchemy's rule for forked children
                    engine.dispose(close=False)
                from bench.cli import main

                try:
                    code = main(argv)
                except SystemExit as exit:
                    code = exit.code if isinstance(exit.code, int) else 1
            except BaseException:
                traceback.print_exc()
            finally:
                with contextlib.suppress(BaseException):
                    sys.stdout.flush()
                    sys.stderr.flush()
                os._exit(code if isinstance(code, int) else 1)

    def wait(self, timeout: float = 600) -> subprocess.CompletedProcess:
        """Its end (or death; returncode -N for signal N) with its stdout and stderr."""
        deadline = time.monotonic() + timeout
        while True:
            done, status = os.waitpid(self.pid, os.WNOHANG)
            if done:
                break
            if time.monotonic() > deadline:
                os.kill(self.pid, signal.SIGKILL)
                os.waitpid(self.pid, 0)
                raise subprocess.TimeoutExpired(self.argv, timeout)
            time.sleep(0.02)
        with self._out, self._err:
            self._out.seek(0)
            self._err.seek(0)
            return subprocess.CompletedProcess(
                self.argv,
                os.waitstatus_to_exitcode(status),
                self._out.read().decode(),
                self._err.read().decode(),
            )


def run_forked(
    argv: list[str], *, cwd: Path, env: dict[str, str], timeout: float = 600
) -> subprocess.CompletedProcess:
    """`bench ARGV` in a forked child of this test process, as `python -m bench ARGV` would run.

    The child is a real process (its own pid, signal handlers and exit status: a SIGKILL fault
    kills it for real) but starts with everything already imported, where a fresh interpreter
    spends seconds importing torch, optuna and mlflow. It gets `env` and `cwd`, fresh
    stdout/stderr, default signal dispositions, and its own database connections: SQLAlchemy
    engines inherited from this process are disposed (close=False), as SQLAlchemy prescribes
    for forked children. Returns a CompletedProcess (returncode -N for death by signal N).
    """
    return Forked(argv, cwd=cwd, env=env).wait(timeout)


def _fresh_warnings(option: str) -> None:
    """In a forked child: warnings printed to stderr as PYTHONWARNINGS says (actions only),
    not recorded by pytest."""

    def show(message, category, filename, lineno, file=None, line=None):
        sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))

    warnings.showwarning = show
    warnings.resetwarnings()
    for action in filter(None, option.split(",")):
        warnings.simplefilter(action.split(":")[0])  # type: ignore[arg-type]


def _connection_pools() -> list:
    """This process's SQLAlchemy engines that have connected (`track_sqlalchemy_engines`),
    whose pooled connections a forked child must not use: it disposes them (close=False)
    before anything else. An engine that never connected pools no connection."""
    return list(_CONNECTED_ENGINES)


def _offline_environ(torch_home: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(OFFLINE_ENV)
    env["TORCH_HOME"] = str(torch_home)
    return env


@pytest.hookimpl(optionalhook=True)  # pytest-xdist's hook (`-p no:xdist` leaves it unused)
def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    """`-n auto`: one test process per core this process may use (its affinity and cgroup
    quota, as `bench run` counts them), where xdist would count every CPU of the host."""
    from bench.threads import available_cores

    return available_cores()


# Every SQLAlchemy engine that has connected in this test process, while it lives.
_CONNECTED_ENGINES: "weakref.WeakSet" = weakref.WeakSet()


@pytest.fixture(scope="session", autouse=True)
def track_sqlalchemy_engines() -> None:
    """Record each engine as it connects, for the forked children of `run_forked`: finding
    them among all of gc's objects instead took 0.15-0.3 s per fork in a long test process."""
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    event.listen(
        Engine, "engine_connect", lambda connection: _CONNECTED_ENGINES.add(connection.engine)
    )


@pytest.fixture(scope="session", autouse=True)
def one_torch_thread() -> Iterator[None]:
    """Every test runs torch on one thread: tiny ops on a 2-core machine (shared with the
    torchrun workers some tests start) only spin with more, measured up to 10x slower.
    NumPy's and SciPy's BLAS too: a 2048-d scipy sqrtm took 12.7 s on one thread and 15-28 s
    on two while another process used the CPU (the other test processes do)."""
    import torch
    from threadpoolctl import threadpool_limits

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with threadpool_limits(limits=1, user_api="blas"):
        yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def seeded_results(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A results/ folder with an initialised MLflow store and the tiny study's evaluator cache,
    built once per test session: the first test process (xdist worker) to need it builds it
    under a lock in the folder all workers' temporary folders share, the others wait for it
    and read it (tests copy it, never write to it)."""
    from bench.locks import file_lock

    base = tmp_path_factory.getbasetemp()
    shared = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    root = shared / "seeded" / "results"
    with file_lock(shared / "seeded.lock"):
        if not (shared / "seeded" / "done").exists():
            shutil.rmtree(shared / "seeded", ignore_errors=True)
            _seed(root)
            (shared / "seeded" / "done").touch()
    return root


def _seed(root: Path) -> None:
    import torch
    from mlflow import MlflowClient

    from bench.study import load_study
    from bench.trial import Scorer

    root.mkdir(parents=True)
    saved = {key: os.environ.get(key) for key in OFFLINE_ENV}
    os.environ.update(OFFLINE_ENV)
    try:
        MlflowClient(f"sqlite:///{root / 'mlflow.db'}").search_experiments()
        study = load_study(str(STUDIES / "tiny.toml"))
        Scorer(root / "cache", torch.device("cpu")).prepare(study.config(study.cells()[0]))
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@contextlib.contextmanager
def _workspace(root: Path, seeded: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Workspace]:
    """Fill `root` with studies/ and a seeded results/, go offline there."""
    shutil.copytree(STUDIES, root / "studies")
    shutil.copytree(seeded, root / "results")
    torch_home = root.parent / f"{root.name}_torch_home"
    torch_home.mkdir()
    for key, value in OFFLINE_ENV.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("TORCH_HOME", str(torch_home))
    monkeypatch.chdir(root)
    yield Workspace(root, _offline_environ(torch_home))


@pytest.fixture
def workspace(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, seeded_results: Path
) -> Iterator[Workspace]:
    """A fresh offline working directory (cwd) with studies/ and a seeded results/."""
    with _workspace(tmp_path / "work", seeded_results, monkeypatch) as space:
        yield space


@pytest.fixture(scope="module")
def module_workspace(
    tmp_path_factory: pytest.TempPathFactory, seeded_results: Path
) -> Iterator[Workspace]:
    """Like `workspace`, shared by the tests of one module (for a run they all inspect)."""
    root = tmp_path_factory.mktemp("module") / "work"
    with (
        pytest.MonkeyPatch.context() as monkeypatch,
        _workspace(root, seeded_results, monkeypatch) as space,
    ):
        yield space


@pytest.fixture
def cleanfid_features_once(monkeypatch):
    """clean-fid's get_folder_features, each folder's features extracted once per test: its
    compute_kid reads the same folders with the same arguments as its compute_fid (they differ
    in the progress-bar text only), so it gets the very arrays compute_fid's extraction
    returned. Returns {folder: features} as clean-fid extracted them."""
    import inspect

    import cleanfid.fid

    extract = cleanfid.fid.get_folder_features
    signature = inspect.signature(extract)
    extracted: dict = {}

    def once(*args, **kwargs):
        call = signature.bind(*args, **kwargs)
        call.apply_defaults()
        options = {k: v for k, v in call.arguments.items() if k not in ("model", "description")}
        key = repr(sorted(options.items()))  # the folder and every option but the model
        if key not in extracted:
            extracted[key] = extract(*args, **kwargs)
        return extracted[key]

    monkeypatch.setattr(cleanfid.fid, "get_folder_features", once)
    return extracted
