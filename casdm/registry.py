"""Name lookup in a plain mapping, naming the valid names when one is unknown (casdm.weights;
components have their own registries, casdm.components)."""

from collections.abc import Mapping
from typing import Any, TypeVar

from casdm.errors import InputError

T = TypeVar("T")


class UnknownNameError(InputError):
    """A registry name that does not exist; the message lists the valid ones."""


def check_name(registry: Mapping[str, Any], name: str, kind: str) -> None:
    """UnknownNameError naming `kind` and the valid names unless `name` is in `registry`."""
    if name not in registry:
        valid = ", ".join(sorted(registry))
        raise UnknownNameError(f"unknown {kind} {name!r}; valid {kind}s: {valid}")


def lookup(registry: Mapping[str, T], name: str, kind: str) -> T:
    """Return `registry[name]`, or raise UnknownNameError naming `kind` and the valid names."""
    check_name(registry, name, kind)
    return registry[name]
