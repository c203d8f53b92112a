"""Checkpoints: atomic writes, weights_only loading, clear errors for damaged or foreign files."""

import os

import pytest
import torch

from casdm.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from casdm.errors import InputError


class Unsafe:
    """A custom class: pickling it into a checkpoint would run code on load."""


def state(value: float) -> dict:
    return {"model": {"w": torch.full((3,), value)}, "step": 7, "config": '{"seed": 0}'}


def test_save_and_load_round_trip_keeps_tensors_numbers_and_strings(tmp_path):
    path = tmp_path / "ckpt.pt"
    save_checkpoint(path, state(1.5))
    loaded = load_checkpoint(path)
    assert torch.equal(loaded["model"]["w"], torch.full((3,), 1.5))
    assert loaded["step"] == 7
    assert loaded["config"] == '{"seed": 0}'
    assert os.listdir(tmp_path) == ["ckpt.pt"]  # no temp file left behind


def test_failure_mid_write_keeps_previous_checkpoint_and_leaves_no_temp_file(tmp_path, monkeypatch):
    path = tmp_path / "ckpt.pt"
    save_checkpoint(path, state(1.0))
    real_save = torch.save

    def crash_midway(obj, f, *args, **kwargs):
        real_save(obj, f, *args, **kwargs)
        f.truncate(10)  # half-written bytes in the temp file, then the process "dies"
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash_midway)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, state(2.0))
    monkeypatch.undo()
    assert torch.equal(load_checkpoint(path)["model"]["w"], torch.full((3,), 1.0))
    assert os.listdir(tmp_path) == ["ckpt.pt"]


def test_save_refuses_python_objects_before_writing(tmp_path):
    path = tmp_path / "ckpt.pt"
    with pytest.raises(TypeError, match=r"state\['extra'\] is a Unsafe"):
        save_checkpoint(path, {"extra": Unsafe()})
    assert not path.exists()
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("keep", [0, 10, 200, -20])
def test_truncated_checkpoint_raises_checkpoint_error_naming_file_and_remedy(tmp_path, keep):
    path = tmp_path / "ckpt.pt"
    save_checkpoint(path, state(1.0))
    data = path.read_bytes()
    path.write_bytes(data[:keep])
    with pytest.raises(CheckpointError, match="truncated or corrupt") as err:
        load_checkpoint(path)
    assert str(path) in str(err.value)
    assert "delete" in str(err.value) and "retrained" in str(err.value)
    assert isinstance(err.value, InputError)


def test_pickle_bearing_checkpoint_is_refused_by_weights_only_loading(tmp_path):
    path = tmp_path / "ckpt.pt"
    torch.save({"model": {"w": torch.zeros(2)}, "extra": Unsafe()}, path)
    with pytest.raises(CheckpointError, match="pickled Python objects") as err:
        load_checkpoint(path)
    assert "Unsafe" in str(err.value)  # the refused class is named
    assert str(path) in str(err.value) and "delete" in str(err.value)


def test_checkpoint_that_is_not_a_dict_is_refused(tmp_path):
    path = tmp_path / "ckpt.pt"
    torch.save(torch.zeros(2), path)
    with pytest.raises(CheckpointError, match="holds a Tensor, not a dict"):
        load_checkpoint(path)


def test_missing_checkpoint_raises_checkpoint_error(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint at"):
        load_checkpoint(tmp_path / "absent.pt")
