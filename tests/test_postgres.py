"""Two `bench run` workers share one study in a real PostgreSQL server (the many-machine set-up).

The server comes from .ci/run (Debian's postgresql package, loopback only), which exports
CASDM_TEST_POSTGRES_URL; without that variable the test is skipped.
"""

import contextlib
import csv
import os
import shutil
import subprocess
import sys
import uuid
from collections import Counter

import optuna
import pytest

POSTGRES_URL = os.environ.get("CASDM_TEST_POSTGRES_URL")
TINY_CELLS = ["ddpm none", "ddpm l2", "cas-dm none", "cas-dm l2"]

pytestmark = pytest.mark.skipif(
    not POSTGRES_URL,
    reason="CASDM_TEST_POSTGRES_URL is not set: no PostgreSQL server to test against (.ci/run "
    "starts one and sets it, e.g. postgresql+psycopg2://bench:bench@127.0.0.1:5432/bench_test)",
)


@pytest.fixture
def pg_study(workspace):
    """A copy of the tiny study under a name of its own, deleted from the server afterwards."""
    name = f"pg_{uuid.uuid4().hex[:12]}"
    shutil.copy(
        workspace.root / "studies" / "tiny.toml", workspace.root / "studies" / f"{name}.toml"
    )
    yield name
    with contextlib.suppress(KeyError):  # KeyError: the workers never created it
        optuna.delete_study(study_name=name, storage=POSTGRES_URL)


@pytest.mark.slow
def test_two_workers_on_postgresql_complete_every_cell_once_and_the_table_is_built(
    workspace, pg_study
):
    run = ["run", "--study", pg_study, "--storage", POSTGRES_URL, "--quiet"]
    # Started together: both race to create the study and to claim its cells.
    workers = [workspace.start_bench(*run) for _ in range(2)]
    outputs = []
    for worker in workers:
        worker.wait(timeout=400)
        outputs.append(worker.stdout.read())
    assert [w.returncode for w in workers] == [0, 0], "\n".join(outputs)

    trials = optuna.load_study(study_name=pg_study, storage=POSTGRES_URL).get_trials()
    assert [t.state.name for t in trials] == ["COMPLETE"] * 4
    assert Counter(t.user_attrs["cell"] for t in trials) == Counter(TINY_CELLS)
    ran = [line for out in outputs for line in out.splitlines() if line.startswith("  trial ")]
    assert len(ran) == len(set(ran)) == 4, outputs  # each trial run by one worker

    table = subprocess.run(
        [sys.executable, "-m", "bench", "table", pg_study, "--storage", POSTGRES_URL],
        cwd=workspace.root,
        env=workspace.env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert table.returncode == 0, table.stdout + table.stderr
    assert "cas-dm" in table.stdout and "ddpm" in table.stdout and "partial" not in table.stdout
    with (workspace.results / pg_study / "table.csv").open() as f:
        rows = [r for r in csv.DictReader(f) if r["reference"] == "false"]
    fid = {t.user_attrs["cell"]: t.user_attrs["metrics"]["fid"] for t in trials}
    assert len(rows) == 8  # 4 cells x (fid, is_mean), each from its one trial
    for row in rows:
        assert row["n"] == "1"
        if row["metric"] == "fid":
            cell = f"{row['architecture.name']} {row['metric.name']}"
            assert float(row["mean"]) == pytest.approx(fid[cell])
