"""Settings come from <SERVICE>_* variables, shared ones unprefixed, with errors naming variables."""

from __future__ import annotations

import pytest

from libs.events.settings import ServiceSettings, SettingsError, consumer_name, load_settings
from services.device.config import Settings as DeviceSettings


def test_prefixed_wins_over_shared_and_defaults_apply() -> None:
    env = {"REDIS_URL": "redis://shared", "DEVICE_REDIS_URL": "redis://own", "DATABASE_URL": "postgresql://x"}
    s = load_settings(DeviceSettings, "device", env)
    assert s.redis_url == "redis://own"
    assert s.database_url == "postgresql://x"
    assert s.port == 8004


def test_types_are_converted_from_strings() -> None:
    env = {"REDIS_URL": "r", "DATABASE_URL": "d", "DEVICE_PORT": "9000", "DEVICE_RELAY_POLL_S": "0.5"}
    s = load_settings(DeviceSettings, "device", env)
    assert (s.port, s.relay_poll_s) == (9000, 0.5)


def test_missing_required_settings_are_all_named() -> None:
    with pytest.raises(SettingsError) as err:
        load_settings(ServiceSettings, "auth", {})
    msg = str(err.value)
    assert "AUTH_REDIS_URL (or REDIS_URL)" in msg
    assert "AUTH_DATABASE_URL (or DATABASE_URL)" in msg


def test_bad_value_names_the_variable() -> None:
    with pytest.raises(SettingsError, match="DEVICE_PORT: Expected `int`"):
        load_settings(DeviceSettings, "device", {"REDIS_URL": "r", "DATABASE_URL": "d", "DEVICE_PORT": "x"})


def test_non_shared_fields_are_never_taken_unprefixed() -> None:
    s = load_settings(DeviceSettings, "device", {"REDIS_URL": "r", "DATABASE_URL": "d", "PORT": "1"})
    assert s.port == 8004


def test_consumer_name_defaults_to_service_host_pid() -> None:
    assert consumer_name("device", "fixed") == "fixed"
    assert consumer_name("device").startswith("device-")
