"""Checkpoints: atomic writes, weights_only loading, clear errors for damaged or foreign files."""

import os

import pytest
import torch

from casdm.checkpoint import (
    CheckpointError,
    Latest,
    UnsafeCheckpointError,
    load_checkpoint,
    load_latest,
    previous_path,
    save_checkpoint,
)
from casdm.errors import InputError
from casdm.files import remove_stale_temps


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


# --- the previous checkpoint as a fallback -------------------------------------------------


def test_keep_previous_rotates_the_replaced_checkpoint_to_prev(tmp_path):
    path = tmp_path / "checkpoint.pt"
    for value in (1.0, 2.0, 3.0):
        save_checkpoint(path, state(value), keep_previous=True)
    assert previous_path(path) == tmp_path / "checkpoint.prev.pt"
    assert torch.equal(load_checkpoint(path)["model"]["w"], torch.full((3,), 3.0))
    assert torch.equal(load_checkpoint(previous_path(path))["model"]["w"], torch.full((3,), 2.0))
    assert sorted(os.listdir(tmp_path)) == ["checkpoint.prev.pt", "checkpoint.pt"]


def test_load_latest_prefers_the_newest_readable_checkpoint(tmp_path):
    path = tmp_path / "checkpoint.pt"
    assert load_latest(path) == Latest(None, None, [])  # nothing yet: start afresh, silently
    save_checkpoint(path, state(1.0), keep_previous=True)
    save_checkpoint(path, state(2.0), keep_previous=True)
    latest = load_latest(path)
    assert latest.path == path and latest.notices == []
    assert torch.equal(latest.state["model"]["w"], torch.full((3,), 2.0))


def test_a_corrupt_checkpoint_is_moved_aside_and_the_previous_one_used(tmp_path):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, state(1.0), keep_previous=True)
    save_checkpoint(path, state(2.0), keep_previous=True)
    torn = path.read_bytes()[:100]
    path.write_bytes(torn)
    latest = load_latest(path)
    assert latest.path == previous_path(path)
    assert torch.equal(latest.state["model"]["w"], torch.full((3,), 1.0))
    assert "truncated or corrupt" in latest.notices[0]
    assert "moved it to" in latest.notices[0] and "checkpoint.pt.corrupt" in latest.notices[0]
    assert latest.notices[1] == f"resuming from {previous_path(path)}"
    assert (tmp_path / "checkpoint.pt.corrupt").read_bytes() == torn
    assert not path.exists()  # out of the way of the next save


def test_a_crash_between_the_two_renames_leaves_the_previous_checkpoint(tmp_path):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, state(1.0), keep_previous=True)
    os.replace(path, previous_path(path))  # where a kill between the renames leaves things
    latest = load_latest(path)
    assert latest.path == previous_path(path) and latest.notices == []


def test_when_no_checkpoint_is_readable_the_run_starts_afresh_and_says_so(tmp_path):
    path = tmp_path / "checkpoint.pt"
    path.write_bytes(b"garbage")
    previous_path(path).write_bytes(b"")
    latest = load_latest(path)
    assert latest.state is None and len(latest.notices) == 3
    assert latest.notices[-1] == "starting from step 0"


def test_readonly_readers_skip_a_corrupt_checkpoint_without_moving_it(tmp_path):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, state(1.0), keep_previous=True)
    save_checkpoint(path, state(2.0), keep_previous=True)
    path.write_bytes(b"garbage")
    latest = load_latest(path, readonly=True)
    assert latest.path == previous_path(path) and path.read_bytes() == b"garbage"


def test_a_pickle_bearing_checkpoint_is_never_fallen_back_from(tmp_path):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, state(1.0), keep_previous=True)
    torch.save({"step": 1, "obj": Unsafe()}, path)
    with pytest.raises(UnsafeCheckpointError, match="find out where it came from"):
        load_latest(path)
    assert path.exists()  # left where it is, as evidence


def test_a_killed_writer_leaves_a_temp_file_that_the_next_owner_removes(tmp_path):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, state(1.0))
    (tmp_path / ".checkpoint.pt.0123abcd.tmp").write_bytes(b"half")
    (tmp_path / ".other.pt.0123abcd.tmp").write_bytes(b"not ours")
    assert remove_stale_temps(path) == [tmp_path / ".checkpoint.pt.0123abcd.tmp"]
    assert sorted(os.listdir(tmp_path)) == [".other.pt.0123abcd.tmp", "checkpoint.pt"]
