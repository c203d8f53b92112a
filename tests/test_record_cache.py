"""Records read back from a local storage file are kept beside it while the file is unchanged
(bench.record_cache): equal to a read through Optuna, never stale, never hiding a racy write."""

import json
import os
import time
from pathlib import Path

import optuna
import pytest
from test_tables import STUDY, _storage

from bench import record_cache, results
from bench.results import read_records, storage_file
from bench.study import load_study


@pytest.fixture
def study(tmp_path):
    path = tmp_path / "golden.toml"
    path.write_text(STUDY)
    return load_study(str(path))


def _age(path: Path, seconds: float) -> None:
    """Set the storage file's modification time `seconds` back (as a study finished earlier)."""
    then = time.time() - seconds
    os.utime(path, (then, then))


def _read_finished(study, tmp_path: Path) -> tuple[str, Path, object]:
    """A storage whose study finished a minute ago, read once: (url, its snapshot, records)."""
    url = _storage(tmp_path, study)
    _, path = storage_file(url)
    _age(path, 60)
    return url, record_cache.snapshot_path(path, study.name), read_records(study, url)


def _no_optuna(monkeypatch) -> None:
    def refuse(*args, **kwargs):
        raise AssertionError("read through Optuna although the storage is unchanged")

    monkeypatch.setattr(results, "load_optuna_study", refuse)


def test_an_unchanged_storage_is_read_from_its_snapshot_equal_to_optunas(
    study, tmp_path, monkeypatch
):
    url, snapshot, fresh = _read_finished(study, tmp_path)
    assert snapshot.is_file()
    _no_optuna(monkeypatch)
    kept = read_records(study, url)
    assert kept == fresh
    assert kept.states == fresh.states and type(kept.states) is type(fresh.states)
    assert len(kept.complete) == 11 and kept.reference == fresh.reference


def test_a_write_to_the_storage_makes_the_next_read_go_through_optuna(study, tmp_path):
    url = _storage(tmp_path, study)
    _, path = storage_file(url)
    _age(path, 60)
    before = read_records(study, url)
    stored = optuna.load_study(study_name=study.name, storage=url)
    stored.set_user_attr("total_cells", 99)
    stored.enqueue_trial({"architecture.name": "ddpm", "metric.name": "none", "seed": 0})
    after = read_records(study, url)
    assert before.total == 12 and after.total == 99
    assert len(after.trials) == len(before.trials) + 1
    assert after.states["WAITING"] == 1


def test_no_snapshot_of_a_storage_written_within_the_racy_window(study, tmp_path):
    url = _storage(tmp_path, study)  # written just now: a write in the same tick could follow
    _, path = storage_file(url)
    read_records(study, url)
    assert not record_cache.snapshot_path(path, study.name).exists()


def test_a_snapshot_under_another_key_or_format_or_corrupt_is_not_used(
    study, tmp_path, monkeypatch
):
    url, snapshot, fresh = _read_finished(study, tmp_path)
    kept = json.loads(snapshot.read_text())
    for check in ([record_cache.FORMAT + 1, *kept["check"][1:]], [*kept["check"][:2], 7]):
        snapshot.write_text(json.dumps({**kept, "check": check}))
        assert read_records(study, url) == fresh  # read through Optuna, and kept again
    snapshot.write_text("{not json")
    assert read_records(study, url) == fresh
    _no_optuna(monkeypatch)
    assert read_records(study, url) == fresh


def test_a_missing_storage_is_still_an_error_and_leaves_nothing(study, tmp_path):
    url = f"sqlite:///{tmp_path / 'none.db'}"
    with pytest.raises(Exception, match="no Optuna storage"):
        read_records(study, url)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["golden.toml"]
