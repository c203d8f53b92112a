"""Progress display for long work: a thin adapter from casdm's plain callbacks to rich bars.

casdm never imports rich: training calls `callback(record)`, sampling and feature extraction call
`progress(done, total)`. `QuietProgress` ignores all of it (for `--quiet`, CI and logs);
`RichProgress` shows the study (trials done / total), the current trial's training steps with
its loss and images/s, sampling and feature extraction.
"""

import time
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import Any

Tick = Callable[[int, int], None]  # progress(done, total)


def _ignore(done: int, total: int) -> None:
    """A progress callback that shows nothing."""


class QuietProgress:
    """Shows nothing; the base of RichProgress and what `--quiet` uses."""

    def __enter__(self) -> "QuietProgress":
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        return None

    def begin_study(self, name: str, total: int, done: int) -> None:
        """A study of `total` trials starts, `done` of them already finished."""

    def advance_study(self) -> None:
        """One more trial of the study finished."""

    def begin_trial(self, label: str, train_steps: int) -> None:
        """A trial named `label` starts; it trains for `train_steps` steps."""

    def train(self, record: Mapping[str, Any]) -> None:
        """A training log record: step, loss, lr, grad_norm, images_per_s, terms."""

    def task(self, description: str) -> Tick:
        """A `progress(done, total)` callback for one stage (sampling, feature extraction)."""
        return _ignore

    def end_trial(self) -> None:
        """The current trial finished (its bars are removed)."""

    def log(self, message: str) -> None:
        """A line of text for the user; quiet mode drops it."""


class RichProgress(QuietProgress):
    """Rich progress bars on stderr: the study, then the current trial's stages below it."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.console = Console(stderr=True)
        self._bars = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            TextColumn("{task.fields[info]}"),
            console=self.console,
        )
        self._study: Any = None
        self._clock = clock  # the study ETA's clock
        self._study_start = 0.0
        self._finished = 0  # trials finished by this process (the ETA's rate)
        self._trial_tasks: list[Any] = []
        self._train: Any = None

    def __enter__(self) -> "RichProgress":
        self._bars.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._bars.stop()

    def begin_study(self, name: str, total: int, done: int) -> None:
        self._study = self._bars.add_task(f"study {name}", total=total, completed=done, info="")
        self._study_start = self._clock()
        self._finished = 0

    def advance_study(self) -> None:
        if self._study is None:
            return
        self._bars.advance(self._study)
        self._finished += 1
        task = next(t for t in self._bars.tasks if t.id == self._study)  # ids are not indices
        left = max(0.0, (task.total or 0) - task.completed)
        # Rich's own estimate needs two finished trials within 30 s: never, for trials of
        # minutes. This one is the mean wall-clock of the trials this process finished.
        per_trial = (self._clock() - self._study_start) / self._finished
        info = f"about {duration_text(per_trial * left)} left" if left else ""
        self._bars.update(self._study, info=info)

    def begin_trial(self, label: str, train_steps: int) -> None:
        self._train = self._bars.add_task(f"  train {label}", total=train_steps, info="")
        self._trial_tasks.append(self._train)

    def train(self, record: Mapping[str, Any]) -> None:
        info = f"loss {record['loss']:.4f}  {record['images_per_s']:.0f} img/s"
        self._bars.update(self._train, completed=record["step"], info=info)

    def task(self, description: str) -> Tick:
        task_id = self._bars.add_task(f"  {description}", total=None, info="")
        self._trial_tasks.append(task_id)

        def tick(done: int, total: int) -> None:
            self._bars.update(task_id, completed=done, total=total)

        return tick

    def end_trial(self) -> None:
        for task_id in self._trial_tasks:
            self._bars.remove_task(task_id)
        self._trial_tasks.clear()
        self._train = None

    def log(self, message: str) -> None:
        self._bars.console.print(message, highlight=False)


def duration_text(seconds: float) -> str:
    """ "45 s", "12 min", "3.5 h": a duration as a person reads an estimate."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def make_progress(quiet: bool) -> QuietProgress:
    """RichProgress, or QuietProgress for `--quiet`."""
    return QuietProgress() if quiet else RichProgress()
