"""Typed, frozen run configuration: one dataclass per concern, validated at construction.

Every default lives here. `from_dict` builds any of these classes from plain data (TOML, JSON,
`--set` overrides), rejecting unknown keys and wrongly typed values with the key path named.
"""

import dataclasses
import types
import typing
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from casdm.errors import InputError

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


@dataclass(frozen=True)
class DataConfig:
    """Which images to train on: `digits`, `cifar10`, `folder:PATH` or `npz:PATH` (DATASETS)."""

    dataset: str = "digits"
    resolution: int = 16
    data_dir: str = "data"  # where downloadable datasets (cifar10) are stored

    def __post_init__(self):
        check(self.resolution >= 8, "resolution", f"must be >= 8, got {self.resolution}")


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


@dataclass(frozen=True)
class ArchitectureConfig:
    """An ARCHITECTURES name plus the Cas-DM / Dual options (explained in casdm/architectures)."""

    name: str = "cas-dm"
    # Cas-DM: what phi sees besides t: x0_star and x_t (default) or x0_star alone.
    phi_input: Literal["x0_star+x_t", "x0_star"] = "x0_star+x_t"
    # Cas-DM / Dual: the blending weight r is per pixel, per sample, or a fixed constant.
    r_mode: Literal["pixel", "sample", "fixed"] = "pixel"
    r_fixed: float = 0.5
    # Cas-DM sampling: theta's eps drives the DDIM direction, or the eps implied by x0_hat.
    sampling_eps: Literal["theta", "x0_hat"] = "theta"
    # Cas-DM: phi's base width relative to theta's.
    phi_width: float = 1.0
    # Cas-DM / Dual: weight of the x0 MSE term.
    lambda_x0: float = 1.0

    def __post_init__(self):
        check(0.0 <= self.r_fixed <= 1.0, "r_fixed", f"must be in [0, 1], got {self.r_fixed}")
        check(self.phi_width > 0, "phi_width", f"must be > 0, got {self.phi_width}")
        check(self.lambda_x0 >= 0, "lambda_x0", f"must be >= 0, got {self.lambda_x0}")


@dataclass(frozen=True)
class DiffusionConfig:
    """The noise schedule: a SCHEDULES name and the number of steps T."""

    schedule: str = "linear"
    timesteps: int = 1000

    def __post_init__(self):
        check(self.timesteps >= 2, "timesteps", f"must be >= 2, got {self.timesteps}")
        # Ho et al.'s betas scale as 1000/T and reach 1 (destroying the signal) at T <= 20.
        check(
            self.schedule != "linear" or self.timesteps > 20,
            "timesteps",
            f"must be > 20 for the linear schedule, got {self.timesteps}",
        )


@dataclass(frozen=True)
class MetricConfig:
    """A METRICS name, its loss weight and the options of the metrics that take any.

    Options apply to the metrics named in their comment; the others ignore them (so one base
    config can serve a grid over metric.name), but every value is validated.
    """

    name: str = "none"  # none, l2, l1, pseudo-huber, ssim, ms-ssim, lpips
    weight: float = 1.0
    # lpips: the trunk network.
    net: Literal["alex", "vgg", "squeeze"] = "alex"
    # lpips: `pretrained`: ImageNet trunk (downloaded once); `random`: untrained, tests/smoke only.
    trunk: Literal["pretrained", "random"] = "pretrained"
    # lpips, ms-ssim: images whose shorter side is below this are upsampled bilinearly first
    # (0 disables).
    min_size: int = 64
    # ssim, ms-ssim: side and standard deviation of the Gaussian window (Wang et al.: 11, 1.5).
    win_size: int = 11
    win_sigma: float = 1.5
    # pseudo-huber: c in sqrt(||x - y||^2 + c^2) - c; unset: 0.00054 * sqrt(C * H * W).
    pseudo_huber_c: float | None = None

    def __post_init__(self):
        check(self.weight >= 0, "weight", f"must be >= 0, got {self.weight}")
        check(self.min_size >= 0, "min_size", f"must be >= 0, got {self.min_size}")
        check(
            self.win_size >= 3 and self.win_size % 2 == 1,
            "win_size",
            f"must be an odd number >= 3 (ssim, ms-ssim Gaussian window), got {self.win_size}",
        )
        check(self.win_sigma > 0, "win_sigma", f"must be > 0, got {self.win_sigma}")
        check(
            self.pseudo_huber_c is None or self.pseudo_huber_c > 0,
            "pseudo_huber_c",
            f"must be > 0 (or left unset for 0.00054 * sqrt(C * H * W)), got {self.pseudo_huber_c}",
        )

    @property
    def label(self) -> str:
        """Short human label, naming a random LPIPS trunk wherever it is shown."""
        if self.name != "lpips":
            return self.name
        return f"lpips-{self.net}" + ("(random-trunk)" if self.trunk == "random" else "")


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


@dataclass(frozen=True)
class SampleConfig:
    """Sampling: a SAMPLERS name, number of steps, DDIM's eta, how many images."""

    sampler: str = "ddim"
    steps: int = 50
    eta: float = 0.0
    # Clip the predicted x0 to [-1, 1] at every step (DDPM, ADM's clip_denoised, diffusers'
    # clip_sample); false uses the model's x0 as predicted.
    clip_x0: bool = True
    num_samples: int = 500
    batch_size: int = 250

    def __post_init__(self):
        check(self.steps >= 1, "steps", f"must be >= 1, got {self.steps}")
        check(0 <= self.eta <= 1, "eta", f"must be in [0, 1], got {self.eta}")
        check(self.sampler == "ddim" or self.eta == 0, "eta", "only the ddim sampler takes eta")
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
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls) if f.init]
    kwargs = {}
    for key, value in data.items():
        path = f"{prefix}.{key}" if prefix else key
        check(key in names, path, f"unknown key; allowed: {', '.join(names)}")
        kwargs[key] = _coerce(value, hints[key], path)
    try:
        return cls(**kwargs)
    except ConfigError as err:
        path = f"{prefix}.{err.key}" if prefix and err.key else (prefix or err.key)
        raise ConfigError(path, str(err).split(": ", 1)[-1]) from None


def to_dict(config: Any) -> dict[str, Any]:
    """Plain nested dict of a config (tuples become lists), ready for JSON or TOML."""
    return _plain(dataclasses.asdict(config))


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
    "ConfigError",
    "DataConfig",
    "DiffusionConfig",
    "MetricConfig",
    "ModelConfig",
    "SampleConfig",
    "TrainConfig",
    "check",
    "flatten",
    "from_dict",
    "merge",
    "to_dict",
    "unflatten",
]
