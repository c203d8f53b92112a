"""casdm.faults: the CASDM_FAULTS grammar, scopes and counting (in process; no signals)."""

import pytest
import torch

from casdm import faults
from casdm.faults import Fault, inject, parse, scope


def test_parse_reads_action_point_count_and_scope():
    assert parse("kill@train.step=3/ddpm_none, nan@train.loss ,raise@write:checkpoint.pt=2") == [
        Fault("kill", "train.step", 3, "ddpm_none"),
        Fault("nan", "train.loss", 1, None),
        Fault("raise", "write:checkpoint.pt", 2, None),
    ]


@pytest.mark.parametrize("text", ["explode@train.step", "kill", "kill@", "kill@train.step=x"])
def test_a_malformed_entry_is_named(text):
    with pytest.raises(ValueError, match="ACTION@POINT"):
        parse(text)


def test_nothing_fires_without_the_variable(monkeypatch):
    monkeypatch.delenv(faults.ENV, raising=False)
    assert inject("train.loss", 1) is None


def test_a_fault_fires_at_its_count_and_in_its_scope_only(monkeypatch):
    monkeypatch.setenv(faults.ENV, "nan@train.loss=2/cell_a,raise@sample=2")
    monkeypatch.setattr(faults, "_hits", type(faults._hits)())
    assert inject("train.loss", 2) is None  # outside any scope
    with scope("cell_b"):
        assert inject("train.loss", 2) is None
    with scope("cell_a"):
        assert inject("train.loss", 1) is None
        assert inject("train.loss", 2) == "nan"
    assert inject("sample") is None  # first time here
    with pytest.raises(RuntimeError, match="injected fault at sample"):
        inject("sample")  # the second


def test_oom_raises_torch_out_of_memory(monkeypatch):
    monkeypatch.setenv(faults.ENV, "oom@score")
    monkeypatch.setattr(faults, "_hits", type(faults._hits)())
    with pytest.raises(torch.OutOfMemoryError, match="injected out-of-memory"):
        inject("score")
