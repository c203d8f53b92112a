"""Sample-quality evaluation: evaluators and scores (components), reference statistics, `score`.

evaluator = build_evaluator(eval_cfg, data_cfg, device=device, cache_dir=cache_dir)
reference = reference_statistics(evaluator, data_cfg, eval_cfg, cache_dir=cache_dir)
scores = score(uint8_images, evaluator, reference)  # fid, sfid, is_mean, is_std, kid, ...
protocols(eval_cfg.is_protocol, eval_cfg.is_splits)  # {score name: the protocol it follows}

Scores are components of the kind "score" (bench.evaluation.scores; `registry("score")` of
casdm.components). Importing the package loads no torch: it names the scores and evaluators
(what a study is checked against); the functions and classes below load their module on first
use.
"""

import importlib
from typing import Any

from casdm.components import define_kind

# The evaluator components (feature networks); built-ins in bench.evaluation.evaluators.
EVALUATORS = define_kind("evaluator", "bench.evaluation.evaluators")

# The "score" component kind: bench.evaluation.scores registers the built-ins (torch-free).
define_kind("score", "bench.evaluation.scores")

# The package's torch-side API: name -> the module that defines it.
_LAZY = {
    "Evaluator": "bench.evaluation.evaluator",
    "Features": "bench.evaluation.evaluator",
    "build_evaluator": "bench.evaluation.evaluator",
    "score_label": "bench.evaluation.evaluator",
    "Reference": "bench.evaluation.reference",
    "reference_statistics": "bench.evaluation.reference",
    "score": "bench.evaluation.scoring",
    "protocols": "bench.evaluation.scoring",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["EVALUATORS", *_LAZY]
