"""Scores: what a trial's samples are measured by (FID, IS, ...), one `Score` component each.

A score is registered once, here for the built-ins or from a plugin module (casdm.components),
and everything that shows or judges it reads it from the registry: scoring computes every
registered score (bench.evaluation.scoring), the bootstrap resamples those that declare
`bootstrap` (bench.evaluation.bootstrap), studies check `objective.score` and `[table] scores`
against the names and take the better direction from `direction`, and tables, plots and the
trial lines print `display` with `decimals` after multiplying by `scale`.

`target` names the compute function, `(ctx: bench.evaluation.context.ScoringContext) -> float`,
imported on first use (this module loads no torch). A function that needs an input the context
lacks (e.g. the reference's pool features, absent from an ADM batch holding statistics only)
raises `MissingInput`, and the score is NaN. The context's `cached(key, compute)` shares work
between scores of one call (precision and recall: one k-NN pass; IS mean and std: one IS).
"""

import re
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from casdm.components import Component, PluginError, register, registry

Direction = Literal["minimize", "maximize"]
DIRECTIONS: tuple[Direction, ...] = ("minimize", "maximize")
NAME_PATTERN = re.compile(r"[a-z][a-z0-9_]*")  # a key in CSV columns, TOML, bootstrap.<name>.se
SUPERSCRIPTS = str.maketrans("0123456789", "⁰¹²³⁴⁵⁶⁷⁸⁹")


class MissingInput(Exception):
    """Raised by a compute function whose input the scoring context does not hold: NaN."""


@dataclass(frozen=True)
class ScoreSettings:
    """The evaluation settings scores follow (the run's eval.is_protocol and eval.is_splits)."""

    is_protocol: str = "adm"
    is_splits: int = 10

    @classmethod
    def of(cls, eval_cfg: Any) -> "ScoreSettings":
        """The settings of a bench.config.EvalConfig."""
        return cls(eval_cfg.is_protocol, eval_cfg.is_splits)


@dataclass(frozen=True, kw_only=True)
class Score(Component):
    """One evaluation score; `target` is its compute function `(ctx) -> float`.

    display: the name tables and plots print ("FID"); direction: "minimize", "maximize" or
    None (no better side, e.g. the IS's spread); decimals: shown after `scale`; scale: a power
    of ten the value is multiplied by for display (KID: 1000, headers say "×10³");
    bootstrap: whether its sampling uncertainty is estimated by recomputing it on resamples of
    the generated samples (the compute function must then read the samples only through the
    context, which a resample replaces).
    """

    kind: ClassVar[str] = "score"
    display: str
    direction: Direction | None = None
    decimals: int = 2
    scale: int = 1
    bootstrap: bool = False
    # Whether the automatic eval.bootstrap (-1) resamples it too; an explicit number of
    # resamples covers every score that declares `bootstrap`.
    bootstrap_by_default: bool = True
    # A fraction of the N generated samples (precision, recall): tables give it an interval
    # inside [0, 1] that keeps its binomial sampling noise (bench.intervals).
    proportion: bool = False

    def __post_init__(self):
        super().__post_init__()
        if not NAME_PATTERN.fullmatch(self.name):
            raise PluginError(
                f"score {self.name!r}: a score name is lowercase letters, digits and '_', "
                "starting with a letter (it becomes a CSV column and a TOML value)"
            )
        if self.direction not in (*DIRECTIONS, None):
            raise PluginError(
                f"score {self.name!r}: direction must be 'minimize', 'maximize' or None, got "
                f"{self.direction!r}"
            )
        if not (isinstance(self.decimals, int) and 0 <= self.decimals <= 12):
            raise PluginError(f"score {self.name!r}: decimals must be 0..12, got {self.decimals!r}")
        if not (isinstance(self.scale, int) and self.scale >= 1 and _is_power_of_ten(self.scale)):
            raise PluginError(
                f"score {self.name!r}: scale must be 1, 10, 100, ... got {self.scale!r}"
            )

    def label(self, options: Any = None) -> str:
        return self.display

    def protocol(self, settings: ScoreSettings) -> str:
        """The protocol it follows under `settings`, printed next to it ("": its evaluator's)."""
        return ""

    def header(self) -> str:
        """The display name with the scale, e.g. "KID ×10³"."""
        return self.display + (
            f" ×10{str(self.exponent).translate(SUPERSCRIPTS)}" if self.exponent else ""
        )

    @property
    def exponent(self) -> int:
        """k of scale = 10^k."""
        return len(str(self.scale)) - 1

    def text(self, value: float) -> str:
        """`value` as shown: scaled, at `decimals`."""
        return f"{value * self.scale:.{self.decimals}f}"


def _is_power_of_ten(n: int) -> bool:
    return str(n) == "1" + "0" * (len(str(n)) - 1)


@dataclass(frozen=True, kw_only=True)
class _InceptionScore(Score):
    """The IS mean and spread: their split protocol depends on eval.is_protocol."""

    def protocol(self, settings: ScoreSettings) -> str:
        from bench.evaluation.formulas import inception_score_protocol

        return inception_score_protocol(settings.is_protocol, settings.is_splits)


@dataclass(frozen=True, kw_only=True)
class _PrecisionRecall(Score):
    """Precision and recall: k-NN manifolds with float32 distances."""

    def protocol(self, settings: ScoreSettings) -> str:
        from bench.evaluation.formulas import PRECISION_RECALL_PROTOCOL

        return PRECISION_RECALL_PROTOCOL


def scores() -> list[Score]:
    """Every registered score, built-ins first, in table order."""
    reg = registry("score")
    return [reg.get(name) for name in reg.names()]


def names() -> list[str]:
    """Every registered score's name."""
    return registry("score").names()


def get(name: str) -> Score:
    """The score `name`, or casdm.components.UnknownComponentError listing the valid ones."""
    return registry("score").get(name)


def direction(name: str) -> Direction | None:
    """The better direction of score `name`; None when it has none or is not registered."""
    reg = registry("score")
    return reg.get(name).direction if name in reg else None


def display_name(name: str) -> str:
    """The display name of score `name`, or `name` itself when it is not registered (a score
    stored by a plugin that is no longer installed)."""
    reg = registry("score")
    return reg.get(name).display if name in reg else name


def protocols(settings: ScoreSettings) -> dict[str, str]:
    """{score name: the protocol it follows} for the scores that name one."""
    labels = {score.name: score.protocol(settings) for score in scores()}
    return {name: label for name, label in labels.items() if label}


def _compute(name: str) -> str:
    return f"bench.evaluation.compute:{name}"


for _score in (
    Score(
        name="fid",
        target=_compute("fid"),
        display="FID",
        direction="minimize",
        bootstrap=True,
        summary="Fréchet distance of the pool features to the reference (Heusel et al. 2017)",
    ),
    Score(
        name="sfid",
        target=_compute("sfid"),
        display="sFID",
        direction="minimize",
        bootstrap=True,
        summary="Fréchet distance of the spatial features (Nash et al. 2021)",
    ),
    _InceptionScore(
        name="is_mean",
        target=_compute("is_mean"),
        display="IS",
        direction="maximize",
        bootstrap=True,
        summary="Inception Score, mean over the splits (Salimans et al. 2016)",
    ),
    _InceptionScore(
        name="is_std",
        target=_compute("is_std"),
        display="IS std",
        summary="Inception Score, standard deviation over the splits",
    ),
    Score(
        name="kid",
        target=_compute("kid"),
        display="KID",
        direction="minimize",
        scale=1000,
        bootstrap=True,
        # clean-fid's estimator averages 100 random subsets: about 1 s per resample at 128
        # dims, 9 s at 2048, more than the whole trial on the digits; asked for explicitly.
        bootstrap_by_default=False,
        summary="Kernel Inception Distance, clean-fid's (Binkowski et al. 2018)",
    ),
    _PrecisionRecall(
        name="precision",
        target=_compute("precision"),
        display="Precision",
        direction="maximize",
        decimals=3,
        bootstrap=True,
        proportion=True,
        summary="improved precision, k = 3 (Kynkaanniemi et al. 2019)",
    ),
    _PrecisionRecall(
        name="recall",
        target=_compute("recall"),
        display="Recall",
        direction="maximize",
        decimals=3,
        bootstrap=True,
        proportion=True,
        summary="improved recall, k = 3 (Kynkaanniemi et al. 2019)",
    ),
):
    register(_score)

__all__ = [
    "DIRECTIONS",
    "Direction",
    "MissingInput",
    "Score",
    "ScoreSettings",
    "direction",
    "display_name",
    "get",
    "names",
    "protocols",
    "scores",
]
