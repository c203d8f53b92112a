"""Name lookup shared by every registry (ARCHITECTURES, METRICS, SAMPLERS, DATASETS, EVALUATORS)."""

from collections.abc import Mapping
from typing import TypeVar

from casdm.errors import InputError

T = TypeVar("T")


class UnknownNameError(InputError):
    """A registry name that does not exist; the message lists the valid ones."""


def lookup(registry: Mapping[str, T], name: str, kind: str) -> T:
    """Return `registry[name]`, or raise UnknownNameError naming `kind` and the valid names."""
    try:
        return registry[name]
    except KeyError:
        valid = ", ".join(sorted(registry))
        raise UnknownNameError(f"unknown {kind} {name!r}; valid {kind}s: {valid}") from None
