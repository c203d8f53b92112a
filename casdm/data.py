"""Datasets (components of casdm.specs.datasets), image decoding and the ADM .npz layout.

Images reach models as float32 [N, C, H, W] in [-1, 1]. Every dataset is brought to uint8 at
the run's resolution (so real images are exactly what a saved sample could be) and kept so;
batches are mapped to [-1, 1] with `from_uint8` where they are used. Resizing is
guided-diffusion's `center_crop_arr` (box-halve while at least twice too large, PIL bicubic so
the short side fits, centre crop): one rule for all.

Splits (fixed, seeded with SPLIT_SEED through sklearn's `train_test_split`, indices kept in
their original order):
- digits: stratified by label, 20% test: 1,437 train and 360 test images of the 1,797.
- cifar10: the official 50,000 / 10,000 split.
- folder:PATH and npz:PATH have no official split: a seeded 90/10 permutation of the sorted file
  list (folder) or of the array's rows (npz); test holds ceil(N / 10) images.
"""

import contextlib
import functools
import http.client
import struct
import tarfile
import zipfile
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from casdm.components import Dataset
from casdm.config import DataConfig
from casdm.errors import DataError
from casdm.files import atomic_write

Split = Literal["train", "test"]

SPLIT_SEED = 0
IMAGE_EXTENSIONS = (".bmp", ".jpeg", ".jpg", ".pgm", ".png", ".ppm", ".tif", ".tiff", ".webp")
NPZ_LAYOUT = "key 'arr_0', dtype uint8, shape [N, H, W, C] with C = 1 or 3 (or [N, H, W])"
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"

_GRAY_MODES = {"1", "L", "LA", "La"}
# PIL modes with more than 8 bits per channel: converting them to L/RGB clips silently.
_DEEP_MODES = {"I", "I;16", "I;16B", "I;16L", "I;16N", "F"}
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)
_DOWNLOAD_ERRORS = (OSError, RuntimeError, http.client.HTTPException, tarfile.TarError)


@dataclass(frozen=True, eq=False)
class ImageSet:
    """One split of a dataset: pixels [N, C, H, W] uint8, labels [N] int64 or None.

    Held as uint8, a quarter of the float32 images' memory (training keeps them so on its
    device too, casdm.train). Shared through an in-process cache: do not modify the tensors
    in place.
    """

    pixels: Tensor
    labels: Tensor | None
    name: str
    split: str

    @property
    def images(self) -> Tensor:
        """[N, C, H, W] float32 in [-1, 1] (`from_uint8(pixels)`), a new tensor on each access."""
        return from_uint8(self.pixels)


# What a dataset loader returns: uint8 [N, res, res, C] images and int64 [N] labels (or None).
Loaded = tuple[np.ndarray, np.ndarray | None]
# A dataset loader: (path, resolution, data_dir, split, options) -> Loaded.
Loader = Callable[[Path | None, int, Path, Split, Any], Loaded]


def from_uint8(images: Tensor) -> Tensor:
    """uint8 [0, 255] -> float32 [-1, 1]."""
    return images.float() / 127.5 - 1


def to_uint8(images: Tensor) -> Tensor:
    """[-1, 1] -> uint8 as ADM's image_sample.py, `(x + 1) * 127.5` clamped; rounded, not truncated.

    Rounding (ADM truncates) makes `to_uint8(from_uint8(u)) == u` exact for every uint8 value.
    """
    return ((images + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)


def load_dataset(cfg: DataConfig, split: Split) -> ImageSet:
    """The `split` of `cfg.dataset` at `cfg.resolution` (square), cached in-process."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    resolved = Path(cfg.path).expanduser().resolve() if cfg.path else None
    data_dir = Path(cfg.data_dir).expanduser().resolve()
    return _load(cfg.dataset, cfg.component, resolved, cfg.resolution, data_dir, split, cfg.options)


@functools.lru_cache(maxsize=4)
def _load(
    name: str,
    component: Dataset,
    path: Path | None,
    resolution: int,
    data_dir: Path,
    split: Split,
    options: Any,
) -> ImageSet:
    loader: Loader = component.load()
    images, labels = loader(path, resolution, data_dir, split, options)
    return ImageSet(
        pixels=_nchw(images),
        labels=None if labels is None else torch.from_numpy(labels).long(),
        name=name,
        split=split,
    )


def read_images(path: Path) -> Tensor:
    """uint8 [N, C, H, W] from a folder of same-sized images or an ADM .npz, without resizing."""
    path = Path(path).expanduser()
    if not path.exists():
        raise DataError(f"{path} does not exist; expected a folder of images or an ADM .npz")
    if path.is_file():
        return _nchw(_open_npz(path))
    files = image_files(path)
    mode, sizes = _scan(files)
    for file, size in zip(files, sizes, strict=True):
        if size != sizes[0]:
            raise DataError(
                f"images in {path} differ in size: {files[0]} is {sizes[0][0]}x{sizes[0][1]}, "
                f"{file} is {size[0]}x{size[1]} (width x height); every image must share one size"
            )
    return _nchw(np.stack([_hwc(_decode(file, mode)) for file in files]))


def save_npz(path: Path, images: Tensor) -> None:
    """Write uint8 [N, C, H, W] images as an ADM .npz (`arr_0`, NHWC), atomically."""
    if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] not in (1, 3):
        raise DataError(
            f"save_npz takes uint8 [N, C, H, W] with C = 1 or 3, got {images.dtype} "
            f"{list(images.shape)}; convert [-1, 1] images with to_uint8"
        )
    arr = images.permute(0, 2, 3, 1).contiguous().cpu().numpy()  # [N, H, W, C]
    atomic_write(Path(path), lambda f: np.savez(f, arr_0=arr))


def save_grid_png(path: Path, images: Tensor, nrow: int) -> None:
    """Write [N, C, H, W] images in [-1, 1] as one PNG grid of `nrow` per row, atomically."""
    from torchvision.utils import make_grid  # only the sample grids need torchvision here

    grid = make_grid(to_uint8(images.detach().cpu()), nrow=nrow, padding=2)  # [3, H', W']
    pil = Image.fromarray(grid.permute(1, 2, 0).numpy())
    atomic_write(Path(path), lambda f: pil.save(f, format="PNG"))


def _nchw(images: np.ndarray) -> Tensor:
    """uint8 [N, H, W, C] numpy -> contiguous uint8 [N, C, H, W] tensor (a copy)."""
    return torch.from_numpy(images.transpose(0, 3, 1, 2).copy())


def _hwc(image: Image.Image) -> np.ndarray:
    """A PIL image (L or RGB) as uint8 [H, W, C]."""
    arr = np.asarray(image, dtype=np.uint8)
    return arr[:, :, None] if arr.ndim == 2 else arr


def _center_crop(image: Image.Image, resolution: int) -> np.ndarray:
    """guided-diffusion's `center_crop_arr` (image_datasets.py) -> uint8 [res, res, C]."""
    while min(image.size) >= 2 * resolution:
        image = image.resize(tuple(s // 2 for s in image.size), resample=Image.Resampling.BOX)
    scale = resolution / min(image.size)
    image = image.resize(
        tuple(round(s * scale) for s in image.size), resample=Image.Resampling.BICUBIC
    )
    arr = _hwc(image)
    top = (arr.shape[0] - resolution) // 2
    left = (arr.shape[1] - resolution) // 2
    return arr[top : top + resolution, left : left + resolution]


def _resize(images: np.ndarray, resolution: int) -> np.ndarray:
    """uint8 [N, H, W, C] -> uint8 [N, res, res, C] by `_center_crop`; a no-op at that size."""
    if images.shape[1:3] == (resolution, resolution):
        return np.ascontiguousarray(images)
    gray = images.shape[3] == 1
    out = [_center_crop(Image.fromarray(im[:, :, 0] if gray else im), resolution) for im in images]
    return np.stack(out)


def _split_indices(
    n: int, split: Split, test_size: float, source: str, stratify: np.ndarray | None = None
) -> np.ndarray:
    """The fixed, seeded train/test partition of range(n), each part in ascending order."""
    from sklearn.model_selection import train_test_split  # heavy import, needed only here

    if n < 2:
        raise DataError(
            f"{source} holds {n} image(s); at least 2 are needed to split it into train and test"
        )
    train, test = train_test_split(
        np.arange(n), test_size=test_size, random_state=SPLIT_SEED, stratify=stratify
    )
    return np.sort(train if split == "train" else test)


def load_digits_split(
    path: Path | None, resolution: int, data_dir: Path, split: Split, options: Any
) -> Loaded:
    """scikit-learn's bundled 8x8 digits (values 0..16), 80/20 stratified split: 1,437 / 360.

    The split is cached in `data_dir`/digits (one file per scikit-learn version, whose
    `train_test_split` made it): importing scikit-learn takes seconds in every process.
    """
    cached = data_dir / "digits" / f"scikit-learn-{metadata.version('scikit-learn')}-{split}.npz"
    try:
        with np.load(cached) as stored:
            images, labels = stored["images"], stored["labels"]
    except (OSError, ValueError, KeyError, zipfile.BadZipFile):  # absent, or not ours
        images, labels = _digits_split(split)
        with contextlib.suppress(OSError):  # a read-only data_dir: no cache, same data
            atomic_write(cached, lambda f: np.savez(f, images=images, labels=labels))
    return _resize(images, resolution), labels


def _digits_split(split: Split) -> Loaded:
    from sklearn.datasets import load_digits  # heavy import, needed only here

    digits = load_digits()
    images = np.rint(digits.images * (255 / 16)).astype(np.uint8)[..., None]  # [1797, 8, 8, 1]
    keep = _split_indices(len(images), split, 0.2, "digits", stratify=digits.target)
    return images[keep], digits.target[keep].astype(np.int64)


def load_cifar10(
    path: Path | None, resolution: int, data_dir: Path, split: Split, options: Any
) -> Loaded:
    """torchvision's CIFAR-10 in `data_dir`, downloaded on first use; official split."""
    from torchvision.datasets import CIFAR10  # only this dataset needs torchvision here

    try:
        dataset = CIFAR10(root=data_dir, train=split == "train", download=True)
    except _DOWNLOAD_ERRORS as err:
        raise DataError(
            f"CIFAR-10 is not in data_dir {data_dir} and downloading it failed "
            f"({type(err).__name__}: {err}). On a machine with network access, download "
            f"{CIFAR10_URL} and either put cifar-10-python.tar.gz into {data_dir} or extract it "
            f"there (so that {data_dir / 'cifar-10-batches-py' / 'data_batch_1'} exists), "
            "or set data.data_dir to the folder that already holds it; then run again."
        ) from None
    labels = np.asarray(dataset.targets, dtype=np.int64)
    return _resize(dataset.data, resolution), labels  # data: uint8 [N, 32, 32, 3]


def load_folder(
    path: Path | None, resolution: int, data_dir: Path, split: Split, options: Any
) -> Loaded:
    """Every image under `path` (recursive, sorted), centre-cropped and resized; 90/10 split."""
    files = image_files(path)
    mode, _ = _scan(files)
    keep = _split_indices(len(files), split, 0.1, f"image folder {path}")
    return np.stack([_center_crop(_decode(files[i], mode), resolution) for i in keep]), None


def load_npz(
    path: Path | None, resolution: int, data_dir: Path, split: Split, options: Any
) -> Loaded:
    """The images of an ADM .npz (`arr_0`), resized; 90/10 split of its rows."""
    images = _open_npz(path)
    keep = _split_indices(len(images), split, 0.1, f"npz file {path}")
    return _resize(images[keep], resolution), None


def image_files(folder: Path) -> list[Path]:
    """Image files under `folder`, recursive, sorted by path string as clean-fid sorts them
    (so images and their features come in the order its `compute_fid`/`compute_kid` read
    them); hidden files and folders are skipped."""
    if not folder.exists():
        raise DataError(f"image folder {folder} does not exist")
    if not folder.is_dir():
        raise DataError(f"{folder} is a file, not a folder of images (an .npz is read as npz:PATH)")
    files = sorted(
        (
            p
            for p in folder.rglob("*")
            if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts)
        ),
        key=str,  # not Path order: "a/b.png" sorts after "a-c.png" as a string, before as parts
    )
    images = [p for p in files if p.suffix.lower() in IMAGE_EXTENSIONS]
    if not images:
        found = Counter(p.suffix.lower() or "(no extension)" for p in files)
        listing = ", ".join(f"{n} {ext}" for ext, n in sorted(found.items())) or "no files"
        raise DataError(
            f"no images in folder {folder} (searched recursively): found {listing}; "
            f"accepted extensions (any case): {', '.join(IMAGE_EXTENSIONS)}"
        )
    return images


def _scan(files: list[Path]) -> tuple[str, list[tuple[int, int]]]:
    """Read headers only: the common PIL mode (L if all are grayscale, else RGB) and the sizes."""
    modes, sizes = set(), []
    for file in files:
        try:
            with Image.open(file) as image:
                mode, size = image.mode, image.size
        except _DECODE_ERRORS as err:
            raise DataError(f"cannot read image {file}: {err}") from None
        if mode in _DEEP_MODES:
            raise DataError(
                f"image {file} has {mode!r} pixels (16-bit or float); only 8-bit images are "
                "read: convert it to 8-bit grayscale or RGB"
            )
        modes.add(mode)
        sizes.append(size)
    return ("L" if modes <= _GRAY_MODES else "RGB"), sizes


def _decode(file: Path, mode: str) -> Image.Image:
    """Decode `file` fully and convert it to `mode` (RGBA loses its alpha channel)."""
    try:
        with Image.open(file) as image:
            image.load()
            return image.convert(mode)
    except _DECODE_ERRORS as err:
        raise DataError(f"cannot decode image {file}: {err}") from None


def _open_npz(path: Path) -> np.ndarray:
    """`arr_0` of an ADM .npz as uint8 [N, H, W, C], memory-mapped when stored uncompressed."""
    if not path.exists():
        raise DataError(f"npz file {path} does not exist; expected {NPZ_LAYOUT}")
    if not path.is_file():
        raise DataError(f"{path} is a folder, not an .npz file (a folder is read as folder:PATH)")
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
            if "arr_0.npy" not in names:
                keys = ", ".join(n.removesuffix(".npy") for n in names) or "none"
                raise DataError(
                    f"npz file {path} has no 'arr_0' (keys: {keys}); expected {NPZ_LAYOUT}"
                )
            info = archive.getinfo("arr_0.npy")
            with archive.open(info) as member:
                version = np.lib.format.read_magic(member)
                if version == (1, 0):
                    shape, fortran, dtype = np.lib.format.read_array_header_1_0(member)
                else:
                    shape, fortran, dtype = np.lib.format.read_array_header_2_0(member)
                _check_layout(path, shape, dtype)
                if info.compress_type == zipfile.ZIP_STORED:
                    offset = _member_data_offset(path, info) + member.tell()
                    order = "F" if fortran else "C"
                    arr = np.memmap(
                        path, dtype=dtype, mode="r", shape=shape, offset=offset, order=order
                    )
                else:
                    member.seek(0)  # read_array parses the header again
                    arr = np.lib.format.read_array(member, allow_pickle=False)
    except DataError:
        raise
    except (zipfile.BadZipFile, EOFError, ValueError, OSError) as err:
        raise DataError(
            f"npz file {path} is truncated or corrupt ({type(err).__name__}: {err}); "
            f"expected a complete .npz with {NPZ_LAYOUT}"
        ) from None
    return arr[..., None] if arr.ndim == 3 else arr


def _check_layout(path: Path, shape: tuple[int, ...], dtype: np.dtype) -> None:
    """Raise DataError unless `arr_0` is ADM's uint8 NHWC (C = 1 or 3) or NHW."""
    if dtype != np.uint8:
        raise DataError(f"npz file {path}: arr_0 has dtype {dtype}, expected {NPZ_LAYOUT}")
    if len(shape) not in (3, 4) or (len(shape) == 4 and shape[3] not in (1, 3)):
        nchw = len(shape) == 4 and shape[1] in (1, 3)
        hint = " (it looks like NCHW: save arr.transpose(0, 2, 3, 1))" if nchw else ""
        raise DataError(
            f"npz file {path}: arr_0 has shape {list(shape)}{hint}, expected {NPZ_LAYOUT}"
        )
    if shape[0] == 0:
        raise DataError(f"npz file {path}: arr_0 holds no images, expected {NPZ_LAYOUT}")


def _member_data_offset(path: Path, info: zipfile.ZipInfo) -> int:
    """Byte offset of a stored zip member's data: after its local header, name and extra field."""
    with open(path, "rb") as f:
        f.seek(info.header_offset)
        header = f.read(30)  # the fixed part of a zip local file header
    # The local name/extra lengths (bytes 26-29) may differ from the central directory's copy.
    name_len, extra_len = struct.unpack_from("<HH", header, 26)
    return info.header_offset + 30 + name_len + extra_len
