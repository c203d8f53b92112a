"""Commands that need no model load no torch: the CLI imports only the chosen command's module,
and studies are checked against registry names, not their implementations."""

import subprocess
import sys
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
heavy = [m for m in ("torch", "torchvision", "sklearn", "mlflow", "lpips") if m in sys.modules]
print(",".join(heavy) or "none")
"""


def _heavy_modules_after(argvs: list[list[str]], cwd) -> str:
    done = subprocess.run(
        [sys.executable, "-c", _PROBE.format(argvs=argvs)],
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
    assert _heavy_modules_after([["--help"], ["list"]], tmp_path) == "none"


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
