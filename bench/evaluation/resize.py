"""clean-fid's "clean" resize (PIL bicubic on float32 channels, no re-quantization), batched.

PIL resamples an image in two linear passes, horizontal then vertical, each rounding to float32
in mode "F". So the resize of an [H, W] channel is `Wh @ X @ Ww^T` with fixed matrices, which are
read off PIL itself by resizing basis images. Applied to a whole batch with two float32 matmuls,
this equals clean-fid's per-image, per-channel loop
(`cleanfid.resize.make_resizer("PIL", False, "bicubic", size)`) to float32 rounding (a few ulp:
PIL keeps its coefficients in float64, the basis images give them rounded to float32).
"""

import functools

import numpy as np
import torch
from PIL import Image


@functools.lru_cache(maxsize=32)
def _pil_matrix(n_in: int, n_out: int) -> np.ndarray:
    """[n_out, n_in] matrix of PIL's bicubic 1-D resize from n_in to n_out samples."""
    basis = np.eye(n_in, dtype=np.float32)  # row i is e_i; resizing the rows resizes each e_i
    resized = Image.fromarray(basis, mode="F").resize((n_out, n_in), resample=Image.BICUBIC)
    return np.ascontiguousarray(np.asarray(resized, dtype=np.float32).T)


def resize_matrix(n_in: int, n_out: int, device: torch.device) -> torch.Tensor:
    """PIL bicubic resize matrix [n_out, n_in] in float32 on `device`."""
    return torch.from_numpy(_pil_matrix(n_in, n_out)).to(device)


def clean_resize(images: torch.Tensor, size: int = 299) -> torch.Tensor:
    """Resize float images [B, C, H, W] in [0, 255] to [B, C, size, size], clipped to [0, 255]."""
    _, _, height, width = images.shape
    w_h = resize_matrix(height, size, images.device)  # [size, H]
    w_w = resize_matrix(width, size, images.device)  # [size, W]
    rows = images.float() @ w_w.T  # [B, C, H, size]: PIL's horizontal pass
    return (w_h @ rows).clamp_(0.0, 255.0)  # [B, C, size, size]: PIL's vertical pass
