"""An evaluator's CPU stage in worker processes, a few batches ahead of its device stage.

clean-fid's resize (`cleanfid_inputs`) is a PIL/numpy loop over images: run between the
network's batches, it leaves a GPU idle. With workers, `feature_batches` hands each uint8 batch
to a pool of worker processes running `Evaluator.prepare` (started for the pass, one torch
thread each, always shut down with it), at most LOOK_AHEAD batches per worker ahead of the
network. The inputs come back through shared memory (torch.multiprocessing), are used in the
batches' order, and on CUDA are pinned and copied asynchronously while the network still runs
on the previous batch. Peak memory does not grow with the number of images: about
LOOK_AHEAD * workers + 2 batches of inputs (a batch of 100 at 299x299 in float32 is 107 MB, in
shared memory: /dev/shm must hold them). Without workers each batch is `Evaluator.features`,
in this process. The numbers are the same either way: the same functions on the same inputs.
"""

import contextlib
import ctypes
import multiprocessing
import os
import pickle
import signal
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

import torch
import torch.multiprocessing

from bench import threads
from bench.errors import BenchError
from bench.evaluation.evaluator import Evaluator, Features, check_images

LOOK_AHEAD = 2  # batches in flight per worker: one being prepared, one waiting
# Automatic workers at most. clean's resize takes about 4 ms an image on one core (2-core test
# machine), so 8 workers prepare about 2,000 images/s.
MAX_AUTO = 8


def resolve_workers(option: int, evaluator: Evaluator) -> int:
    """The number of workers eval.prep_workers asks for (`option`; -1: automatic) for `evaluator`.

    Automatic: none for an evaluator without a CPU stage (`prepare` None: the workers would only
    copy the images) and none on the CPU, where the network runs on the cores itself (its share
    of bench.threads) and processes resizing beside it would only take cores from it (its
    forward pass, not the resize, is what a CPU pass waits for). On an accelerator
    min(MAX_AUTO, cores - 1): the cores bench.threads counts (affinity mask, cgroup quota),
    shared among torchrun's ranks on this machine, one left to the process driving the device.
    """
    if option >= 0:
        return option
    if evaluator.prepare is None or evaluator.device.type == "cpu":
        return 0
    local_ranks = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    return max(0, min(MAX_AUTO, threads.available_cores() // local_ranks - 1))


@contextlib.contextmanager
def feature_batches(
    chunks: Iterable[torch.Tensor], evaluator: Evaluator, workers: int
) -> Iterator[Iterator[Features]]:
    """The features of each uint8 batch of `chunks`, in order: `workers` processes (0: none)
    prepare the batches' inputs; they are stopped when the block ends, however it ends."""
    if workers == 0:
        yield (evaluator.features(chunk) for chunk in chunks)
        return
    try:
        pickle.dumps(evaluator.prepare)
    except (pickle.PicklingError, AttributeError, TypeError) as err:
        raise BenchError(
            f"{evaluator.label}: its preprocessing cannot be sent to worker processes ({err}); "
            "make `prepare` a top-level function (or a functools.partial of one), or set "
            "eval.prep_workers = 0"
        ) from None
    context = torch.multiprocessing.get_context(_START_METHOD)
    pool = ProcessPoolExecutor(
        workers, mp_context=context, initializer=_init_worker, initargs=(os.getpid(),)
    )
    try:
        inputs = _prepared(chunks, evaluator, pool, LOOK_AHEAD * workers)
        with contextlib.closing(_pipelined(inputs, evaluator)) as features:
            yield features
    finally:
        # Queued batches are dropped; a worker finishes its batch (at most a second or so),
        # then every worker exits and is joined.
        pool.shutdown(wait=True, cancel_futures=True)


_PR_SET_PDEATHSIG = 1  # linux/prctl.h

# fork starts workers at once and without re-importing anything; they touch no CUDA state.
_START_METHOD = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"


def _init_worker(parent: int) -> None:
    """A worker: one torch thread; Ctrl-C is the main process's to handle (it stops the pool),
    SIGTERM ends it (no handler or mask inherited from `bench run`), and on Linux so does the
    death of `parent` however it dies (a killed parent could not stop its pool)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # died before prctl
        os._exit(1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
    torch.set_num_threads(1)


def _prepare(
    prepare: Callable[[torch.Tensor], torch.Tensor] | None, images: torch.Tensor
) -> torch.Tensor:
    """In a worker: `Evaluator.inputs` (from its picklable `prepare`)."""
    return images if prepare is None else prepare(images)


def _prepared(
    chunks: Iterable[torch.Tensor], evaluator: Evaluator, pool: ProcessPoolExecutor, ahead: int
) -> Iterator[tuple[torch.Tensor, torch.Size]]:
    """(inputs, images' shape) of each batch, in order, with `ahead` batches in flight."""
    pending: deque[tuple[Future, torch.Size]] = deque()
    for chunk in chunks:
        check_images(chunk, evaluator.channels, evaluator.label)
        # Copied once, into shared memory of its own: a view would share the whole tensor.
        images = torch.empty(chunk.shape, dtype=chunk.dtype).share_memory_().copy_(chunk)
        pending.append((pool.submit(_prepare, evaluator.prepare, images), chunk.shape))
        if len(pending) > ahead:
            yield _result(*pending.popleft())
    while pending:
        yield _result(*pending.popleft())


def _result(future: Future, shape: torch.Size) -> tuple[torch.Tensor, torch.Size]:
    try:
        return future.result(), shape
    except BrokenProcessPool as err:
        raise BenchError(
            f"a preprocessing worker process died ({err}); if /dev/shm is small (a container's "
            "default is 64 MB), give it more room or set eval.prep_workers = 0"
        ) from err


def _pipelined(
    inputs: Iterator[tuple[torch.Tensor, torch.Size]], evaluator: Evaluator
) -> Iterator[Features]:
    """Each batch's features; the next batch's inputs are staged (pinned, copied to the GPU)
    while the device still runs the current batch (its kernels are queued, not waited for)."""
    staged = _staged(inputs, evaluator.device)
    current = next(staged, None)
    while current is not None:
        features = evaluator.features_of(*current)
        current = next(staged, None)
        yield features


def _staged(
    inputs: Iterator[tuple[torch.Tensor, torch.Size]], device: torch.device
) -> Iterator[tuple[torch.Tensor, torch.Size]]:
    for x, shape in inputs:
        if device.type == "cuda":
            x = x.pin_memory().to(device, non_blocking=True)
        yield x, shape
