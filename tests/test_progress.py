"""What `bench run` prints as it goes: the end-of-trial line, the study ETA, the final summary."""

from types import SimpleNamespace

import pytest

from bench.commands.run import print_summary
from bench.progress import RichProgress, duration_text
from bench.worker import RunSummary, TrialRecord, trial_line


def test_trial_line_names_the_cell_time_and_the_table_scores():
    study = SimpleNamespace(table=SimpleNamespace(scores=("fid", "sfid", "is_mean", "recall")))
    scores = {"fid": 12.3456, "sfid": 7.0, "is_mean": 2.5, "recall": float("nan"), "kid": 0.1}
    # KID is shown x 10^3, like the table.
    kid = SimpleNamespace(table=SimpleNamespace(scores=("kid", "precision")))
    kid_line = trial_line(0, "c", 1.0, {"kid": 0.00123, "precision": 0.5}, kid)
    assert kid_line.splitlines()[1] == "  KID ×10³ 1.23  Precision 0.500"
    line = trial_line(3, "cas-dm lpips", 125.0, scores, study)
    assert line == "trial 3 (cas-dm lpips) finished in 2 min\n  FID 12.35  sFID 7.00  IS 2.50"


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(5, "5 s"), (89, "89 s"), (90, "2 min"), (3000, "50 min"), (9000, "2.5 h")],
)
def test_duration_text(seconds, text):
    assert duration_text(seconds) == text


def test_study_eta_is_shown_after_the_first_trial():
    clock = iter([100.0, 400.0, 1000.0])  # begin, after trial 1 (5 min), after trial 2
    bars = RichProgress(clock=lambda: next(clock))
    bars.task("reference features")(5, 5)  # scoring the real data comes first
    bars.begin_study("s", total=5, done=1)  # one trial done by an earlier run
    for _ in range(2):  # a trial's bars come and go before the study advances
        bars.begin_trial("cell", 10)
        bars.task("sampling")(1, 2)
        bars.end_trial()
    bars.advance_study()
    (task,) = bars._bars.tasks
    assert task.completed == 2 and task.fields["info"] == "about 15 min left"  # 3 x 300 s
    bars.advance_study()
    assert task.fields["info"] == "about 15 min left"  # 2 left x 450 s


def test_summary_fits_80_columns_and_keeps_paths_whole(monkeypatch, capsys):
    monkeypatch.setenv("COLUMNS", "80")
    storage = "sqlite:////a/rather/long/results/folder/of/somebody/working/here/optuna.db"
    tracking = "sqlite:////a/rather/long/results/folder/of/somebody/working/here/mlflow.db"
    summary = RunSummary("quickstart", storage, tracking, total=9, done=9)
    summary.trials = [
        TrialRecord(i, f"x0-ddpm lpips seed={i}", "COMPLETE", 42.5 + i, 61.0) for i in range(3)
    ]
    print_summary(summary, quiet=False)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "study quickstart: 9 of 9 trials complete; this run: 3 complete, 0 failed"
    table = lines[1 : lines.index(next(x for x in lines if x.startswith("storage:")))]
    assert all(len(line) <= 80 for line in table)
    assert any("x0-ddpm lpips seed=2" in line for line in table)
    assert f"tracking: {tracking}" in lines
    assert any(line.startswith("storage: sqlite file /a/rather/long") for line in lines)
