"""The house rules, enforced: import-linter's layer contracts (.importlinter), ruff's lint and format, and one
declaration per option (the Typer commands are built from the config dataclasses)."""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, run_hvdat

BIN = Path(sys.executable).parent


def _run(*argv: str, cwd: Path = REPO, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(a) for a in argv], capture_output=True, text=True, cwd=cwd, env={**os.environ, **(env or {})}, timeout=300
    )


def test_import_contracts_are_kept():
    proc = _run(BIN / "lint-imports", "--no-cache", env={"PYTHONPATH": str(REPO)})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 broken" in proc.stdout and "6 kept" in proc.stdout, proc.stdout


@pytest.mark.parametrize(
    "module, line, contract",
    [
        ("hvdat/data/registry.py", "import rich\n", "The maths"),
        ("hvdat/launch/argv.py", "import torch\n", "The launcher imports no torch"),
        ("hvdat/eval/run.py", "from ..train import config as _train_config\n", "do not import each other"),
        ("hvdat/train/worker.py", "from ..cli import app as _app\n", "Workers never import"),
        ("hvdat/schedule.py", "from . import optim as _optim\n", "No import cycles"),
    ],
)
def test_a_forbidden_import_breaks_its_contract(tmp_path, module, line, contract):
    """The contracts can fail: a copy of the tree with one forbidden import added is rejected, naming the rule."""
    shutil.copytree(REPO / "hvdat", tmp_path / "hvdat", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / ".importlinter", tmp_path / ".importlinter")
    if contract == "No import cycles":  # optim -> schedule closes a cycle schedule -> optim
        (tmp_path / "hvdat/optim.py").write_text(
            (tmp_path / "hvdat/optim.py").read_text() + "\nfrom . import schedule as _schedule\n"
        )
    target = tmp_path / module
    target.write_text(target.read_text() + "\n" + line)
    proc = _run(BIN / "lint-imports", "--no-cache", cwd=tmp_path, env={"PYTHONPATH": str(tmp_path)})
    assert proc.returncode != 0, proc.stdout
    report = " ".join(proc.stdout.split())  # contract names wrap across lines
    assert "0 broken" not in report and f"{contract}" in report.split("Broken contracts")[-1], proc.stdout


def test_ruff_check_passes():
    proc = _run(BIN / "ruff", "check", ".")
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_ruff_format_check_passes():
    proc = _run(BIN / "ruff", "format", "--check", ".")
    assert proc.returncode == 0, proc.stdout + proc.stderr


def _declared(cls) -> set:
    from hvdat.options import declared_options

    return {name.replace("_", "-") for name in declared_options(cls)}


def test_every_declared_option_reaches_its_command_and_the_config_defaults_are_the_commands():
    """One source: each command's options are exactly the declared fields, and a command line with no options builds
    the dataclass's own defaults."""
    from hvdat.cli import options
    from hvdat.eval.config import EvalConfig
    from hvdat.launch import LaunchSpec
    from hvdat.train.config import TrainConfig

    help_text = run_hvdat("train", "--help", env={"COLUMNS": "300"}, check=True).stdout
    for name in _declared(TrainConfig) | _declared(LaunchSpec):
        assert f"--{name}" in help_text, name
    for cls in (TrainConfig, LaunchSpec, EvalConfig):
        defaults = {p.name: p.default for p in options.parameters(cls)}
        built = options.build(cls, defaults)
        assert built == cls(), cls.__name__
    assert {f.name for f in dataclasses.fields(TrainConfig)} - {p.name for p in options.parameters(TrainConfig)} == {
        "milestones",
        "np",
    }  # not options: a fixed schedule detail, and the launch's --np recorded
