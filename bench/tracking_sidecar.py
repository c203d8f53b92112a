"""`bench run`'s MLflow sidecar: an MlflowBackend (bench.tracking_backend) in a child process.

Importing MLflow and opening its store take seconds; in the sidecar they run on another core
while `bench run` imports torch, opens the Optuna storage and prepares the evaluator.
`SidecarBackend` starts it at once and then stands in for an MlflowBackend: each operation is
sent to the child and waits for its reply, so every MLflow call stays synchronous and in
order, as in one process.

- The child is a fresh interpreter (`python -c`, never a fork: the parent may have threads,
  CUDA). It imports MLflow before it reads its first request (MlflowBackend.warm_up), and
  opens the store at the first one, as an MlflowBackend in one process does.
- Requests and replies travel over a socket pair, one at a time, sent and read by one thread
  of the parent (in order; any thread may call). The caller waits for its reply, and Ctrl-C
  can interrupt that wait (a hung upload stays interruptible) without ever cutting a message:
  the interrupted operation still completes in the child, before the next one.
- An operation that raises in the child raises in the parent a `TrackingError` of the same
  type name and message, with MLflow's `error_code` (and the child's traceback as a note).
- The child ignores SIGINT and SIGTERM: Ctrl-C reaches the whole process group, and the
  worker still marks its run KILLED through the sidecar while it handles the interrupt.
  It exits when its socket closes (the parent exited, or `close`), and on Linux at once
  when the parent dies (PR_SET_PDEATHSIG), however it dies.
- A sidecar that died (or never started) fails every later operation at once with a
  BenchError; there is no reply timeout (an artifact upload may take long).
"""

import contextlib
import functools
import logging
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import traceback
from concurrent.futures import Future
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from bench.errors import BenchError
from bench.tracking_backend import OPERATIONS, MlflowBackend, absolute_uri

# How long `close` lets the child finish an operation still running (an interrupted upload)
# and exit before it is killed.
EXIT_WAIT_S = 10.0
_PR_SET_PDEATHSIG = 1  # linux/prctl.h
# The child: the `bench` package the parent runs (its folder first on sys.path), then serve().
_BOOT = (
    "import sys; sys.path.insert(0, sys.argv[1]); "
    "from bench.tracking_sidecar import main; main(sys.argv[2:])"
)


ENV = "CASDM_MLFLOW_SIDECAR"  # "0": MLflow in the `bench run` process itself


def enabled() -> bool:
    """Whether `bench run` tracks through a sidecar: on POSIX (the child is handed a socket by
    descriptor) unless CASDM_MLFLOW_SIDECAR=0, which keeps MLflow in the process itself: for
    a debugger, or a process that has imported MLflow already (the test suite's forked runs),
    where the sidecar would only import it once more."""
    return os.name == "posix" and os.environ.get(ENV, "1") != "0"


class TrackingError(RuntimeError):
    """An exception the sidecar's MlflowBackend raised, raised again in the parent.

    Each original type name gets its own subclass of that name (`MlflowException`, ...), so
    `f"{type(err).__name__}: {err}"` reads as it did in one process. error_code: MLflow's
    (`RESOURCE_DOES_NOT_EXIST`, ...), None for other exceptions.
    """

    error_code: str | None = None


_ERROR_TYPES: dict[str, type[TrackingError]] = {}


def tracking_error(
    type_name: str, message: str, error_code: str | None, remote_traceback: str
) -> TrackingError:
    """The TrackingError (of the subclass named `type_name`) for an error reply."""
    kind = _ERROR_TYPES.get(type_name)
    if kind is None:
        kind = type(type_name, (TrackingError,), {"__module__": __name__})
        _ERROR_TYPES[type_name] = kind
    error = kind(message)
    error.error_code = error_code
    error.add_note(f"raised in the MLflow sidecar process:\n{remote_traceback.rstrip()}")
    return error


class SidecarBackend:
    """An MlflowBackend on `tracking_uri` in a child process, started now; the same
    operations (bench.tracking_backend.OPERATIONS), called the same way. `close` (or the
    `with` block's end) ends the child."""

    def __init__(self, tracking_uri: str):
        self.tracking_uri = absolute_uri(tracking_uri)
        self._closed = False
        self._called = False  # whether any operation was sent
        self._lost: BaseException | None = None  # why the child is gone, once it is
        ours, theirs = socket.socketpair()
        root = Path(__file__).resolve().parents[1]
        fd = theirs.fileno()
        command = [sys.executable, "-c", _BOOT, str(root), str(fd), self.tracking_uri]
        try:
            with theirs:
                self._process = subprocess.Popen(
                    [*command, str(os.getpid())], pass_fds=[fd], stdin=subprocess.DEVNULL
                )
        except OSError as err:
            ours.close()
            raise BenchError(f"cannot start the MLflow sidecar process ({err})") from None
        self._socket = ours
        self._connection = Connection(os.dup(ours.fileno()))
        self._requests: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._exchange, name="mlflow-sidecar", daemon=True)
        self._thread.start()

    @property
    def pid(self) -> int:
        """The child's process id."""
        return self._process.pid

    def __getattr__(self, name: str) -> Any:
        if name in OPERATIONS:
            return functools.partial(self._call, name)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def _call(self, operation: str, *args: Any, **kwargs: Any) -> Any:
        """Run one operation in the child and wait for its result (or raise its error)."""
        if self._closed:
            raise RuntimeError("the MLflow sidecar is closed")
        if self._lost is not None:
            raise self._gone()
        future: Future = Future()
        self._called = True
        self._requests.put(((operation, args, kwargs), future))
        reply = future.result()  # Ctrl-C interrupts the wait; the operation still completes
        if reply[0] == "ok":
            return reply[1]
        raise tracking_error(*reply[1:])

    def _exchange(self) -> None:
        """The parent's one reader and writer of the socket: each request, then its reply.

        SIGINT and SIGTERM are blocked in this thread, so that they reach the main thread (or
        wait while `bench.worker` holds them back there), never this one."""
        if hasattr(signal, "pthread_sigmask"):
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
        while (item := self._requests.get()) is not None:
            request, future = item
            if self._lost is None:
                try:
                    self._connection.send(request)
                    future.set_result(self._connection.recv())
                    continue
                except (EOFError, OSError) as err:
                    self._lost = err
            future.set_exception(self._gone())

    def _gone(self) -> BenchError:
        """The error of every operation once the child is gone."""
        if self._closed:
            return BenchError("the MLflow sidecar is closed")
        try:
            code = self._process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            how = f"stopped answering ({self._lost!r})"
        else:
            how = f"killed by signal {-code}" if code < 0 else f"exited with code {code}"
        return BenchError(
            f"the MLflow sidecar process (pid {self.pid}), which makes this `bench run`'s "
            f"MLflow calls to {self.tracking_uri}, {how}; its own error, if any, is printed "
            "above. Nothing more can be logged, so `bench run` stops here"
        )

    def close(self) -> None:
        """End the child: it sees its socket close once any operation still running (an
        interrupted one) is done, and exits; killed after EXIT_WAIT_S. A child that was never
        asked anything (`bench run` stopped before its first trial) is killed at once, not
        awaited while it imports MLflow."""
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(OSError):
            self._socket.shutdown(socket.SHUT_RDWR)
        self._requests.put(None)
        if not self._called:
            self._process.kill()
        try:
            self._process.wait(timeout=EXIT_WAIT_S)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        self._thread.join(timeout=EXIT_WAIT_S)
        if not self._thread.is_alive():
            self._connection.close()
        self._socket.close()

    def __enter__(self) -> "SidecarBackend":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def main(argv: list[str]) -> None:
    """The child process: serve(), then exit without tearing the interpreter down.

    Every MLflow operation was synchronous and has replied, so nothing is left to write; the
    teardown of MLflow's, SQLAlchemy's and pandas' modules would take about a second that
    `bench run` spends waiting for this process to end.
    """
    serve(*argv)
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(0)


def serve(fd: str, tracking_uri: str, parent: str) -> None:
    """The child: answer the parent's requests on socket `fd` until it closes."""
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, signal.SIG_IGN)  # the parent's to handle; it ends us
    if sys.platform.startswith("linux"):
        import ctypes

        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != int(parent):  # the parent died before prctl
        return
    connection = Connection(int(fd))
    backend = MlflowBackend(tracking_uri)
    backend.warm_up()
    while True:
        try:
            operation, args, kwargs = connection.recv()
        except (EOFError, OSError):
            return
        try:
            if operation not in OPERATIONS:
                raise AttributeError(f"no MLflow backend operation {operation!r}")
            reply: tuple = ("ok", getattr(backend, operation)(*args, **kwargs))
        except Exception as err:
            code = getattr(err, "error_code", None)
            code = code if isinstance(code, str) else None
            reply = ("error", type(err).__name__, str(err), code, traceback.format_exc())
        try:
            connection.send(reply)
        except OSError:
            return
