"""Commands that need no model load no torch: the CLI imports only the chosen command's module,
and studies are checked against registry names, not their implementations."""

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from casdm.components import registry

STUDIES = Path(__file__).parent / "studies"

# Run in a fresh interpreter: this test process has torch loaded already.
_PROBE = """
import contextlib, io, sys
from bench.cli import main
for argv in {argvs!r}:
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        try:
            code = main(argv)
        except SystemExit as exit:
            code = exit.code
    assert code == 0, (argv, code)
heavy = [m for m in {heavy!r} if m in sys.modules]
print(",".join(heavy) or "none")
"""
HEAVY = ("torch", "torchvision", "sklearn", "mlflow", "lpips")


def _heavy_modules_after(argvs: list[list[str]], cwd, heavy: tuple[str, ...] = HEAVY) -> str:
    done = subprocess.run(
        [sys.executable, "-c", _PROBE.format(argvs=argvs, heavy=heavy)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_help_and_list_import_no_torch(tmp_path):
    studies = tmp_path / "studies"
    studies.mkdir()
    for name in ("tiny", "search"):
        (studies / f"{name}.toml").write_text((STUDIES / f"{name}.toml").read_text())
    (studies / "broken.toml").write_text('[base.architecture]\nname = "nope"\n')
    # `bench run` parses its options without torch (its MLflow sidecar starts before torch).
    argvs = [["--help"], ["list"], ["run", "--help"]]
    assert _heavy_modules_after(argvs, tmp_path) == "none"


def _finished_tiny_study(workspace: Path) -> None:
    """studies/tiny.toml and an Optuna storage holding its four cells, complete, as `bench run`
    records them (cell, params, metrics, meta, the real-data row)."""
    import optuna

    from bench.results import open_storage, storage_url_for
    from bench.study import load_study

    (workspace / "studies").mkdir()
    (workspace / "studies" / "tiny.toml").write_text((STUDIES / "tiny.toml").read_text())
    study = load_study(STUDIES / "tiny.toml")
    storage = open_storage(storage_url_for(workspace / "results"), create=True)
    stored = optuna.create_study(study_name="tiny", storage=storage)
    stored.set_user_attr("total_cells", study.size)
    stored.set_user_attr("meta", {"dataset": "digits", "evaluator": "classifier:digits"})
    stored.set_user_attr("reference_metrics", {"fid": 1.5, "is_mean": 9.0})
    for number, params in enumerate(study.cells()):
        metrics = {"fid": 40.0 + number, "is_mean": 2.0, "sfid": 9.0, "kid": 0.01}
        attrs = {"params": params, "cell": study.cell_name(params), "metrics": metrics}
        stored.add_trial(optuna.trial.create_trial(value=metrics["fid"], user_attrs=attrs))


def test_show_and_table_import_no_torch_no_pandas_and_no_optuna_once_read(tmp_path):
    """`bench show` and `bench table` read the trials as records: no model, no pandas, no
    scipy.stats. Once a finished study has been read, later reads come from its snapshot
    (bench.record_cache) and import no Optuna either."""
    _finished_tiny_study(tmp_path)
    heavy = (*HEAVY, "pandas", "scipy.stats")
    commands = [["show", "tiny"], ["table", "tiny", "--metrics", "fid,is"]]
    assert _heavy_modules_after(commands, tmp_path, heavy) == "none"
    database = tmp_path / "results" / "optuna.db"
    finished = time.time() - 60  # the study ended a minute ago: no write can be in flight
    os.utime(database, (finished, finished))
    assert _heavy_modules_after(commands[:1], tmp_path, heavy) == "none"  # takes the snapshot
    assert _heavy_modules_after(commands, tmp_path, (*heavy, "optuna")) == "none"


def test_a_bad_registry_name_is_reported_without_torch(tmp_path):
    """`bench list` still checks names (here a bad one) from the components' specs alone."""
    probe = (
        "import sys\n"
        "from bench.study import load_study\n"
        "from casdm.errors import InputError\n"
        "try:\n"
        f"    load_study({str(STUDIES / 'tiny.toml')!r}, ['architecture.name=nope'])\n"
        "except InputError as err:\n"
        "    print('valid architectures: cas-dm, ddpm, dual, x0-ddpm' in str(err))\n"
        "print('torch' in sys.modules)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert done.stdout.split() == ["True", "False"], done.stderr


@pytest.mark.parametrize(
    "kind", ["architecture", "metric", "sampler", "dataset", "schedule", "evaluator"]
)
def test_every_component_resolves_to_a_callable(kind):
    import bench.evaluation  # noqa: F401  (defines the evaluator kind)

    components = registry(kind)
    assert len(components) >= 2
    for name in components:
        component = components.get(name)
        assert component.kind == kind and component.name == name
        assert callable(component.load()), (kind, name)


def test_the_bench_command_exits_with_mains_code_once_the_collector_is_frozen(monkeypatch):
    import bench.cli

    calls = []
    monkeypatch.setattr(bench.cli, "main", lambda: calls.append("main") or 2)
    monkeypatch.setattr(bench.cli.gc, "freeze", lambda: calls.append("freeze"))
    with pytest.raises(SystemExit) as exit:
        bench.cli.console()
    assert exit.value.code == 2 and calls == ["main", "freeze"]


def test_python_m_bench_exits_with_the_commands_code(tmp_path):
    """Through bench.cli.console, as users run it: bad input is exit 2 with its message."""
    (tmp_path / "studies").mkdir()
    done = subprocess.run(
        [sys.executable, "-m", "bench", "show", "nosuch"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stderr.startswith("error:") and "nosuch" in done.stderr
