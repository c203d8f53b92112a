"""Typed, frozen run configuration: one dataclass per concern, validated at construction.

Every default lives here. `from_dict` builds any of these classes from plain data (TOML, JSON,
`--set` overrides), rejecting unknown keys and wrongly typed values with the key path named.
"""

import dataclasses
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Literal, TypeVar

from casdm.components import registry
from casdm.errors import InputError

if TYPE_CHECKING:
    from casdm.components import Component

C = TypeVar("C")


class ConfigError(InputError):
    """A configuration value that is unknown, of the wrong type or out of range."""

    def __init__(self, key: str, message: str):
        self.key = key
        super().__init__(f"{key}: {message}" if key else message)


def check(condition: bool, key: str, message: str) -> None:
    """Raise ConfigError for `key` unless `condition` holds."""
    if not condition:
        raise ConfigError(key, message)


class Choice:
    """A section that names a component of `kind` and holds that component's own options.

    Subclasses are frozen dataclasses (init=False) whose fields are the section's own settings,
    one of them the `selector` naming the component, plus `options`: an instance of the
    component's options type. The constructor takes the section's fields and the options'
    fields alike (`MetricConfig(name="lpips", weight=0.3, net="vgg")`); `from_dict` and
    `to_dict` read and write them flat in the section, as TOML and `--set` address them
    (`metric.net`). A key that is an option of another component of the same kind is checked
    against that component's type and then ignored, so one base configuration serves a grid
    over the component name (and configurations written before options were per component
    keep loading).
    """

    kind: ClassVar[str] = ""
    selector: ClassVar[str] = "name"

    def __init__(self, **kwargs: Any):
        own = {f.name for f in dataclasses.fields(self)} - {"options"}
        options = kwargs.pop("options", None)
        for f in dataclasses.fields(self):
            if f.name == "options":
                continue
            value = kwargs.pop(f.name) if f.name in kwargs else field_default(f)
            object.__setattr__(self, f.name, value)
        component = self.component
        if options is not None and not isinstance(options, component.options):
            # e.g. dataclasses.replace(section, name=other): keep the options both share.
            shared = {f.name for f in dataclasses.fields(component.options)}
            kept = {k: v for k, v in dataclasses.asdict(options).items() if k in shared}
            options = component.options(**{**kept, **kwargs})
        elif options is None:
            allowed = {f.name for f in dataclasses.fields(component.options) if f.init}
            for key in list(kwargs):
                if key in allowed:
                    continue
                check(
                    bool(option_types(type(self), key)),
                    key,
                    f"unknown key for {self.kind} {component.name!r}; allowed: "
                    f"{', '.join(sorted(own | allowed))}",
                )
                _check_foreign(type(self), key, kwargs.pop(key), key)  # checked, unused here
            options = component.options(**kwargs)
        elif kwargs:
            raise TypeError(f"pass options= or option keywords, not both: {sorted(kwargs)}")
        object.__setattr__(self, "options", options)
        self.__post_init__()

    def __post_init__(self) -> None:
        """The section's own checks (subclasses)."""

    def __getattr__(self, name: str) -> Any:
        """An option of the chosen component reads like a field: `config.metric.net`."""
        if name.startswith("__") or name == "options":
            raise AttributeError(name)
        options = self.__dict__.get("options")
        if options is not None and name in {f.name for f in dataclasses.fields(options)}:
            return getattr(options, name)
        raise AttributeError(
            f"{type(self).__name__} has no attribute {name!r} ({self.kind} "
            f"{self.component_name!r} takes options: "
            f"{', '.join(f.name for f in dataclasses.fields(options)) or 'none'})"
        )

    @classmethod
    def name_of(cls, value: str) -> str:
        """The registry name the selector's `value` names (itself, but for datasets)."""
        return value

    @classmethod
    def find(cls, value: str) -> "Component":
        """The component the selector's `value` names; ConfigError listing the valid ones."""
        try:
            return registry(cls.kind).get(cls.name_of(value))
        except InputError as err:
            raise ConfigError(cls.selector, str(err)) from None

    @property
    def component_name(self) -> str:
        """The registry name of the chosen component."""
        return self.name_of(getattr(self, self.selector))

    @property
    def component(self) -> "Component":
        """The chosen component."""
        return self.find(getattr(self, self.selector))

    @property
    def label(self) -> str:
        """The component's human label for these options (tables, captions, logs)."""
        return self.component.label(self.options)

    @classmethod
    def from_plain(cls, data: dict[str, Any], prefix: str) -> "Choice":
        """The section from flat plain data (see the class docstring); keys named by path."""
        hints = typing.get_type_hints(cls)
        own = [f.name for f in dataclasses.fields(cls) if f.name != "options"]
        fields = {k: _coerce(v, hints[k], _path(prefix, k)) for k, v in data.items() if k in own}
        value = fields.get(cls.selector, field_default(_field(cls, cls.selector)))
        component = from_dict_checked(cls, prefix, lambda: cls.find(value))
        mine = typing.get_type_hints(component.options)
        # The chosen component's options are coerced here; any other key goes to the
        # constructor, which checks another component's option and refuses an unknown key.
        options = {
            k: _coerce(v, mine[k], _path(prefix, k)) if k in mine else v
            for k, v in data.items()
            if k not in own
        }
        return from_dict_checked(cls, prefix, lambda: cls(**fields, **options))


def _path(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix else key


def _field(cls: type, name: str) -> dataclasses.Field:
    return next(f for f in dataclasses.fields(cls) if f.name == name)


def field_default(f: dataclasses.Field) -> Any:
    """A dataclass field's default value (TypeError if it has none)."""
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    raise TypeError(f"missing value for {f.name}")


def option_takers(cls: type[Choice], key: str) -> list["Component"]:
    """The registered components of `cls`'s kind that take the option `key` (may be [])."""
    kind = registry(cls.kind)
    components = [kind.get(name) for name in kind.names()]
    return [c for c in components if key in typing.get_type_hints(c.options)]


def option_types(cls: type[Choice], key: str) -> list[Any]:
    """The types the components of `cls`'s kind that take option `key` give it (may be [])."""
    return [typing.get_type_hints(c.options)[key] for c in option_takers(cls, key)]


def _check_foreign(cls: type[Choice], key: str, value: Any, path: str) -> None:
    """Check `value` as option `key` of the components of `cls`'s kind that take it (type and
    range, the other options at their defaults): ConfigError at `path` if none accepts it."""
    error = None
    for component in option_takers(cls, key):
        try:
            from_dict(component.options, {key: value}, "")
            return
        except ConfigError as err:
            error = error or err
    if error is not None:
        raise ConfigError(path, str(error).split(": ", 1)[-1])


@dataclass(frozen=True, init=False)
class DataConfig(Choice):
    """Which images to train on: a dataset name, `name:PATH` for those that take a path
    (`folder:PATH`, `npz:PATH`), and the dataset's options."""

    kind: ClassVar[str] = "dataset"
    selector: ClassVar[str] = "dataset"
    dataset: str = "digits"
    resolution: int = 16
    data_dir: str = "data"  # where downloadable datasets (cifar10) are stored
    options: Any = None

    def __post_init__(self):
        check(self.resolution >= 8, "resolution", f"must be >= 8, got {self.resolution}")
        name, takes_path = self.component_name, self.component.takes_path
        check(
            bool(self.path) or not takes_path,
            "dataset",
            f"dataset {self.dataset!r} needs a path: write '{name}:PATH'",
        )
        check(
            ":" not in self.dataset or takes_path,
            "dataset",
            f"dataset {name!r} takes no path, got {self.dataset!r}; write {name!r}",
        )

    @classmethod
    def name_of(cls, value: str) -> str:
        return value.partition(":")[0]

    @classmethod
    def find(cls, value: str) -> "Component":
        try:
            return super().find(value)
        except ConfigError as err:
            kinds = registry(cls.kind)
            forms = [f"'{n}:PATH'" for n in kinds.names() if kinds.get(n).takes_path]
            raise ConfigError(
                "dataset",
                f"{str(err).split(': ', 1)[-1]}; datasets that take a path are written "
                f"{', '.join(forms)}",
            ) from None

    @property
    def path(self) -> str | None:
        """The path after `name:` (folder:PATH, npz:PATH), or None."""
        return self.dataset.partition(":")[2] or None


@dataclass(frozen=True)
class ModelConfig:
    """The UNet shared by every architecture (DDPM/ADM style)."""

    base_channels: int = 32
    channel_mults: tuple[int, ...] = (1, 2)
    num_res_blocks: int = 1
    attention_resolutions: tuple[int, ...] = (8,)
    num_heads: int = 1
    dropout: float = 0.0

    def __post_init__(self):
        check(self.base_channels >= 8, "base_channels", "must be >= 8")
        check(self.base_channels % 8 == 0, "base_channels", "must be a multiple of 8 (GroupNorm)")
        check(len(self.channel_mults) >= 1, "channel_mults", "needs at least one level")
        check(all(m >= 1 for m in self.channel_mults), "channel_mults", "must all be >= 1")
        check(self.num_res_blocks >= 1, "num_res_blocks", "must be >= 1")
        check(self.num_heads >= 1, "num_heads", "must be >= 1")
        check(0.0 <= self.dropout < 1.0, "dropout", f"must be in [0, 1), got {self.dropout}")

    def check_resolution(self, resolution: int) -> None:
        """ConfigError (keys of a whole run: "data.resolution", "model.*") unless this UNet can
        take square images of side `resolution`."""
        levels = len(self.channel_mults)
        if resolution % 2 ** (levels - 1):
            raise ConfigError(
                "data.resolution",
                f"got {resolution}; a UNet with {levels} levels (model.channel_mults = "
                f"{list(self.channel_mults)}) needs a resolution divisible by {2 ** (levels - 1)}",
            )
        sides = [resolution // 2**i for i in range(levels)]
        for side in self.attention_resolutions:
            if side not in sides:
                raise ConfigError(
                    "model.attention_resolutions",
                    f"{side} is not a feature-map side of this UNet; at resolution {resolution} "
                    f"its sides are {', '.join(map(str, sides))}",
                )
        for mult in {*self.channel_mults}:
            if (self.base_channels * mult) % self.num_heads:
                raise ConfigError(
                    "model.num_heads",
                    f"got {self.num_heads}; it must divide every level's width "
                    f"(model.base_channels x model.channel_mults = {self.base_channels * mult})",
                )


@dataclass(frozen=True, init=False)
class ArchitectureConfig(Choice):
    """An architecture name and that architecture's options (casdm.specs.architectures)."""

    kind: ClassVar[str] = "architecture"
    name: str = "cas-dm"
    options: Any = None


@dataclass(frozen=True, init=False)
class DiffusionConfig(Choice):
    """The noise schedule: a schedule name, its options (casdm.specs.schedules) and the number
    of steps T."""

    kind: ClassVar[str] = "schedule"
    selector: ClassVar[str] = "schedule"
    schedule: str = "linear"
    timesteps: int = 1000
    options: Any = None

    def __post_init__(self):
        check(self.timesteps >= 2, "timesteps", f"must be >= 2, got {self.timesteps}")


@dataclass(frozen=True, init=False)
class MetricConfig(Choice):
    """A metric loss name, its weight in the training loss, and that loss's options
    (casdm.specs.metrics: e.g. lpips takes net, trunk, min_size)."""

    kind: ClassVar[str] = "metric"
    name: str = "none"
    weight: float = 1.0
    options: Any = None

    def __post_init__(self):
        check(self.weight >= 0, "weight", f"must be >= 0, got {self.weight}")


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation: AdamW, warmup, clipping, EMA, checkpoints, and speed options."""

    steps: int = 2000
    batch_size: int = 64
    lr: float = 2e-4
    weight_decay: float = 0.0
    warmup_steps: int = 100
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    log_every: int = 50
    checkpoint_every: int = 500
    compile: bool = False
    # Speed options (casdm.train.Performance). "auto" picks per device: on CUDA bf16 autocast,
    # channels_last and fused AdamW; elsewhere fp32, the default layout and the foreach AdamW,
    # as before these options existed (CPU results stay bit-identical; options are opt-in).
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"  # fp16 adds a loss scaler
    channels_last: Literal["auto", "on", "off"] = "auto"
    fused_adamw: Literal["auto", "on", "off"] = "auto"
    tf32: bool = True  # CUDA only: TF32 tensor cores for float32 matmuls and convolutions

    def __post_init__(self):
        check(self.steps >= 1, "steps", f"must be >= 1, got {self.steps}")
        check(self.batch_size >= 1, "batch_size", f"must be >= 1, got {self.batch_size}")
        check(self.lr > 0, "lr", f"must be > 0, got {self.lr}")
        check(self.weight_decay >= 0, "weight_decay", "must be >= 0")
        check(self.warmup_steps >= 0, "warmup_steps", "must be >= 0")
        check(self.grad_clip > 0, "grad_clip", f"must be > 0, got {self.grad_clip}")
        check(0.0 <= self.ema_decay < 1.0, "ema_decay", f"must be in [0, 1), got {self.ema_decay}")
        check(self.log_every >= 1, "log_every", "must be >= 1")
        check(self.checkpoint_every >= 1, "checkpoint_every", "must be >= 1")


@dataclass(frozen=True, init=False)
class SampleConfig(Choice):
    """Sampling: a sampler name and its options (casdm.specs.samplers: ddim takes eta), the
    number of steps, x0 clipping, and how many images in batches of what size."""

    kind: ClassVar[str] = "sampler"
    selector: ClassVar[str] = "sampler"
    sampler: str = "ddim"
    steps: int = 50
    # Clip the predicted x0 to [-1, 1] at every step (DDPM, ADM's clip_denoised, diffusers'
    # clip_sample); false uses the model's x0 as predicted.
    clip_x0: bool = True
    num_samples: int = 500
    batch_size: int = 250
    options: Any = None

    def __post_init__(self):
        check(self.steps >= 1, "steps", f"must be >= 1, got {self.steps}")
        check(self.num_samples >= 1, "num_samples", "must be >= 1")
        check(self.batch_size >= 1, "batch_size", "must be >= 1")


def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if typing.get_origin(tp) is tuple:
        return f"a list of {_type_name(typing.get_args(tp)[0])}"
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check `value` against the annotation `tp`, converting lists to tuples and ints to floats."""
    origin = typing.get_origin(tp)
    if origin is Literal:
        check(value in typing.get_args(tp), key, f"got {value!r}; allowed: {_type_name(tp)}")
        return value
    if origin is tuple:
        check(isinstance(value, list | tuple), key, f"got {value!r}; expected {_type_name(tp)}")
        (item,) = {a for a in typing.get_args(tp) if a is not Ellipsis}
        return tuple(_coerce(v, item, f"{key}[{i}]") for i, v in enumerate(value))
    if origin in (types.UnionType, typing.Union):
        for option in typing.get_args(tp):
            try:
                return _coerce(value, option, key)
            except ConfigError:
                continue
        expected = " or ".join(map(_type_name, typing.get_args(tp)))
        raise ConfigError(key, f"got {value!r}; expected {expected}")
    if tp is type(None):
        check(value is None, key, f"got {value!r}; expected none")
        return value
    if tp is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        check(ok, key, f"got {value!r}; expected a number")
        return float(value)
    if tp is int or tp is str or tp is bool:
        ok = isinstance(value, tp) and not (tp is int and isinstance(value, bool))
        check(ok, key, f"got {value!r} ({type(value).__name__}); expected {tp.__name__}")
        return value
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, key)
    raise TypeError(f"unsupported config annotation {tp!r} at {key}")


def from_dict(cls: type[C], data: Any, prefix: str = "") -> C:
    """Build the dataclass `cls` from nested plain data, naming the key path of any bad value."""
    check(isinstance(data, dict), prefix, f"expected a table of keys, got {data!r}")
    if issubclass(cls, Choice):
        return cls.from_plain(data, prefix)
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls) if f.init]
    kwargs = {}
    for key, value in data.items():
        path = _path(prefix, key)
        check(key in names, path, f"unknown key; allowed: {', '.join(names)}")
        kwargs[key] = _coerce(value, hints[key], path)
    return from_dict_checked(cls, prefix, lambda: cls(**kwargs))


def from_dict_checked(cls: type[C], prefix: str, build: Callable[[], C]) -> C:
    """`build()`, with the key of a ConfigError it raises prefixed by `prefix`."""
    try:
        return build()
    except ConfigError as err:
        path = f"{prefix}.{err.key}" if prefix and err.key else (prefix or err.key)
        raise ConfigError(path, str(err).split(": ", 1)[-1]) from None


def to_dict(config: Any) -> dict[str, Any]:
    """Plain nested dict of a config (tuples become lists; a Choice's options flat in its
    section), ready for JSON or TOML."""
    out = {}
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if f.name == "options" and isinstance(config, Choice):
            out.update(to_dict(value))
        elif dataclasses.is_dataclass(value):
            out[f.name] = to_dict(value)
        else:
            out[f.name] = _plain(value)
    return out


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """`{"a": {"b": 1}}` -> `{"a.b": 1}`, for logging parameters and for `--set` keys."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        path = f"{prefix}.{key}" if prefix else key
        if isinstance(value, dict):
            out.update(flatten(value, path))
        else:
            out[path] = value
    return out


def unflatten(data: dict[str, Any]) -> dict[str, Any]:
    """`{"a.b": 1}` -> `{"a": {"b": 1}}`, the inverse of `flatten`."""
    out: dict[str, Any] = {}
    for path, value in data.items():
        node = out
        *parents, leaf = path.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return out


def merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Recursively merge nested dicts; values in `override` win."""
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


__all__ = [
    "ArchitectureConfig",
    "Choice",
    "ConfigError",
    "DataConfig",
    "DiffusionConfig",
    "MetricConfig",
    "ModelConfig",
    "SampleConfig",
    "TrainConfig",
    "check",
    "field_default",
    "flatten",
    "from_dict",
    "merge",
    "option_takers",
    "to_dict",
    "unflatten",
]
