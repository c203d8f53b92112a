"""The ranks > 0 of a torchrun: they do, in step with rank 0, what it announces.

Under `torchrun -m bench run` (or `bench run --nproc K`) every process runs each trial together
(DDP training, sharded sampling, collective scoring: casdm.distributed), but rank 0 alone
claims trials and records them. Before each collective step it broadcasts one Announcement,
and the other ranks (`follow`) take the same step.
"""

import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.cells import with_device
from bench.config import RunConfig
from bench.study import Study

if TYPE_CHECKING:
    from bench.trial import Scorer


@dataclass(frozen=True)
class PrepareEvaluators:
    """Rank 0 took the study's published evaluator build into its cache: prepare them again."""


@dataclass(frozen=True)
class ScoreReference:
    """Rank 0 scores the held-out real data (the table's reference row)."""


@dataclass(frozen=True)
class RunTrial:
    """Rank 0 runs the trial of cell `params` in the trial folder `workdir`."""

    params: dict[str, Any]
    workdir: str


@dataclass(frozen=True)
class Stop:
    """Rank 0 is done (the study is, or it failed): the other ranks return."""


Announcement = PrepareEvaluators | ScoreReference | RunTrial | Stop


def announce(message: Announcement) -> None:
    """Rank 0: tell the other ranks what comes next (nothing when there are none)."""
    from casdm import distributed

    distributed.broadcast_object(message)


def follow(study: Study, device: str | None, scorer: "Scorer", configs: list[RunConfig]) -> None:
    """Ranks > 0: take each step rank 0 announces, until it announces Stop.

    Preparing the evaluators, training, sampling and scoring are collective, so each rank does
    them with the same configs in the same order as rank 0.
    """
    from bench.trial import run_trial
    from casdm import distributed

    while True:
        message = distributed.broadcast_object(None)  # rank 0's Announcement
        match message:
            case Stop():
                return
            case PrepareEvaluators():
                scorer.forget()
                for config in configs:
                    scorer.prepare(config)
            case ScoreReference():
                scorer.score_real_data(with_device(study.config(study.cells()[0]), device))
            case RunTrial(params=params, workdir=workdir):
                try:
                    config = with_device(study.config(params), device)
                    run_trial(config, Path(workdir), scorer=scorer)
                except Exception:
                    # Rank 0 meets the same error and records the trial as failed; go on.
                    traceback.print_exc()
            case _:
                raise TypeError(f"rank 0 announced {message!r}, not an Announcement")
