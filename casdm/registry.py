"""Name lookup shared by every registry, and `Registry`: names whose implementations load lazily."""

import importlib
from collections.abc import Iterator, Mapping
from typing import Any, TypeVar

from casdm.errors import InputError

T = TypeVar("T")


class UnknownNameError(InputError):
    """A registry name that does not exist; the message lists the valid ones."""


class Registry(Mapping[str, Any]):
    """A read-only name -> implementation mapping whose values are 'module:attribute' paths.

    The names are known at once (checking a config's names imports nothing); a value's module
    is imported when the value is first looked up, so torch loads only when a model is built.
    """

    def __init__(self, entries: Mapping[str, str]) -> None:
        for name, target in entries.items():
            if target.count(":") != 1:
                raise ValueError(
                    f"registry entry {name!r}: expected 'module:attribute', got {target!r}"
                )
        self._entries = dict(entries)

    def __getitem__(self, name: str) -> Any:
        module, attribute = self._entries[name].split(":")
        return getattr(importlib.import_module(module), attribute)

    def __contains__(self, name: object) -> bool:
        return name in self._entries  # Mapping's default would import the value

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self._entries!r})"


def check_name(registry: Mapping[str, Any], name: str, kind: str) -> None:
    """UnknownNameError naming `kind` and the valid names unless `name` is in `registry`.

    Loads nothing: a `Registry`'s implementation is imported only by `lookup`.
    """
    if name not in registry:
        valid = ", ".join(sorted(registry))
        raise UnknownNameError(f"unknown {kind} {name!r}; valid {kind}s: {valid}")


def lookup(registry: Mapping[str, T], name: str, kind: str) -> T:
    """Return `registry[name]`, or raise UnknownNameError naming `kind` and the valid names."""
    check_name(registry, name, kind)
    return registry[name]
