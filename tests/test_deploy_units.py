"""The systemd units in deploy/systemd/: valid for systemd, one per role, restarted always, each reading the shared
environment file and its own, and running what ``make run`` runs for that role."""

from __future__ import annotations

import configparser
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tools.run import ROOT, process_table

UNITS = ROOT / "deploy" / "systemd"
SERVICES = sorted(UNITS.glob("*.service"))
APP_DIR = "/srv/triage/app"


def _unit(path: Path) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(path)
    return parser


def _run_command(name: str, env: dict[str, str]) -> str:
    """The command tools/run.py gives the program ``name``, with this checkout's paths written as in the units."""
    program = next(p for p in process_table(8000, env, run_dir=Path("/nonexistent")) if p.name == name)
    return " ".join(program.command).replace(sys.executable, f"{APP_DIR}/.venv/bin/python").replace(f"{ROOT}/", "")


def test_there_is_a_unit_for_every_role():
    names = {path.name for path in SERVICES}

    assert names == {
        "web@.service", "ingest@.service", "outbox.service", "outbox-worker.service", "writeback.service",
        "poll.service", "escalate.service",
    }  # fmt: skip


@pytest.mark.parametrize("path", SERVICES, ids=lambda p: p.name)
def test_unit_restarts_always_as_the_dedicated_user_with_its_environment_files(path):
    service = _unit(path)["Service"]

    assert service["Restart"] == "always"
    assert float(service["RestartSec"]) > 0
    assert (service["User"], service["Group"]) == ("triage", "triage")
    assert "EnvironmentFile" in service
    assert _unit(path)["Install"]["WantedBy"] == "triage.target"


@pytest.mark.parametrize(
    ("unit", "program", "env"),
    [
        ("ingest@.service", "ingest", {"TRIAGE_ROLES": "ingest"}),
        ("outbox-worker.service", "outbox-worker", {"TRIAGE_ROLES": "outbox"}),
        ("outbox.service", "outbox", {"TRIAGE_ROLES": "outbox"}),
        ("writeback.service", "writeback", {"TRIAGE_ROLES": "outbox"}),
        ("poll.service", "poll", {"TRIAGE_ROLES": "loops"}),
        ("escalate.service", "escalate", {"TRIAGE_ROLES": "loops"}),
    ],
)
def test_unit_runs_what_make_run_runs_for_its_role(unit, program, env):
    exec_start = _unit(UNITS / unit)["Service"]["ExecStart"]

    assert exec_start == _run_command(program, {**env, "REDIS_URL": "redis://127.0.0.1:1/0"})


def test_units_are_valid_for_systemd(tmp_path):
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed")
    # The units name the production paths and user; checked here with ones that exist on this machine.
    replacements = {f"{APP_DIR}/.venv/bin/python": sys.executable, APP_DIR: str(ROOT), "=triage\n": "=root\n"}
    for path in [*SERVICES, UNITS / "triage.target"]:
        text = path.read_text()
        for old, new in replacements.items():
            text = text.replace(old, new)
        (tmp_path / path.name.replace("@.", "@8001.")).write_text(text)
    units = sorted(str(p) for p in tmp_path.iterdir())

    checked = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", *units], capture_output=True, text=True, timeout=120, check=False
    )

    assert (checked.returncode, checked.stdout + checked.stderr) == (0, "")
