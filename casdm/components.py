"""Components: every architecture, metric loss, sampler, dataset, evaluator and score is one.

A component is a `Component` object: its name, its own options type (a frozen dataclass whose
fields a run configuration addresses as `<section>.<field>`, e.g. `architecture.phi_width`),
the hooks the harness asks it (validate, required weights, a human label), and `target`, the
"module:attribute" of its implementation, imported on first `load()`. The object itself loads
no torch, so a study is checked (`bench list`) without building any model.

Each kind has one `Registry` (`registry(kind)`). Built-in components register themselves when
their kind's built-in module is imported (on the registry's first use); components from other
packages come from the `casdm_bench.components` entry-point group (each entry names a module
that registers its components when imported) or from `load_plugin("module")` (`bench --plugin`).
See "Adding a component" in docs/DESIGN.md.
"""

import dataclasses
import importlib
import importlib.metadata
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, ClassVar, NamedTuple

from casdm.errors import InputError

ENTRY_POINT_GROUP = "casdm_bench.components"


class UnknownComponentError(InputError):
    """A component name that no registry (built-in or plugin) holds; lists the valid ones."""


class PluginError(InputError):
    """A plugin module that cannot be imported or registers something invalid."""


@dataclass(frozen=True)
class NoOptions:
    """The options of a component that takes none."""


class Shape(NamedTuple):
    """The images a run trains on: channels (None when not known yet), height, width."""

    channels: int | None
    height: int
    width: int


@dataclass(frozen=True, kw_only=True)
class Component:
    """One named, self-describing choice of a kind (see the module docstring).

    Subclasses per kind add that kind's hooks; a component overrides the hooks it needs.
    """

    kind: ClassVar[str] = ""
    name: str
    target: str  # "module:attribute" of the implementation
    options: type = NoOptions
    summary: str = ""  # one line for `bench list --components`

    def __post_init__(self):
        if self.target.count(":") != 1:
            raise PluginError(
                f"{self.kind} {self.name!r}: target must be 'module:attribute', got {self.target!r}"
            )
        if not (dataclasses.is_dataclass(self.options) and isinstance(self.options, type)):
            raise PluginError(
                f"{self.kind} {self.name!r}: options must be a dataclass type, got {self.options!r}"
            )

    def load(self) -> Any:
        """The implementation (class or function), imported on first use."""
        module, attribute = self.target.split(":")
        return getattr(importlib.import_module(module), attribute)

    def label(self, options: Any) -> str:
        """Human label for tables, captions and logs."""
        return self.name

    def validate(self, options: Any, shape: Shape | None, config: Any) -> None:
        """Raise casdm.config.ConfigError (key relative to the section, e.g. "min_size") if this
        component cannot run with `options` on images of `shape` under the whole run `config`
        (shape None: not known yet). The message says what is allowed and what to set."""

    def required_weights(self, options: Any) -> tuple[str, ...]:
        """casdm.weights names the component downloads before it can run (checked up front)."""
        return ()

    def caveats(self, options: Any) -> tuple[str, ...]:
        """Sentences every table and report of a run using this component must carry."""
        return ()


class Registry:
    """The components of one kind: built-ins, then plugins, looked up by name.

    The built-in module is imported on first use (it registers its components), and entry-point
    plugins when a name is not found among the registered ones, or when all are listed.
    """

    def __init__(self, kind: str, builtin: str):
        self.kind = kind
        self._builtin = builtin
        self._components: dict[str, Component] = {}
        self._lock = threading.RLock()
        self._builtins_loaded = False

    def register(self, component: Component) -> Component:
        """Add `component` (of this kind); the same object twice is a no-op, another name clash
        an error. Returns the component, so a module can write `X = register(Spec(...))`."""
        if component.kind != self.kind:
            raise PluginError(
                f"{component.name!r} is a {component.kind or 'component of no kind'}, "
                f"registered as a {self.kind}"
            )
        with self._lock:
            existing = self._components.get(component.name)
            if existing is not None and existing != component:
                raise PluginError(
                    f"two {self.kind}s are named {component.name!r} ({existing.target} and "
                    f"{component.target}); a plugin must choose another name"
                )
            self._components[component.name] = component
        return component

    def _ensure_builtins(self) -> None:
        if not self._builtins_loaded:
            with self._lock:
                if not self._builtins_loaded:
                    self._builtins_loaded = True
                    importlib.import_module(self._builtin)

    def get(self, name: str) -> Component:
        """The component `name`, or UnknownComponentError listing the valid names."""
        self._ensure_builtins()
        if name not in self._components:
            load_entry_points()
        if name not in self._components:
            valid = ", ".join(sorted(self._components))
            raise UnknownComponentError(
                f"unknown {self.kind} {name!r}; valid {self.kind}s: {valid} (a {self.kind} from "
                f"another package is found through the {ENTRY_POINT_GROUP!r} entry-point group "
                "or `bench --plugin MODULE`; `bench list --components` lists them all)"
            )
        return self._components[name]

    def __contains__(self, name: object) -> bool:
        try:
            self.get(str(name))
        except UnknownComponentError:
            return False
        return True

    def names(self) -> list[str]:
        """Every registered name, built-ins first, in registration order."""
        self._ensure_builtins()
        load_entry_points()
        return list(self._components)

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self.names())


# kind -> its registry. casdm's kinds are defined here; bench defines its own (evaluator,
# score) with `define_kind` when bench.evaluation is imported.
_REGISTRIES: dict[str, Registry] = {}


def define_kind(kind: str, builtin: str) -> Registry:
    """The registry of a new kind whose built-ins the module `builtin` registers (idempotent)."""
    if kind not in _REGISTRIES:
        _REGISTRIES[kind] = Registry(kind, builtin)
    return _REGISTRIES[kind]


for _kind in ("architecture", "metric", "sampler", "dataset"):
    define_kind(_kind, f"casdm.specs.{_kind}s")


def kinds() -> tuple[str, ...]:
    """The kinds defined so far (casdm's; bench's once bench.evaluation is imported)."""
    return tuple(_REGISTRIES)


def registry(kind: str) -> Registry:
    """The registry of `kind` (one of `kinds()`)."""
    return _REGISTRIES[kind]


def register(component: Component) -> Component:
    """Register `component` in the registry of its kind (a plugin module calls this)."""
    if component.kind not in _REGISTRIES:
        raise PluginError(
            f"{component.name!r}: unknown component kind {component.kind!r}; kinds: "
            f"{', '.join(kinds())}"
        )
    return _REGISTRIES[component.kind].register(component)


_loaded_plugins: set[str] = set()
_entry_points_loaded = False
_plugin_lock = threading.RLock()


def load_plugin(module: str) -> None:
    """Import `module`, which registers its components (`bench --plugin MODULE`)."""
    with _plugin_lock:
        if module in _loaded_plugins:
            return
        try:
            importlib.import_module(module)
        except ImportError as err:
            raise PluginError(
                f"cannot import plugin module {module!r}: {err}; install the package that "
                "provides it, or check the name given to --plugin"
            ) from None
        _loaded_plugins.add(module)


def load_entry_points() -> None:
    """Import every module of the `casdm_bench.components` entry-point group, once."""
    global _entry_points_loaded
    with _plugin_lock:
        if _entry_points_loaded:
            return
        _entry_points_loaded = True
        for entry in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
            load_plugin(entry.value.split(":")[0])


def loaded_plugins() -> list[str]:
    """The plugin modules imported so far, sorted."""
    return sorted(_loaded_plugins)


# casdm's kinds and the hooks each adds.


@dataclass(frozen=True, kw_only=True)
class Architecture(Component):
    """A model: `load()(arch_config, model_config, schedule, channels, resolution) -> nn.Module`
    with `forward(x_t, t) -> Prediction` and `loss(x0, t, noise, metric) -> (loss [B], terms)`."""

    kind: ClassVar[str] = "architecture"


@dataclass(frozen=True, kw_only=True)
class MetricLoss(Component):
    """A metric loss on predicted clean images: `load()(metric_config)` is a casdm.metrics.Metric
    module, `metric(x0_pred, x0) -> [B]`. Its options type should derive from MetricOptions."""

    kind: ClassVar[str] = "metric"

    def input_size(self, options: Any, height: int, width: int) -> tuple[int, int]:
        """The size it measures `height` x `width` images at (after any resizing it does)."""
        return height, width

    def caption_note(self, options: Any, height: int, width: int) -> str:
        """A caption's note on how it sees `height` x `width` images, or "" if as they are."""
        size = self.input_size(options, height, width)
        if size == (height, width):
            return ""
        return (
            f"{self.label(options)} on images upsampled bilinearly from {height}x{width} to "
            f"{size[0]}x{size[1]}"
        )


@dataclass(frozen=True, kw_only=True)
class Sampler(Component):
    """A sampler: `load()(model, schedule, x_T, *, steps, generator, clip_x0, **options) -> x0`."""

    kind: ClassVar[str] = "sampler"

    def network_evaluations(self, options: Any, steps: int) -> int:
        """Network evaluations per sample over `steps` steps (a cost column)."""
        return steps


@dataclass(frozen=True, kw_only=True)
class Dataset(Component):
    """A dataset: `load()(path, resolution, data_dir, split, options) -> (uint8 [N, C, H, W],
    labels [N] or None)`, at the run's resolution; `takes_path`: named `name:PATH`."""

    kind: ClassVar[str] = "dataset"
    takes_path: bool = False
