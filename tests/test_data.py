"""Datasets, image decoding and the ADM .npz layout (casdm/data.py)."""

import pickle
import subprocess
import sys
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.datasets.cifar
from PIL import Image
from sklearn.datasets import load_digits

from casdm import data
from casdm.components import registry
from casdm.config import ConfigError, DataConfig
from casdm.data import (
    from_uint8,
    load_dataset,
    read_images,
    save_grid_png,
    save_npz,
    to_uint8,
)
from casdm.errors import DataError

DATASETS = registry("dataset").names()


def _solid(size: tuple[int, int], value: int, mode: str = "RGB") -> Image.Image:
    """An image of one colour, which every resize maps to the same colour."""
    fill = value if mode == "L" else (value, value, value)
    return Image.new(mode, size, fill)


def _fake_cifar10(root: Path, monkeypatch: pytest.MonkeyPatch) -> np.ndarray:
    """Write tiny CIFAR-10 batches in torchvision's layout; md5 checks are patched to pass."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    batches = {}
    for name in ["data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5"]:
        batches[name] = rng.integers(0, 256, (2, 3 * 32 * 32), dtype=np.uint8)
    batches["test_batch"] = rng.integers(0, 256, (3, 3 * 32 * 32), dtype=np.uint8)
    for i, (name, rows) in enumerate(batches.items()):
        entry = {"data": rows, "labels": [(i + j) % 10 for j in range(len(rows))]}
        (folder / name).write_bytes(pickle.dumps(entry))
    (folder / "batches.meta").write_bytes(
        pickle.dumps({"label_names": [str(c) for c in range(10)]})
    )
    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", lambda *args: True)
    return batches["test_batch"].reshape(-1, 3, 32, 32)


@pytest.fixture
def make_spec(tmp_path, monkeypatch):
    """Build a working dataset spec (and data_dir) for each DATASETS kind."""

    def make(kind: str) -> tuple[str, str]:
        if kind == "digits":
            return "digits", str(tmp_path)
        if kind == "cifar10":
            _fake_cifar10(tmp_path / "cifar", monkeypatch)
            return "cifar10", str(tmp_path / "cifar")
        if kind == "folder":
            for i in range(12):
                _solid((20, 12), 20 * i).save(tmp_path / f"img{i:02d}.png")
            return f"folder:{tmp_path}", str(tmp_path)
        if kind == "npz":
            rng = np.random.default_rng(1)
            images = torch.from_numpy(rng.integers(0, 256, (12, 3, 10, 10), dtype=np.uint8))
            save_npz(tmp_path / "set.npz", images)
            return f"npz:{tmp_path / 'set.npz'}", str(tmp_path)
        raise KeyError(f"no test spec for dataset kind {kind!r}")

    return make


@pytest.mark.parametrize("kind", sorted(DATASETS))
def test_every_dataset_yields_float_nchw_in_range_at_resolution(kind, make_spec):
    spec, data_dir = make_spec(kind)
    cfg = DataConfig(dataset=spec, resolution=8, data_dir=data_dir)
    train, test = load_dataset(cfg, "train"), load_dataset(cfg, "test")
    for part in (train, test):
        assert part.images.dtype == torch.float32
        assert part.images.shape[1:] == (1 if kind == "digits" else 3, 8, 8)
        assert part.images.min() >= -1 and part.images.max() <= 1
        assert part.name == spec
        # Real images are uint8-exact, so they quantize like saved samples do.
        assert torch.equal(from_uint8(to_uint8(part.images)), part.images)
        has_labels = kind in ("digits", "cifar10")
        assert (part.labels is not None) == has_labels
        if has_labels:
            assert part.labels.dtype == torch.int64
            assert part.labels.shape == (len(part.images),)
    assert (train.split, test.split) == ("train", "test")


def test_digits_split_sizes_labels_and_partition_are_fixed():
    cfg = DataConfig(dataset="digits", resolution=8)
    train, test = load_dataset(cfg, "train"), load_dataset(cfg, "test")
    assert train.images.shape == (1437, 1, 8, 8)
    assert test.images.shape == (360, 1, 8, 8)
    assert set(train.labels.tolist()) == set(range(10)) == set(test.labels.tolist())
    # Stratified: every class has 35..37 of the 360 test images (its 20% share, rounded).
    assert test.labels.bincount().min() >= 35 and test.labels.bincount().max() <= 37
    # At 8x8 no resize happens: train + test is exactly sklearn's set, 0..16 scaled to 0..255.
    digits = load_digits()
    expected = np.rint(digits.images * 255 / 16).reshape(-1, 64)
    got = to_uint8(torch.cat([train.images, test.images])).reshape(-1, 64).numpy()
    assert np.array_equal(np.unique(got, axis=0), np.unique(expected, axis=0))
    expected_pairs = sorted(zip(map(bytes, expected.astype(np.uint8)), digits.target, strict=True))
    labels = torch.cat([train.labels, test.labels]).numpy()
    got_pairs = sorted(zip(map(bytes, got), labels, strict=True))
    assert got_pairs == expected_pairs
    # Stable: a fresh load (cache cleared) gives the identical split.
    data._load.cache_clear()
    again = load_dataset(cfg, "test")
    assert again is not test
    assert torch.equal(again.images, test.images) and torch.equal(again.labels, test.labels)


def test_digits_split_is_cached_in_data_dir_and_read_back_without_sklearn(tmp_path):
    cfg = DataConfig(dataset="digits", resolution=8, data_dir=str(tmp_path))
    data._load.cache_clear()
    first = load_dataset(cfg, "test")  # computed with scikit-learn, then cached
    (cached,) = (tmp_path / "digits").glob("scikit-learn-*-test.npz")
    data._load.cache_clear()
    again = load_dataset(cfg, "test")  # read back from the cache
    assert torch.equal(again.images, first.images) and torch.equal(again.labels, first.labels)
    probe = (
        "import sys\n"
        "from casdm.config import DataConfig\n"
        "from casdm.data import load_dataset\n"
        f"cfg = DataConfig(dataset='digits', resolution=8, data_dir={str(tmp_path)!r})\n"
        "part = load_dataset(cfg, 'test')\n"
        "print(tuple(part.images.shape), 'sklearn' in sys.modules)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=120
    )
    assert done.stdout.split("\n")[0] == "(360, 1, 8, 8) False", done.stderr
    cached.write_bytes(b"not an npz")  # a damaged cache is recomputed, not an error
    data._load.cache_clear()
    assert torch.equal(load_dataset(cfg, "test").images, first.images)


def test_digits_upsampled_to_resolution_keeps_range_and_labels():
    test = load_dataset(DataConfig(dataset="digits", resolution=16), "test")
    assert test.images.shape == (360, 1, 16, 16)
    assert test.images.min() == -1 and test.images.max() == 1
    assert test.labels.shape == (360,)


def test_load_dataset_is_cached_in_process():
    cfg = DataConfig(dataset="digits", resolution=8)
    assert load_dataset(cfg, "train") is load_dataset(cfg, "train")


def test_cifar10_official_split_and_resize(tmp_path, monkeypatch):
    test_rows = _fake_cifar10(tmp_path, monkeypatch)  # [3, 3, 32, 32]
    cfg32 = DataConfig(dataset="cifar10", resolution=32, data_dir=str(tmp_path))
    test = load_dataset(cfg32, "test")
    assert torch.equal(to_uint8(test.images), torch.from_numpy(test_rows))
    assert test.labels.tolist() == [5, 6, 7]
    assert load_dataset(cfg32, "train").images.shape == (10, 3, 32, 32)
    cfg16 = DataConfig(dataset="cifar10", resolution=16, data_dir=str(tmp_path))
    assert load_dataset(cfg16, "test").images.shape == (3, 3, 16, 16)


def test_cifar10_offline_without_files_names_data_dir_and_url(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torchvision.datasets.cifar, "download_and_extract_archive", offline)
    cfg = DataConfig(dataset="cifar10", resolution=32, data_dir=str(tmp_path / "empty"))
    with pytest.raises(DataError) as err:
        load_dataset(cfg, "train")
    message = str(err.value)
    assert str(tmp_path / "empty") in message
    assert "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz" in message
    assert "cifar-10-batches-py" in message and "no network" in message


def test_folder_mixes_png_jpg_sizes_and_grayscale_into_rgb(tmp_path):
    values = [0, 40, 80, 120, 160, 200, 240, 30, 90, 150, 210]
    for i, v in enumerate(values):
        if i == 3:
            _solid((16, 16), v, "L").save(tmp_path / f"{i:02d}.png")  # grayscale
        elif i % 2:
            _solid((40, 30), v).save(tmp_path / f"{i:02d}.JPG", quality=100)
        else:
            _solid((30, 50), v).save(tmp_path / f"{i:02d}.png")
    (tmp_path / "notes.txt").write_text("not an image")
    cfg = DataConfig(dataset=f"folder:{tmp_path}", resolution=8)
    train, test = load_dataset(cfg, "train"), load_dataset(cfg, "test")
    assert train.images.shape == (9, 3, 8, 8) and test.images.shape == (2, 3, 8, 8)
    assert train.labels is None and test.labels is None
    # Each solid image keeps its value: train and test partition the folder.
    got = sorted(to_uint8(torch.cat([train.images, test.images]))[:, :, 4, 4].float().mean(1))
    assert np.allclose(got, sorted(values), atol=1)


def test_folder_of_grayscale_images_stays_one_channel_and_exact(tmp_path):
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (10, 8, 8), dtype=np.uint8)
    sub = tmp_path / "nested"
    sub.mkdir()
    for i, arr in enumerate(pixels):
        Image.fromarray(arr, "L").save(sub / f"{i}.png")
    test = load_dataset(DataConfig(dataset=f"folder:{tmp_path}", resolution=8), "test")
    assert test.images.shape == (1, 1, 8, 8)
    assert any(torch.equal(to_uint8(test.images[0, 0]), torch.from_numpy(a)) for a in pixels)


def test_folder_with_corrupt_png_names_the_file(tmp_path):
    _solid((8, 8), 10).save(tmp_path / "good.png")
    (tmp_path / "bad.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(DataError, match=r"cannot read image .*bad\.png"):
        load_dataset(DataConfig(dataset=f"folder:{tmp_path}", resolution=8), "train")


def test_folder_with_truncated_png_names_the_file(tmp_path):
    _solid((64, 64), 10).save(tmp_path / "good.png")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(tmp_path / "cut.png")
    raw = (tmp_path / "cut.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DataError, match=r"cannot decode image .*cut\.png"):
        read_images(tmp_path)


def test_folder_without_images_lists_what_it_found(tmp_path):
    (tmp_path / "a.txt").write_text("x")
    (tmp_path / "b.csv").write_text("x")
    with pytest.raises(DataError) as err:
        load_dataset(DataConfig(dataset=f"folder:{tmp_path}", resolution=8), "train")
    message = str(err.value)
    assert "no images" in message and "1 .csv, 1 .txt" in message and ".png" in message


def test_empty_folder_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match=r"no images in folder .*found no files"):
        read_images(tmp_path)


def test_missing_folder_and_npz_are_data_errors(tmp_path):
    with pytest.raises(DataError, match=r"image folder .*nowhere does not exist"):
        load_dataset(DataConfig(dataset=f"folder:{tmp_path / 'nowhere'}"), "train")
    with pytest.raises(DataError, match=r"npz file .*gone\.npz does not exist"):
        load_dataset(DataConfig(dataset=f"npz:{tmp_path / 'gone.npz'}"), "train")
    with pytest.raises(DataError, match="does not exist"):
        read_images(tmp_path / "nothing")


def test_folder_with_one_image_cannot_be_split(tmp_path):
    _solid((8, 8), 10).save(tmp_path / "only.png")
    with pytest.raises(DataError, match="holds 1 image"):
        load_dataset(DataConfig(dataset=f"folder:{tmp_path}", resolution=8), "train")


def test_sixteen_bit_images_are_rejected_not_clipped(tmp_path):
    Image.fromarray(np.full((8, 8), 60000, dtype=np.uint16)).save(tmp_path / "deep.png")
    with pytest.raises(DataError, match=r"deep\.png has 'I;16' pixels"):
        read_images(tmp_path)


def test_read_images_from_folder_is_exact_and_sorted(tmp_path):
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (3, 6, 5, 4), dtype=np.uint8)  # RGBA: alpha is dropped
    for i, arr in enumerate(pixels):
        Image.fromarray(arr, "RGBA").save(tmp_path / f"s{i}.png")
    images = read_images(tmp_path)
    assert images.dtype == torch.uint8
    assert torch.equal(images, torch.from_numpy(pixels[..., :3]).permute(0, 3, 1, 2))


def test_read_images_names_two_files_of_different_size(tmp_path):
    _solid((8, 8), 1).save(tmp_path / "a.png")
    _solid((9, 8), 1).save(tmp_path / "b.png")
    with pytest.raises(DataError, match=r"a\.png is 8x8, .*b\.png is 9x8"):
        read_images(tmp_path)


@pytest.mark.parametrize("channels", [1, 3])
def test_npz_round_trip_is_exact(tmp_path, channels):
    rng = np.random.default_rng(channels)
    images = torch.from_numpy(rng.integers(0, 256, (5, channels, 7, 6), dtype=np.uint8))
    save_npz(tmp_path / "s.npz", images)
    assert torch.equal(read_images(tmp_path / "s.npz"), images)
    # ADM layout: arr_0, NHWC.
    with np.load(tmp_path / "s.npz") as npz:
        assert list(npz.keys()) == ["arr_0"]
        assert np.array_equal(npz["arr_0"], images.permute(0, 2, 3, 1).numpy())
    assert [p.name for p in tmp_path.iterdir()] == ["s.npz"]  # no temporary file left


def test_npz_written_compressed_or_nhw_is_read(tmp_path):
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 256, (4, 5, 6), dtype=np.uint8)
    np.savez_compressed(tmp_path / "c.npz", arr_0=arr)
    images = read_images(tmp_path / "c.npz")
    assert torch.equal(images, torch.from_numpy(arr)[:, None])


def test_npz_dataset_resizes_and_splits_rows(tmp_path):
    values = np.arange(20, dtype=np.uint8) * 10
    arr = np.broadcast_to(values[:, None, None, None], (20, 12, 12, 3)).copy()
    np.savez(tmp_path / "d.npz", arr)
    cfg = DataConfig(dataset=f"npz:{tmp_path / 'd.npz'}", resolution=8)
    train, test = load_dataset(cfg, "train"), load_dataset(cfg, "test")
    assert train.images.shape == (18, 3, 8, 8) and test.images.shape == (2, 3, 8, 8)
    got = to_uint8(torch.cat([train.images, test.images]))[:, 0, 0, 0]
    assert sorted(got.tolist()) == values.tolist()


def test_npz_with_wrong_dtype_is_rejected(tmp_path):
    np.savez(tmp_path / "f.npz", arr_0=np.zeros((2, 8, 8, 3), dtype=np.float32))
    with pytest.raises(
        DataError, match="arr_0 has dtype float32, expected key 'arr_0', dtype uint8"
    ):
        read_images(tmp_path / "f.npz")


def test_npz_with_wrong_shape_is_rejected(tmp_path):
    np.savez(tmp_path / "nchw.npz", arr_0=np.zeros((2, 3, 8, 8), dtype=np.uint8))
    with pytest.raises(DataError, match=r"shape \[2, 3, 8, 8\] \(it looks like NCHW"):
        read_images(tmp_path / "nchw.npz")
    np.savez(tmp_path / "flat.npz", arr_0=np.zeros((2, 64), dtype=np.uint8))
    with pytest.raises(DataError, match=r"shape \[2, 64\], expected .*\[N, H, W, C\]"):
        read_images(tmp_path / "flat.npz")
    np.savez(tmp_path / "none.npz", arr_0=np.zeros((0, 8, 8, 3), dtype=np.uint8))
    with pytest.raises(DataError, match="holds no images"):
        read_images(tmp_path / "none.npz")


def test_npz_without_arr_0_lists_its_keys(tmp_path):
    np.savez(tmp_path / "k.npz", images=np.zeros((2, 8, 8, 3), dtype=np.uint8), labels=np.zeros(2))
    with pytest.raises(DataError, match=r"has no 'arr_0' \(keys: images, labels\)"):
        read_images(tmp_path / "k.npz")


def test_truncated_or_foreign_npz_is_rejected(tmp_path):
    save_npz(tmp_path / "t.npz", torch.zeros(4, 3, 8, 8, dtype=torch.uint8))
    raw = (tmp_path / "t.npz").read_bytes()
    (tmp_path / "t.npz").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DataError, match=r"t\.npz is truncated or corrupt"):
        read_images(tmp_path / "t.npz")
    (tmp_path / "x.npz").write_text("plain text")
    with pytest.raises(DataError, match=r"x\.npz is truncated or corrupt .*arr_0"):
        load_dataset(DataConfig(dataset=f"npz:{tmp_path / 'x.npz'}"), "train")


def test_unknown_dataset_lists_valid_names_and_path_forms():
    with pytest.raises(ConfigError) as err:
        DataConfig(dataset="mnist")
    message = str(err.value)
    assert "unknown dataset 'mnist'" in message
    assert "cifar10, digits, folder, npz" in message
    assert "folder:PATH" in message and "npz:PATH" in message


@pytest.mark.parametrize("spec", ["folder", "folder:", "npz"])
def test_path_datasets_without_a_path_are_rejected(spec):
    kind = spec.rstrip(":")
    with pytest.raises(ConfigError, match=f"needs a path: write '{kind}:PATH'"):
        DataConfig(dataset=spec)


def test_a_dataset_spec_splits_into_component_and_path():
    def parts(spec):
        cfg = DataConfig(dataset=spec)
        return cfg.component_name, cfg.path

    assert parts("digits") == ("digits", None)
    assert parts("folder:/data/a:b") == ("folder", "/data/a:b")
    assert parts("npz:ref.npz") == ("npz", "ref.npz")
    with pytest.raises(ConfigError, match="takes no path"):
        DataConfig(dataset="digits:/tmp")


def test_uint8_round_trip_is_exact_for_every_value():
    u = torch.arange(256, dtype=torch.uint8)
    x = from_uint8(u)
    assert x.dtype == torch.float32 and x[0] == -1 and x[-1] == 1
    assert torch.equal(to_uint8(x), u)
    assert to_uint8(torch.tensor([-3.0, 3.0, 0.0])).tolist() == [0, 255, 128]


def test_save_grid_png_lays_out_images_with_padding(tmp_path):
    images = from_uint8(
        torch.arange(4, dtype=torch.uint8).mul(60).view(4, 1, 1, 1).expand(4, 1, 8, 8)
    )
    save_grid_png(tmp_path / "grid.png", images, nrow=2)
    grid = np.asarray(Image.open(tmp_path / "grid.png"))
    assert grid.shape == (22, 22, 3)  # 2 x (8 + 2) + 2 padding
    assert grid[2, 2].tolist() == [0, 0, 0] and grid[2, 12].tolist() == [60, 60, 60]
    assert grid[12, 2].tolist() == [120] * 3 and grid[12, 12].tolist() == [180] * 3
    assert [p.name for p in tmp_path.iterdir()] == ["grid.png"]


def test_save_npz_rejects_float_images(tmp_path):
    with pytest.raises(DataError, match="save_npz takes uint8"):
        save_npz(tmp_path / "f.npz", torch.zeros(2, 3, 8, 8))
