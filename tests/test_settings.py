"""Settings as an operator meets them: forgiving where people expect it, a one-line
error (exit 2, no traceback) naming the variable, the value and what is allowed
where a value cannot work, and secrets never shown."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ocho.errors import SettingsError
from ocho.settings import Settings, field_kind, variable

BIN = Path(sys.executable).parent


def settings(**env: str) -> Settings:
    return Settings.from_env({f"OCHO_{k.upper()}": v for k, v in env.items()})


def test_every_number_has_a_range():
    """A new numeric setting must say what it allows: `x: int = ranged(5, 1, 100)`."""
    unranged = [variable(f.name) for f in dataclasses.fields(Settings)
                if field_kind(f) in ("int", "float") and "range" not in f.metadata]
    assert unranged == []


@pytest.mark.parametrize("given, level", [("info", "INFO"), ("Debug", "DEBUG"),
                                          (" warn ", "WARNING"), ("ERROR", "ERROR")])
def test_log_level_in_any_case(given: str, level: str):
    assert settings(log_level=given).log_level == level


@pytest.mark.parametrize("given, expected", [("1", True), ("yes", True), ("TRUE", True),
                                             ("on", True), ("0", False), ("no", False),
                                             ("False", False)])
def test_booleans_read_as_people_write_them(given: str, expected: bool):
    assert settings(k8s_insecure=given).k8s_insecure is expected


@pytest.mark.parametrize("name, value, allowed", [
    ("concurrency", "-3", "from 1 to 256"),
    ("gateway_threads", "0", "from 1 to 1024"),
    ("max_files", "-5", "from 0 to 10000"),
    ("kill_grace", "-1", "from 0 to 300"),
    ("heartbeat", "-3", "from 0 to 3600"),
    ("heartbeat", "often", "from 0 to 3600"),
    ("log_level", "verbose", "one of debug, info, warning, error, critical"),
    ("k8s_insecure", "maybe", "true, 1, yes or on"),
    ("amqp_url", "amqp//localhost", "amqp://"),
    ("amqp_url", "amqp://guest:guest@127.0.0.1:5672/%2F;http://other", "amqp://"),
    ("amqp_url", "amqp://guest:guest@127.0.0.1:99999/%2F", "port"),
    ("database_url", "mysql://db/ocho", "sqlite:///"),
    ("database_url", "sqlite:///", "file path"),
    ("bind", "9000", "HOST:PORT"),
])
def test_bad_value_is_one_line_naming_variable_value_and_what_is_allowed(
        name: str, value: str, allowed: str):
    with pytest.raises(SettingsError) as caught:
        settings(**{name: value})
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"{variable(name)}=")
    assert allowed in message
    assert value.split(":", 2)[0] in message


def test_amqp_url_is_a_list_separated_by_semicolons():
    both = settings(amqp_url="amqp://a:p@10.0.0.1:5672/%2F; amqps://b:q@host-2/v")
    assert both.amqp_urls == ("amqp://a:p@10.0.0.1:5672/%2F", "amqps://b:q@host-2/v")
    assert settings().amqp_urls == (Settings().amqp_url,)


def test_secrets_are_hidden_in_repr_and_errors():
    shown = repr(settings(amqp_url="amqp://ocho:brokerpw@rabbit:5672/%2F",
                          database_url="postgresql://ocho:dbpw@db/ocho",
                          tokens="tok-one-0123456789,tok-two-0123456789", k8s_token="k8s-secret"))
    for secret in ("brokerpw", "dbpw", "tok-one-0123456789", "tok-two-0123456789", "k8s-secret"):
        assert secret not in shown
    assert "rabbit:5672" in shown  # the rest stays readable
    with pytest.raises(SettingsError) as caught:
        settings(amqp_url="amqp://ocho:brokerpw@rabbit:0/%2F;ftp://x:pw2@y")
    assert "brokerpw" not in str(caught.value) and "pw2" not in str(caught.value)


def run(command: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / command)], env={**os.environ, **env}, capture_output=True,
                          text=True, timeout=60)


@pytest.mark.parametrize("command", ["ocho-worker", "ocho-gateway"])
@pytest.mark.parametrize("variable_name, value", [
    ("OCHO_CONCURRENCY", "-3"),
    ("OCHO_AMQP_URL", "amqp://guest:guest@localhost:notaport/%2F"),
    ("OCHO_LOG_LEVEL", "verbose"),
])
def test_commands_exit_2_with_one_line_on_a_bad_setting(command: str, variable_name: str,
                                                        value: str):
    done = run(command, **{variable_name: value})
    assert done.returncode == 2, done.stderr
    assert done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    assert lines[0].startswith(f"{command}: {variable_name}=")
