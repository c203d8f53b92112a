"""Every name a RunConfig may use, and where its implementation lives (imported on first use).

Checking a config's names (`bench list`, study validation) needs only this module, not torch:
the registries below are `Registry` objects whose values load when a model is built.
"""

from casdm.errors import DataError
from casdm.registry import Registry, UnknownNameError, check_name

ARCHITECTURES = Registry(
    {
        "ddpm": "casdm.architectures:EpsDDPM",
        "x0-ddpm": "casdm.architectures:X0DDPM",
        "cas-dm": "casdm.architectures:CasDM",
        "dual": "casdm.architectures:DualOutput",
    }
)
METRICS = Registry(
    {
        "none": "casdm.metrics.base:NoMetric",
        "l2": "casdm.metrics.pixel:L2Metric",
        "l1": "casdm.metrics.pixel:L1Metric",
        "pseudo-huber": "casdm.metrics.pixel:PseudoHuberMetric",
        "ssim": "casdm.metrics.structural:SSIMMetric",
        "ms-ssim": "casdm.metrics.structural:MSSSIMMetric",
        "lpips": "casdm.metrics.perceptual:LPIPSMetric",
    }
)
SAMPLERS = Registry({"ddpm": "casdm.samplers:ddpm", "ddim": "casdm.samplers:ddim"})
SCHEDULES = Registry(
    {"linear": "casdm.schedule:linear_betas", "cosine": "casdm.schedule:cosine_betas"}
)
DATASETS = Registry(
    {
        "digits": "casdm.data:_digits",
        "cifar10": "casdm.data:_cifar10",
        "folder": "casdm.data:_folder",
        "npz": "casdm.data:_npz",
    }
)
# The DATASETS kinds that take a path: `folder:PATH`, `npz:PATH`.
PATH_KINDS = ("folder", "npz")

# LPIPS: the torchvision trunk each `metric.net` loads, and the smallest image side it accepts.
LPIPS_TRUNKS = {"alex": "alexnet", "vgg": "vgg16", "squeeze": "squeezenet"}
LPIPS_MIN_SIDE = {"alex": 31, "vgg": 16, "squeeze": 17}


def parse_dataset(spec: str) -> tuple[str, str | None]:
    """Split a dataset name into its DATASETS kind and path: `folder:PATH` -> ("folder", "PATH")."""
    kind, sep, path = spec.partition(":")
    try:
        check_name(DATASETS, kind, "dataset")
    except UnknownNameError as err:
        raise UnknownNameError(
            f"{err} (folder and npz take a path: 'folder:PATH' for a folder of images, "
            "'npz:PATH' for an ADM-style .npz file)"
        ) from None
    if kind in PATH_KINDS and not path:
        raise DataError(f"dataset {spec!r} needs a path: write '{kind}:PATH'")
    if kind not in PATH_KINDS and sep:
        raise DataError(f"dataset {kind!r} takes no path, got {spec!r}; write {kind!r}")
    return kind, path or None
