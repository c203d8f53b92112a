"""The built-in evaluators (feature networks) as components, and the Inception protocols.

Torch-free: `target` names each evaluator's builder, `(eval_cfg, data_cfg, *, device,
cache_dir) -> bench.evaluation.evaluator.Evaluator`, imported when the evaluator is built.
"""

from dataclasses import dataclass
from typing import Any, ClassVar

from casdm.components import Component, NoOptions, register
from casdm.config import check


@dataclass(frozen=True, kw_only=True)
class EvaluatorSpec(Component):
    """A feature network that scores samples (see bench.evaluation.evaluator.Evaluator)."""

    kind: ClassVar[str] = "evaluator"

    def protocol(self, options: Any) -> str:
        """The scoring protocol it follows (captions, CSV, MLflow tags)."""
        return self.name


@dataclass(frozen=True)
class Protocol:
    """One of clean-fid's modes: which weights file, and whether the network resizes itself."""

    name: str
    weights: str  # casdm.weights entry
    torchscript: bool  # clean-fid's InceptionV3W (else its pytorch-fid port InceptionV3)
    resize_inside: bool  # the TorchScript forward resizes (legacy_tensorflow)
    description: str


PROTOCOLS: dict[str, Protocol] = {
    "clean": Protocol(
        "clean",
        "inception_torchscript",
        torchscript=True,
        resize_inside=False,
        description="clean-fid 'clean': PIL bicubic resize, TorchScript TF Inception",
    ),
    "legacy_tensorflow": Protocol(
        "legacy_tensorflow",
        "inception_torchscript",
        torchscript=True,
        resize_inside=True,
        description="clean-fid 'legacy_tensorflow': TF-style bilinear resize inside the "
        "TorchScript TF Inception (the TTUR/ADM convention)",
    ),
    "legacy_pytorch": Protocol(
        "legacy_pytorch",
        "inception",
        torchscript=False,
        resize_inside=False,
        description="clean-fid 'legacy_pytorch': PyTorch bilinear resize, pytorch-fid's port",
    ),
}
FID_PROTOCOLS = tuple(PROTOCOLS)  # clean-fid's modes, each reproduced exactly
# The mode closest to the TensorFlow FID code behind published diffusion numbers (TTUR, ADM).
DEFAULT_FID_PROTOCOL = "legacy_tensorflow"


@dataclass(frozen=True)
class InceptionOptions:
    # One of FID_PROTOCOLS ("": DEFAULT_FID_PROTOCOL).
    protocol: str = ""

    def __post_init__(self):
        check(
            self.protocol in ("", *FID_PROTOCOLS),
            "protocol",
            f"must be one of {', '.join(FID_PROTOCOLS)} (or empty for {DEFAULT_FID_PROTOCOL}), "
            f"got {self.protocol!r}",
        )

    @property
    def resolved(self) -> Protocol:
        """The protocol in force."""
        return PROTOCOLS[self.protocol or DEFAULT_FID_PROTOCOL]


@dataclass(frozen=True, kw_only=True)
class Inception(EvaluatorSpec):
    """The FID Inception network under one of clean-fid's protocols."""

    def protocol(self, options: InceptionOptions) -> str:
        return options.resolved.name

    def label(self, options: InceptionOptions) -> str:
        return f"Inception/{options.resolved.name}"

    def required_weights(self, options: InceptionOptions) -> tuple[str, ...]:
        return (options.resolved.weights,)


CLASSIFIER_PROTOCOL = "trained-classifier"  # features of a CNN trained here: no published one


@dataclass(frozen=True, kw_only=True)
class Classifier(EvaluatorSpec):
    """A small CNN trained here on the dataset's labels (digits): its own, unpublished protocol."""

    def protocol(self, options: NoOptions) -> str:
        return CLASSIFIER_PROTOCOL

    def label(self, options: NoOptions) -> str:
        return "classifier"


INCEPTION = register(
    Inception(
        name="inception",
        target="bench.evaluation.inception:build_inception",
        options=InceptionOptions,
        summary="FID Inception-v3 (clean-fid's networks and resizers), eval.protocol",
    )
)
CLASSIFIER = register(
    Classifier(
        name="classifier",
        target="bench.evaluation.classifier:build_classifier",
        options=NoOptions,
        summary="a CNN trained on the dataset's labels (digits), for fast local scores",
    )
)
