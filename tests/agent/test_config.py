"""Agent configuration: sources and their precedence, the credentials file, enrolment, no leaks."""

from __future__ import annotations

import json
import logging
import stat
from pathlib import Path

import httpx
import pytest

from agent.config import (
    AgentConfig,
    ConfigError,
    Credentials,
    EnrolmentRefused,
    agent_id,
    apply_runtime_config,
    load_config,
    read_credentials,
    resolve_credentials,
    write_credentials,
)

SECRET = "f" * 64
TOKEN = "enrol-" + "e" * 40


def test_env_overrides_the_file_which_overrides_defaults(tmp_path: Path) -> None:
    toml = tmp_path / "agent.toml"
    lines = ['server_url = "http://file:1"', "health_port = 9001", "backoff_cap_s = 5"]
    lines.append(f'state_dir = "{tmp_path}"')
    toml.write_text("\n".join(lines))
    env = {"FLEET_AGENT_SERVER_URL": "http://env:2", "MOCK_MODE": "true"}
    cfg = load_config(env, toml)
    assert cfg.server_url == "http://env:2"  # env wins
    assert cfg.health_port == 9001 and cfg.backoff_cap_s == 5.0  # file beats defaults
    assert cfg.heartbeat_interval_s == 30.0 and cfg.mock is True
    assert load_config({"FLEET_AGENT_MOCK": "false", "MOCK_MODE": "true"}).mock is False


def test_settings_applied_at_run_time_sit_between_the_file_and_the_env(tmp_path: Path) -> None:
    cfg = load_config({"FLEET_AGENT_STATE_DIR": str(tmp_path)})
    new = apply_runtime_config(cfg, {"heartbeat_interval_s": 5, "metrics": ["cpu"]})
    assert new.heartbeat_interval_s == 5.0 and new.max_interval_s == 5.0 and new.metrics == ["cpu"]
    reloaded = load_config({"FLEET_AGENT_STATE_DIR": str(tmp_path)})
    assert reloaded.heartbeat_interval_s == reloaded.max_interval_s == 5.0  # kept across restarts
    env = {"FLEET_AGENT_STATE_DIR": str(tmp_path), "FLEET_AGENT_HEARTBEAT_INTERVAL_S": "7"}
    assert load_config(env).heartbeat_interval_s == 7.0
    with pytest.raises(ValueError, match="server_url"):
        apply_runtime_config(cfg, {"server_url": "http://elsewhere"})


@pytest.mark.parametrize(
    "env",
    [
        {"FLEET_AGENT_HEALTH_PORT": "eighty"},
        {"FLEET_AGENT_SERVER_URL": "ftp://x"},
        {"FLEET_AGENT_HTTP_ONLY": "maybe"},
        {"FLEET_AGENT_BACKOFF_CAP_S": "0.1"},
    ],
)
def test_bad_values_are_config_errors(env: dict[str, str], tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        load_config({**env, "FLEET_AGENT_STATE_DIR": str(tmp_path)})


def test_unknown_file_keys_are_refused(tmp_path: Path) -> None:
    toml = tmp_path / "agent.toml"
    toml.write_text("server_ulr = 'http://x'\n")
    with pytest.raises(ConfigError, match="server_ulr"):
        load_config({}, toml)


def test_the_credentials_file_is_created_0600_and_read_back(tmp_path: Path) -> None:
    path = write_credentials(tmp_path, Credentials("dev-1", SECRET, "ws-1"))
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert read_credentials(tmp_path) == Credentials("dev-1", SECRET, "ws-1")
    assert read_credentials(tmp_path / "none") is None
    assert not list(tmp_path.glob(".*.tmp"))


def test_secrets_are_absent_from_reprs_and_errors(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    env = {
        "FLEET_AGENT_DEVICE_SECRET": SECRET,
        "FLEET_AGENT_ENROLMENT_TOKEN": TOKEN,
        "FLEET_AGENT_STATE_DIR": str(tmp_path),
    }
    cfg = load_config(env)
    with caplog.at_level(logging.DEBUG):
        logging.getLogger("agent").info("config %s %r", cfg, Credentials("d", SECRET))
    for text in (repr(cfg), str(cfg), repr(Credentials("d", SECRET)), caplog.text):
        assert SECRET not in text and TOKEN not in text
    (tmp_path / "agent.toml").write_text("device_secret = 12345\n")
    with pytest.raises(ConfigError) as err:
        load_config({}, tmp_path / "agent.toml")
    assert "12345" not in str(err.value)


def _cfg(tmp_path: Path, **kw: object) -> AgentConfig:
    return AgentConfig(server_url="http://fleet.test", state_dir=tmp_path, **kw)  # type: ignore[arg-type]


async def test_operator_credentials_are_written_once_and_used(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, device_id="dev-9", device_secret=SECRET)
    async with httpx.AsyncClient(transport=httpx.MockTransport(lambda r: httpx.Response(500))) as client:
        creds = await resolve_credentials(cfg, client)
    assert creds == Credentials("dev-9", SECRET)
    assert stat.S_IMODE((tmp_path / "credentials.json").stat().st_mode) == 0o600


async def test_enrolment_persists_the_agent_id_first_and_stores_the_credentials(tmp_path: Path) -> None:
    seen: list[dict[str, object]] = []

    def server(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/api/v1/agent/enrol"
        seen.append(json.loads(request.content))
        assert (tmp_path / "agent_id").read_text().strip() == seen[-1]["agent_id"]  # kept before enrolling
        if len(seen) == 1:
            return httpx.Response(503)
        return httpx.Response(201, json={"device_id": "dev-2", "device_secret": SECRET, "workspace_id": "ws"})

    cfg = _cfg(tmp_path, enrolment_token=TOKEN, name="pi", device_type="raspberry_pi")
    async with httpx.AsyncClient(transport=httpx.MockTransport(server)) as client:
        with pytest.raises(ConnectionError):
            await resolve_credentials(cfg, client)
        creds = await resolve_credentials(cfg, client)
    assert creds == Credentials("dev-2", SECRET, "ws")
    assert seen[0]["agent_id"] == seen[1]["agent_id"] == agent_id(tmp_path)  # a retry is recognisable
    assert seen[1] == {**seen[1], "enrolment_token": TOKEN, "name": "pi", "device_type": "raspberry_pi"}
    assert read_credentials(tmp_path) == creds
    async with httpx.AsyncClient(transport=httpx.MockTransport(server)) as client:
        assert await resolve_credentials(cfg, client) == creds  # the file now, no third call
    assert len(seen) == 2


async def test_a_refused_enrolment_token_and_no_credentials_at_all_are_clear_errors(tmp_path: Path) -> None:
    refuse = httpx.MockTransport(lambda r: httpx.Response(401, json={"error": {"code": "INVALID_TOKEN"}}))
    async with httpx.AsyncClient(transport=refuse) as client:
        with pytest.raises(EnrolmentRefused, match="enrolment token"):
            await resolve_credentials(_cfg(tmp_path, enrolment_token=TOKEN), client)
        with pytest.raises(ConfigError, match="FLEET_AGENT_DEVICE_ID"):
            await resolve_credentials(_cfg(tmp_path / "other"), client)


def test_an_optional_number_is_read_from_the_environment_and_a_file(tmp_path: Path) -> None:
    """FLEET_AGENT_MAX_INTERVAL_S once crashed the agent at start (no parser for ``float | None``)."""
    env = {"FLEET_AGENT_STATE_DIR": str(tmp_path), "FLEET_AGENT_MAX_INTERVAL_S": "2.5"}
    assert load_config(env).max_interval_s == 2.5
    assert load_config({**env, "FLEET_AGENT_MAX_INTERVAL_S": ""}).max_interval_s is None
    toml = tmp_path / "agent.toml"
    toml.write_text("max_interval_s = 4\n")
    assert load_config({"FLEET_AGENT_STATE_DIR": str(tmp_path)}, toml).max_interval_s == 4.0
    with pytest.raises(ConfigError, match="max_interval_s"):
        load_config({**env, "FLEET_AGENT_MAX_INTERVAL_S": "soon"})
