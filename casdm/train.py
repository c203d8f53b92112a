"""Training: one plain function, `train(...)`, that resumes exactly from its own checkpoints.

AdamW with linear warmup, grad-norm clipping, an EMA of the weights, and speed options chosen
per device (`Performance`: autocast precision with a loss scaler for fp16, channels_last,
fused AdamW, TF32; optional torch.compile). All randomness is explicit: one generator (seeded
from `seed`) draws the batch indices, t and the noise; the global torch RNG (dropout) is seeded
from `seed` too. Both states are checkpointed, so a run stopped and resumed ends bitwise where
an uninterrupted run ends (on the CPU; CUDA kernels need not be deterministic).

Under torchrun (casdm.distributed initialised, W processes) cfg.batch_size is the global batch:
every rank draws the same indices, t and noise from the shared generator and trains on its own
1/W slice, and DistributedDataParallel averages the gradients, so each update equals the
single-process update on the whole batch (to float rounding, with dropout 0: dropout draws
from each rank's own stream, seeded by `rank_seed`). Clipping, AdamW and the EMA then run on
identical gradients, keeping every rank's weights identical. Only rank 0 writes checkpoints
and calls the callback; every rank resumes from the checkpoint.

Gradient clipping is per parameter group (`parameter_groups`): an architecture with separate
networks (Cas-DM's theta and phi) has each clipped on its own gradient norm, so that no
network's gradient rescales another's step. Everything else is per parameter already: AdamW
(one lr and weight decay for all), the EMA, and DDP's gradient averaging (buckets are summed
element by element). With theta's dropout drawn first in each forward (casdm.architectures),
Cas-DM's theta and its EMA end bitwise the same whatever the metric.
"""

import contextlib
import copy
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from casdm import distributed, faults
from casdm.batches import DEVICE_SHARE, TrainingImages
from casdm.checkpoint import CheckpointError, load_latest, save_checkpoint
from casdm.config import ConfigError, TrainConfig


@dataclass
class TrainResult:
    """What `train` returns: the trained model, its EMA (same class), and how the run went."""

    model: nn.Module
    ema: nn.Module
    step: int
    wall_s: float
    images_per_s: float
    history: list[dict[str, float]] = field(default_factory=list)
    resumed_from: int | None = None
    notices: list[str] = field(default_factory=list)  # checkpoints found unreadable, fallbacks
    performance: "Performance | None" = None  # the speed options the run used


PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class Performance:
    """The speed options `train` uses on a device, TrainConfig's "auto" values resolved.

    On CUDA: bf16 autocast (fp32 weights, optimizer and EMA), channels_last, fused AdamW and
    TF32. Elsewhere: fp32, the default layout and the foreach AdamW, so CPU runs stay
    bit-identical to runs made before these options existed; on a CPU each option is opt-in
    (whether bf16 pays off depends on the CPU's bf16 support: `bench perf --only options`).
    fp16 autocast adds a dynamic loss scaler (torch.amp.GradScaler): gradients are unscaled
    before clipping, and a step whose gradients overflowed is skipped, as GradScaler does.
    """

    precision: str  # "fp32", "bf16" or "fp16"
    channels_last: bool
    fused_adamw: bool
    tf32: bool  # CUDA only

    @classmethod
    def resolve(cls, cfg: TrainConfig, device: torch.device) -> "Performance":
        cuda = device.type == "cuda"

        def pick(value: str) -> bool:
            return cuda if value == "auto" else value == "on"

        precision = cfg.precision if cfg.precision != "auto" else ("bf16" if cuda else "fp32")
        return cls(precision, pick(cfg.channels_last), pick(cfg.fused_adamw), cuda and cfg.tf32)

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        return PRECISIONS[self.precision]

    @property
    def loss_scaling(self) -> bool:
        return self.precision == "fp16"


@contextlib.contextmanager
def _tf32(enabled: bool) -> Iterator[None]:
    """TF32 for CUDA float32 matmuls and cuDNN convolutions while training; restored after."""
    if not enabled:
        yield
        return
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def learning_rate(cfg: TrainConfig, step: int) -> float:
    """The rate of update number step + 1: linear warmup over warmup_steps, then constant.

    A function of the step alone, so a resumed run (even with more total steps) agrees with an
    uninterrupted one.
    """
    if cfg.warmup_steps == 0:
        return cfg.lr
    return cfg.lr * min(1.0, (step + 1) / cfg.warmup_steps)


@torch.no_grad()
def ema_update(ema: nn.Module, model: nn.Module, decay: float) -> None:
    """ema <- decay * ema + (1 - decay) * model for every parameter; buffers are copied.

    A fused `torch._foreach_lerp_` over a deep copy of the model, rather than
    torch.optim.swa_utils.AveragedModel: the EMA stays an instance of the model's own class
    (callable as `ema(x_t, t)`, with `.schedule`), and its state dict has the model's keys, so
    it loads straight into a freshly built model for sampling.
    """
    torch._foreach_lerp_(list(ema.parameters()), list(model.parameters()), 1.0 - decay)
    for ema_buffer, buffer in zip(ema.buffers(), model.buffers(), strict=True):
        ema_buffer.copy_(buffer)


class _Loss(nn.Module):
    """`model.loss` as a forward pass, the call DistributedDataParallel hooks into."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(
        self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor, metric: nn.Module
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return self.model.loss(x0, t, noise, metric)


def parameter_groups(model: nn.Module) -> dict[str, list[nn.Parameter]]:
    """The model's gradient-clipping groups: `model.parameter_groups()` if it declares them,
    else one group "model" of every parameter. The groups must hold each trainable parameter
    exactly once."""
    declare = getattr(model, "parameter_groups", None)
    groups = {"model": list(model.parameters())} if declare is None else dict(declare())
    grouped = [id(p) for params in groups.values() for p in params]
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    if len(grouped) != len(set(grouped)) or not trainable <= set(grouped):
        raise ValueError(
            f"{type(model).__name__}.parameter_groups() must list every trainable parameter "
            f"exactly once (groups: {', '.join(groups)})"
        )
    return groups


def clip_gradients(
    groups: dict[str, list[nn.Parameter]], max_norm: float
) -> dict[str, torch.Tensor]:
    """Clip each group's gradients to `max_norm` on the group's own L2 norm.

    Returns {"grad_norm": the norm over all groups together (before clipping), and, with
    several groups, "grad_norm/<group>": each group's norm before clipping}.
    """
    norms = {name: nn.utils.clip_grad_norm_(params, max_norm) for name, params in groups.items()}
    if len(norms) == 1:
        return {"grad_norm": next(iter(norms.values()))}
    total = torch.stack(list(norms.values())).square().sum().sqrt()
    return {"grad_norm": total, **{f"grad_norm/{name}": norm for name, norm in norms.items()}}


def _rng_state(device: torch.device) -> dict[str, torch.Tensor]:
    """The global RNG states of this process (CPU, and its GPU on CUDA): dropout draws there."""
    state = {"torch_rng": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda_rng"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    """Restore what `_rng_state` returned."""
    torch.set_rng_state(state["torch_rng"])
    if device.type == "cuda" and "cuda_rng" in state:
        torch.cuda.set_rng_state(state["cuda_rng"], device)


def _first_line(err: BaseException) -> str:
    lines = str(err).strip().splitlines()
    return lines[0] if lines else type(err).__name__


def _resume(
    path: Path,
    state: dict[str, Any],
    *,
    seed: int,
    steps: int,
    modules: dict[str, Any],
    generator: torch.Generator,
    device: torch.device,
) -> int:
    """Restore every state `_checkpoint_state` saved; return the step the run continues from.

    Under W processes each rank takes its own global RNG state back from "rank_rng" when the
    checkpoint was written by W processes too; otherwise rank 0 takes the saved one and the
    others reseed (the run continues correctly, its dropout masks differ from an uninterrupted
    run's).
    """
    remedy = f"delete {path} to retrain from step 0"
    try:
        step, saved_seed = int(state["step"]), int(state["seed"])
    except (KeyError, TypeError, ValueError) as err:
        raise CheckpointError(
            f"checkpoint {path} lacks its step or seed ({err}); {remedy}"
        ) from None
    if saved_seed != seed:
        raise CheckpointError(
            f"checkpoint {path} was written by a run with seed {saved_seed}, this run has seed "
            f"{seed}; use seed {saved_seed} to continue it, or {remedy}"
        )
    if step > steps:
        raise CheckpointError(
            f"checkpoint {path} is at step {step}, past train.steps={steps}; set train.steps "
            f">= {step} to continue it, or {remedy}"
        )
    try:
        for name, module in modules.items():
            module.load_state_dict(state[name])
        generator.set_state(state["generator"])
        rank, world = distributed.rank(), distributed.world_size()
        per_rank = state.get("rank_rng")
        if world > 1 and isinstance(per_rank, list) and len(per_rank) == world:
            _set_rng_state(per_rank[rank], device)
        elif rank == 0:
            _set_rng_state(state, device)
        else:
            torch.manual_seed(distributed.rank_seed(seed, rank, step))
    except (KeyError, RuntimeError, ValueError, TypeError) as err:
        raise CheckpointError(
            f"checkpoint {path} does not fit this run's model or device "
            f"({type(err).__name__}: {_first_line(err)}); {remedy}"
        ) from None
    return step


def _checkpoint_state(
    step: int,
    seed: int,
    modules: dict[str, Any],
    generator: torch.Generator,
    device: torch.device,
    config_json: str,
    rank_rng: list[dict[str, torch.Tensor]] | None = None,
) -> dict[str, Any]:
    """Everything needed to continue bitwise: weights, EMA, optimizer, step and RNG states
    (with W processes, every rank's global RNG states as "rank_rng", in rank order)."""
    state: dict[str, Any] = {name: module.state_dict() for name, module in modules.items()}
    state.update(
        step=step,
        seed=seed,
        generator=generator.get_state(),
        config=config_json,
        **_rng_state(device),
    )
    if rank_rng is not None:
        state["rank_rng"] = rank_rng
    return state


def train(
    model: nn.Module,
    metric: nn.Module,
    images: torch.Tensor,
    cfg: TrainConfig,
    *,
    seed: int,
    device: torch.device | str = "cpu",
    checkpoint_path: Path | None = None,
    config_json: str = "{}",
    callback: Callable[[dict[str, float]], None] | None = None,
    on_notice: Callable[[str], None] | None = None,
    on_device: bool | None = None,
) -> TrainResult:
    """Train `model` on `images` [N, C, H, W] with `model.loss(x0, t, noise, metric)`.

    `images` are uint8 pixels (a dataset's `ImageSet.pixels`: they stay uint8, a quarter of
    the memory, and each batch is mapped to [-1, 1] by `from_uint8` on the device, the same
    values as mapping them all first), or float images in [-1, 1]. They live on the device,
    or in host memory when they would take more than a quarter of its free memory
    (`casdm.batches`; `on_device` forces either; `on_notice` is told when they stay on the host).

    The EMA, optimizer and generator are created here; if `checkpoint_path` exists, all of them
    (and the model) are restored from it and training continues to cfg.steps. Checkpoints are
    written every cfg.checkpoint_every steps and at the end, the one before kept as a fallback:
    an unreadable checkpoint is moved aside and the previous one (or step 0) is used, and
    `on_notice` (default: warnings.warn) is told so. Every cfg.log_every steps and at
    the last, `callback` gets {step, loss, lr, grad_norm, images_per_s, <loss terms>}, plus
    grad_norm/<group> for a model with several parameter groups (`parameter_groups`): loss,
    the gradient norms (before clipping; grad_norm over all parameters together, as one norm
    would be) and the terms are means over the steps since the last record.
    A non-finite loss or gradient norm raises FloatingPointError before the update is applied.

    Distributed (see the module docstring): cfg.batch_size must be divisible by the number of
    processes; `images` is the whole dataset on every rank; records and images_per_s cover the
    global batch; `callback` runs on rank 0 only; all ranks return the same weights.
    """
    start = time.perf_counter()
    device = torch.device(device)
    if images.ndim != 4 or images.shape[0] == 0:
        raise ValueError(
            f"images must be a non-empty [N, C, H, W] tensor, got {tuple(images.shape)}"
        )
    perf = Performance.resolve(cfg, device)
    if perf.channels_last:  # 4-d weights (convolutions) to NHWC strides; the values are the same
        model.to(device, memory_format=torch.channels_last)
    model.to(device).train()
    metric.to(device).requires_grad_(False).eval()
    if {id(p) for p in metric.parameters()} & {id(p) for p in model.parameters()}:
        raise ValueError("the metric's parameters are part of the model; they must stay frozen")
    data = TrainingImages(images, device, on_device)
    if on_device is None and not data.on_device:
        (on_notice or _warn)(
            f"the training images ({data.images.nbytes / 2**30:.2f} GiB) need more than "
            f"{DEVICE_SHARE:.0%} of {device}'s free memory: they stay in host memory and each "
            "batch is copied over"
        )
    rank, W = distributed.rank(), distributed.world_size()
    if cfg.batch_size % W:
        raise ConfigError(
            "train.batch_size",
            f"is the global batch, split evenly over the {W} processes of this torchrun, so it "
            f"must be divisible by {W}; got {cfg.batch_size}: use a multiple of {W}",
        )

    # Dropout and anything else drawing from the global RNG: a stream of each rank's own.
    torch.manual_seed(distributed.rank_seed(seed, rank))
    generator = torch.Generator(device=device).manual_seed(seed)
    ema = copy.deepcopy(model).requires_grad_(False).eval()
    optimizer = torch.optim.AdamW(
        model.parameters(),
        lr=cfg.lr,
        weight_decay=cfg.weight_decay,
        fused=True if perf.fused_adamw else None,  # None: torch's default (foreach)
    )
    modules = {"model": model, "ema": ema, "optimizer": optimizer}
    scaler = torch.amp.GradScaler(device.type, enabled=perf.loss_scaling)

    step, resumed_from, notices = 0, None, []
    # Every rank reads the checkpoint; only rank 0 (its writer) moves an unreadable one aside.
    latest = None if checkpoint_path is None else load_latest(checkpoint_path, readonly=rank > 0)
    if latest is not None and rank == 0:
        notices = latest.notices
        for notice in notices:
            (on_notice or _warn)(notice)
    if latest is not None and latest.state is not None:
        step = resumed_from = _resume(
            latest.path,
            latest.state,
            seed=seed,
            steps=cfg.steps,
            modules=modules,
            generator=generator,
            device=device,
        )
        # A loss scale saved by an fp16 run; a run saved in another precision starts afresh.
        if scaler.is_enabled() and isinstance(latest.state.get("scaler"), dict):
            scaler.load_state_dict(latest.state["scaler"])

    loss_fn = distributed.data_parallel(_Loss(model), device)
    loss_fn = torch.compile(loss_fn) if cfg.compile else loss_fn
    autocast = torch.autocast(
        device.type,
        dtype=perf.autocast_dtype or torch.float32,
        enabled=perf.autocast_dtype is not None,
    )
    N, B, T = len(data), cfg.batch_size, model.schedule.T
    mine = slice(rank * B // W, (rank + 1) * B // W)  # this rank's part of the global batch
    groups = parameter_groups(model)
    history: list[dict[str, float]] = []
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}  # per key: a step the loss scaler skipped has no grad norms
    since_log, skipped, saving_s = 0, 0, 0.0
    loop_start = last_log = time.perf_counter()

    with _tf32(perf.tf32):
        while step < cfg.steps:
            lr = learning_rate(cfg, step)
            for group in optimizer.param_groups:
                group["lr"] = lr
            idx = torch.randint(N, (B,), generator=generator, device=device)
            t = torch.randint(T, (B,), generator=generator, device=device)
            noise = torch.randn((B, *data.shape[1:]), generator=generator, device=device)
            x0, eps = data.batch(idx[mine]), noise[mine]  # [B / W, C, H, W]
            if perf.channels_last:
                x0 = x0.contiguous(memory_format=torch.channels_last)
                eps = eps.contiguous(memory_format=torch.channels_last)
            with autocast:
                loss_per_sample, terms = loss_fn(x0, t[mine], eps, metric)  # [B / W], {name: []}
                loss = loss_per_sample.float().mean()
            if faults.inject("train.loss", step + 1) == "nan":
                loss = loss * torch.nan
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()  # the loss itself unless fp16 scales it
            if W > 1:  # the global batch's loss, equal on every rank, so all ranks raise together
                loss = distributed.all_reduce_sum(loss.detach()) / W
            scaler.unscale_(optimizer)  # clip the true gradients (no-op unless fp16)
            norms = clip_gradients(groups, cfg.grad_clip)
            grad_norm = norms["grad_norm"]
            finite = bool(torch.isfinite(loss) & torch.isfinite(grad_norm))  # one sync per step
            overflow = not finite and scaler.is_enabled() and bool(torch.isfinite(loss))
            if not finite and not overflow:
                raise FloatingPointError(
                    f"non-finite training loss {loss.item():.4g} (gradient norm "
                    f"{grad_norm.item():.4g}) at step {step + 1} of {cfg.steps}; the update was "
                    "not applied and no checkpoint was written: lower train.lr, raise "
                    "train.warmup_steps or check the data"
                )
            # optimizer.step(); with fp16, skipped when the gradients overflowed
            scaler.step(optimizer)
            scaler.update()
            skipped += overflow
            ema_update(ema, model, cfg.ema_decay)
            step += 1

            values = {"loss": loss, **terms} if overflow else {"loss": loss, **norms, **terms}
            for name, value in values.items():
                sums[name] = sums.get(name, 0) + value.detach().float()
                counts[name] = counts.get(name, 0) + 1
            since_log += 1
            if step % cfg.log_every == 0 or step == cfg.steps:
                if W > 1:  # the terms are means over this rank's slice; average them over ranks
                    local = [n for n in sums if n != "loss" and not n.startswith("grad_norm")]
                    if local:
                        reduced = distributed.all_reduce_sum(torch.stack([sums[n] for n in local]))
                        sums.update(zip(local, reduced / W, strict=True))
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                now = time.perf_counter()
                record = {"step": step, "lr": lr, "images_per_s": since_log * B / (now - last_log)}
                record.update({name: (total / counts[name]).item() for name, total in sums.items()})
                if scaler.is_enabled():
                    record.update(loss_scale=scaler.get_scale(), skipped_steps=skipped)
                history.append(record)
                if callback is not None and rank == 0:
                    callback(record)
                sums, counts, since_log, skipped = {}, {}, 0, 0
                last_log = time.perf_counter()
            if checkpoint_path is not None and (
                step % cfg.checkpoint_every == 0 or step == cfg.steps
            ):
                save_start = time.perf_counter()
                rank_rng = distributed.all_gather_object(_rng_state(device)) if W > 1 else None
                if rank == 0:
                    state = _checkpoint_state(
                        step, seed, modules, generator, device, config_json, rank_rng
                    )
                    if scaler.is_enabled():
                        state["scaler"] = scaler.state_dict()
                    save_checkpoint(Path(checkpoint_path), state, keep_previous=True)
                distributed.barrier()  # no rank goes on (or returns) before the file is complete
                saved = time.perf_counter() - save_start
                saving_s += saved
                last_log += saved  # keep checkpoint writes out of the logged throughput
            faults.inject("train.step", step)

    trained = step - (resumed_from or 0)
    loop_s = time.perf_counter() - loop_start - saving_s
    return TrainResult(
        model=model,
        ema=ema,
        step=step,
        wall_s=time.perf_counter() - start,
        images_per_s=trained * B / loop_s if trained else 0.0,
        history=history,
        resumed_from=resumed_from,
        notices=notices,
        performance=perf,
    )


def _warn(notice: str) -> None:
    warnings.warn(notice, stacklevel=3)
