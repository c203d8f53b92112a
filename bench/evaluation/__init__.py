"""Sample-quality evaluation: evaluators (components), reference statistics and `score`.

evaluator = build_evaluator(eval_cfg, data_cfg, device=device, cache_dir=cache_dir)
reference = reference_statistics(evaluator, data_cfg, eval_cfg, cache_dir=cache_dir)
metrics = score(uint8_images, evaluator, reference)  # fid, sfid, is_mean, is_std, kid, ...
protocols(eval_cfg.is_protocol, eval_cfg.is_splits)  # {score key: the protocol it follows}

Importing the package loads no torch: it names the metrics and evaluators (what a study is
checked against); the functions and classes below load their module on first use.
"""

import importlib
from typing import Any

from casdm.components import define_kind

# Display names of the keys `score` returns, in table order.
METRIC_NAMES = {
    "fid": "FID",
    "sfid": "sFID",
    "is_mean": "IS",
    "is_std": "IS std",
    "kid": "KID",
    "precision": "Precision",
    "recall": "Recall",
}

# The evaluator components (feature networks); built-ins in bench.evaluation.evaluators.
EVALUATORS = define_kind("evaluator", "bench.evaluation.evaluators")

# The package's torch-side API: name -> the module that defines it.
_LAZY = {
    "Evaluator": "bench.evaluation.evaluator",
    "Features": "bench.evaluation.evaluator",
    "build_evaluator": "bench.evaluation.evaluator",
    "metric_label": "bench.evaluation.evaluator",
    "Reference": "bench.evaluation.reference",
    "reference_statistics": "bench.evaluation.reference",
    "score": "bench.evaluation.scoring",
    "protocols": "bench.evaluation.scoring",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["EVALUATORS", "METRIC_NAMES", *_LAZY]
