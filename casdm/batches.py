"""Where the training images live, and how a batch of them reaches the model.

A dataset is one tensor: uint8 pixels (every dataset's `ImageSet.pixels`) or float images in
[-1, 1]. When it fits, it moves to the training device once and a batch is one indexing
operation there: no loader, no copy per step. A dataset too large for the device (more than
DEVICE_SHARE of its free memory) stays in host memory: each step brings the drawn indices to the
host, gathers those rows there into pinned memory and copies them over asynchronously. Either
way a batch holds the same rows and is mapped to [-1, 1] on the device by `from_uint8`, so the
run is the same bit for bit; the indices themselves are drawn on the device, as before.
"""

import torch

from casdm.data import from_uint8

# The training images may take at most this share of the device's free memory; the rest is for
# the model, its optimizer state, activations and the evaluator.
DEVICE_SHARE = 0.25


def fits_on(device: torch.device, nbytes: int) -> bool:
    """Whether `nbytes` of training images belong on `device` (always, when it is the host)."""
    if device.type != "cuda":
        return True
    free, _ = torch.cuda.mem_get_info(device)
    return nbytes <= DEVICE_SHARE * free


class TrainingImages:
    """A dataset [N, C, H, W] held for training on `device`; `on_device` None: `fits_on`."""

    def __init__(self, images: torch.Tensor, device: torch.device, on_device: bool | None = None):
        self.device = device
        self.on_device = fits_on(device, images.nbytes) if on_device is None else on_device
        self.images = images.to(device if self.on_device else torch.device("cpu"))

    @property
    def shape(self) -> torch.Size:
        return self.images.shape

    def __len__(self) -> int:
        return len(self.images)

    def batch(self, indices: torch.Tensor) -> torch.Tensor:
        """Rows `indices` (on the device) as float images in [-1, 1] on the device."""
        if self.on_device:
            rows = self.images[indices]
        else:
            rows = self.images[indices.cpu()]  # waits for the indices, drawn on the device
            if self.device.type == "cuda":
                rows = rows.pin_memory()
            rows = rows.to(self.device, non_blocking=True)
        return from_uint8(rows) if rows.dtype == torch.uint8 else rows
