"""Sample-quality evaluation: evaluators (EVALUATORS), reference statistics and `score`.

evaluator = build_evaluator(eval_cfg, data_cfg, device=device, cache_dir=cache_dir)
reference = reference_statistics(evaluator, data_cfg, eval_cfg, cache_dir=cache_dir)
metrics = score(uint8_images, evaluator, reference)  # fid, sfid, is_mean, is_std, kid, ...
protocols(eval_cfg.is_protocol, eval_cfg.is_splits)  # {score key: the protocol it follows}
"""

from collections.abc import Callable
from pathlib import Path

import torch

from bench.config import EvalConfig
from bench.evaluation.classifier import build_classifier
from bench.evaluation.evaluator import METRIC_NAMES, Evaluator, Features, metric_label
from bench.evaluation.inception import build_inception
from bench.evaluation.reference import Reference, reference_statistics
from bench.evaluation.scoring import protocols, score
from casdm import distributed
from casdm.config import DataConfig
from casdm.registry import lookup

Builder = Callable[..., Evaluator]  # (eval_cfg, data_cfg, *, device, cache_dir) -> Evaluator

EVALUATORS: dict[str, Builder] = {
    "inception": build_inception,
    "classifier": build_classifier,
}


def build_evaluator(
    eval_cfg: EvalConfig, data_cfg: DataConfig, *, device: torch.device | str, cache_dir: Path
) -> Evaluator:
    """The EVALUATORS entry named by eval_cfg.evaluator, for `data_cfg`'s dataset.

    Under torchrun rank 0 builds it first (training the classifier or fetching weights into
    `cache_dir`); the other ranks then load what it cached.
    """
    build = lookup(EVALUATORS, eval_cfg.evaluator, "evaluator")
    return distributed.main_first(
        lambda: build(eval_cfg, data_cfg, device=torch.device(device), cache_dir=Path(cache_dir))
    )


__all__ = [
    "EVALUATORS",
    "METRIC_NAMES",
    "Evaluator",
    "Features",
    "Reference",
    "build_evaluator",
    "metric_label",
    "protocols",
    "reference_statistics",
    "score",
]
