"""One typed settings object, read from OCHO_* environment variables.

Everything else receives a `Settings` instance; nothing deeper in the code
reads the environment.

Invariants:
- reading is forgiving where people expect it (a log level in any case,
  booleans as 1/true/yes/on), checking is strict where it matters: every number
  has a range (`ranged`), every URL is parsed (`url`), every choice is listed
  (`choice`); a bad value is a `SettingsError` of one line naming the variable,
  the value and what is allowed, which the commands print and exit 2 on;
- a secret (`secret`, or a URL's password) never shows in `repr` or a message.

A new setting is one line: `max_queued: int = ranged(10_000, 1, 10**7)`;
likewise `url(...)`, `choice(...)`, `address(...)` (HOST:PORT) and `secret(...)`.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from ocho.errors import SettingsError
from ocho.topology import DEFAULT_DELIVERY_LIMIT, DEFAULT_MAX_QUEUED


def _shipped_tools_dir() -> Path:
    """The tools that come with the portal: ocho/tools/ in an installed wheel,
    tools/ beside the package in a checkout (and its editable install)."""
    package = Path(__file__).resolve().parent
    installed = package / "tools"
    return installed if installed.is_dir() else package.parent / "tools"


SHIPPED_TOOLS_DIR = _shipped_tools_dir()
DEFAULT_DATABASE_URL = "sqlite:///ocho.sqlite3"

# RabbitMQ's default consumer_timeout is 30 minutes; a job must always end
# (and be acked) before the broker gives up on its delivery and closes the
# channel, or the job would run twice.
BROKER_CONSUMER_TIMEOUT_S = 1800

# Room in an AMQP request body beside the files: 256 arguments of 4096 characters,
# each up to 6 bytes once JSON-escaped, and the rest of the envelope.
MESSAGE_ENVELOPE_BYTES = 8 * 1024 * 1024

# An API token shorter than this could be guessed or is a placeholder left in.
MIN_TOKEN_CHARS = 16


# Variables that keep the names Kubernetes gives them: in a pod, the
# service host and port are how the tools find the API in-cluster.
UNPREFIXED_VARIABLES = {"KUBECONFIG", "KUBERNETES_SERVICE_HOST", "KUBERNETES_SERVICE_PORT"}

LOG_FORMATS = ("text", "json")
DURATION_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


# The largest request body whose AMQP message (files in base64, plus the envelope)
# still fits RabbitMQ's default max_message_size of 128 MiB.
MAX_REQUEST_BYTES_LIMIT = 90 * 1024**2
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
KiB, MiB, GiB = 1024, 1024**2, 1024**3


def ranged(default: float, low: float, high: float) -> Any:
    """A number field allowed only from `low` to `high` (both included)."""
    return dataclasses.field(default=default, metadata={"range": (low, high)})


def url(default: str, *schemes: str, many: bool = False) -> Any:
    """A URL field with one of `schemes`; `many`: one or more, separated by ';'."""
    return dataclasses.field(default=default, metadata={"schemes": schemes, "many": many})


def choice(default: str, *choices: str, aliases: Mapping[str, str] | None = None) -> Any:
    """One of `choices`, read in any case and kept as spelled here; `aliases` map
    other spellings onto them, e.g. `choice("text", "text", "json")`."""
    return dataclasses.field(default=default, metadata={"choices": choices,
                                                        "aliases": dict(aliases or {})})


def address(default: str) -> Any:
    """A HOST:PORT field to listen on ('' allowed: not listening)."""
    return dataclasses.field(default=default, metadata={"address": True})


def secret(default: Any = "") -> Any:
    """A field whose value never shows in `repr` or in an error message."""
    return dataclasses.field(default=default, metadata={"secret": True})


@dataclasses.dataclass(frozen=True)
class Settings:
    amqp_url: str = url("amqp://guest:guest@127.0.0.1:5672/%2F", "amqp", "amqps", many=True)
    database_url: str = url(DEFAULT_DATABASE_URL, "sqlite", "postgresql", "postgres")
    tools_dir: Path = SHIPPED_TOOLS_DIR
    bind: str = address("127.0.0.1:9000")
    concurrency: int = ranged(2, 1, 256)
    heartbeat: int = ranged(30, 0, 3600)  # 0: no AMQP heartbeats
    default_timeout: int = ranged(300, 1, BROKER_CONSUMER_TIMEOUT_S - 1)
    max_timeout: int = ranged(BROKER_CONSUMER_TIMEOUT_S - 300, 1, BROKER_CONSUMER_TIMEOUT_S - 1)
    kill_grace: float = ranged(2.0, 0, 300)
    shutdown_grace: float = ranged(30.0, 0, 3600)
    output_cap: int = ranged(4 * MiB, 1 * KiB, 1 * GiB)
    output_flush_ms: int = ranged(200, 1, 60_000)
    max_request_bytes: int = ranged(32 * MiB, 1 * KiB, MAX_REQUEST_BYTES_LIMIT)
    max_files: int = ranged(64, 0, 10_000)
    max_file_bytes: int = ranged(8 * MiB, 1, MAX_REQUEST_BYTES_LIMIT)
    delivery_limit: int = ranged(DEFAULT_DELIVERY_LIMIT, 1, 1000)
    # Requests waiting in ocho.jobs at most; past it a publish is refused (HTTP 503).
    max_queued: int = ranged(DEFAULT_MAX_QUEUED, 1, 10**8)
    tool_cpu_seconds: int = ranged(0, 0, 7 * 86400)  # 0: twice the job's timeout, plus a margin
    tool_memory_bytes: int = ranged(2 * GiB, 16 * MiB, 2**62)
    tool_file_bytes: int = ranged(256 * MiB, 1 * KiB, 2**62)
    tool_open_files: int = ranged(1024, 16, 1024**2)
    tool_max_processes: int = ranged(128, 0, 100_000)  # 0: no limit of ours
    # warm: Python tools are forked from the worker's tool zygote; cold: a new interpreter.
    tool_start: str = choice("warm", "warm", "cold")
    # How long a warm start's spare (a tool process forked ahead) waits for a job; 0: none.
    tool_spare_idle_s: float = ranged(2.0, 0, 3600)
    gateway_threads: int = ranged(16, 1, 1024)
    tokens: tuple[str, ...] = secret(())
    # A file of tokens, one a line ('#' comments): read once, at start, into `tokens`.
    token_file: str = ""
    # Host names (optionally name:port) a tokenless gateway answers to; "*" for any.
    allowed_hosts: tuple[str, ...] = ()
    signature_max_age: float = ranged(300.0, 1, 86400)
    # Open connections the gateway holds at once (slow clients included).
    max_connections: int = ranged(2000, 10, 1_000_000)
    # Seconds a request's headers may take to arrive (a slowloris trickles them).
    header_timeout: float = ranged(30.0, 0.1, 3600)
    k8s_host: str = ""
    k8s_token: str = secret("")
    k8s_ca_file: str = ""
    k8s_namespace: str = ""
    k8s_insecure: bool = False
    kubeconfig: str = ""
    kubernetes_service_host: str = ""
    kubernetes_service_port: str = ""
    # Touched every few seconds while the worker consumes: its healthcheck's signal.
    liveness_file: str = ""
    log_level: str = choice("INFO", *LOG_LEVELS, aliases={"WARN": "WARNING", "FATAL": "CRITICAL"})
    log_format: str = choice("text", *LOG_FORMATS)  # text: a readable line; json: an object
    # How long ended jobs and their output are kept: 30d, 12h, 90m, 45s (a bare number
    # is days); 0 keeps them forever.
    retention: str = "30d"
    # HOST:PORT where a worker serves its Prometheus metrics; empty: not served.
    metrics_bind: str = address("")
    # How long the gateway waits for the broker to confirm a request (twice, if it was
    # already on the wire); a job left `submitting` for 3x this is its dead gateway's.
    confirm_timeout: float = ranged(10.0, 0.1, 600)
    # How often each gateway looks for jobs a dead gateway left `submitting`.
    recover_interval: float = ranged(30.0, 0.1, 86400)
    # Nodes holding a replica of each quorum queue when the portal creates it, and of the
    # cancel log stream; 0: the broker's default. Used only when the queue is created.
    quorum_group_size: int = ranged(0, 0, 99)
    stream_cluster_size: int = ranged(0, 0, 99)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: object) -> Settings:
        """Read OCHO_* variables (and KUBECONFIG); `overrides` win, e.g. from flags."""
        env = os.environ if environ is None else environ
        values: dict[str, object] = {}
        for field in dataclasses.fields(cls):
            raw = env.get(variable(field.name), "").strip()
            if raw:
                values[field.name] = _convert(field, raw)
        values.update({k: v for k, v in overrides.items() if v is not None})
        if env.get("OCHO_TOKENS"):  # set but empty (compose's default) means no tokens
            _check_tokens("OCHO_TOKENS", env["OCHO_TOKENS"].split(","))
        settings = cls(**values)  # type: ignore[arg-type]
        if settings.token_file:
            from_file = _read_token_file(settings.token_file)
            _check_tokens("OCHO_TOKEN_FILE", list(from_file))
            tokens = settings.tokens + from_file
            settings = dataclasses.replace(settings, tokens=tokens)
        settings.check()
        return settings

    def __post_init__(self) -> None:
        # Choices are stored in their canonical spelling, however they were given.
        for field in dataclasses.fields(self):
            if "choices" in field.metadata:
                object.__setattr__(self, field.name, _canonical(field, getattr(self, field.name)))

    def check(self) -> None:
        """Raise SettingsError (one line) for the first value that cannot be used."""
        for field in dataclasses.fields(self):
            _check_field(field, getattr(self, field.name))
        if self.default_timeout > self.max_timeout:
            raise SettingsError(
                f"OCHO_DEFAULT_TIMEOUT={self.default_timeout} is not allowed: it must not be "
                f"above OCHO_MAX_TIMEOUT ({self.max_timeout})")
        self.retention_seconds  # noqa: B018 - raises SettingsError for a bad value

    def __repr__(self) -> str:
        shown = (f"{f.name}={_shown(f, getattr(self, f.name))!r}" for f in dataclasses.fields(self))
        return f"Settings({', '.join(shown)})"

    @property
    def amqp_urls(self) -> tuple[str, ...]:
        """Every broker URL of OCHO_AMQP_URL (one, or several separated by ';')."""
        return tuple(part.strip() for part in self.amqp_url.split(";") if part.strip())

    @property
    def recover_after(self) -> float:
        """Seconds after which a `submitting` job is taken for left over by a dead gateway:
        a live one has had its confirm, or given up, by then."""
        return 3 * self.confirm_timeout

    @property
    def max_message_bytes(self) -> int:
        """The largest request body on AMQP: what the gateway publishes for a request of
        max_request_bytes (files in base64, 4 bytes for every 3) plus room for the
        arguments and the rest of the JSON."""
        return 4 * (self.max_request_bytes // 3 + 1) + MESSAGE_ENVELOPE_BYTES

    @property
    def retention_seconds(self) -> float:
        """OCHO_RETENTION in seconds; 0 keeps ended jobs forever."""
        raw = self.retention.strip().lower()
        unit = DURATION_UNITS.get(raw[-1:]) if raw else None
        number = raw[:-1] if unit else raw
        try:
            value = float(number) * (unit or DURATION_UNITS["d"])
        except ValueError:
            value = -1.0
        if not 0 <= value < float("inf"):
            raise SettingsError(f"OCHO_RETENTION={self.retention!r} must be a duration such "
                                "as 30d, 12h, 90m or 45s (a bare number is days), or 0 to "
                                "keep ended jobs forever")
        return value

    @property
    def bind_host(self) -> str:
        return self.bind.rsplit(":", 1)[0].strip("[]")

    @property
    def bind_port(self) -> int:
        return int(self.bind.rsplit(":", 1)[1])

    def k8s_environment(self) -> dict[str, str]:
        """The only settings a tool may see: how to reach Kubernetes."""
        env = {
            "OCHO_K8S_HOST": self.k8s_host,
            "OCHO_K8S_TOKEN": self.k8s_token,
            "OCHO_K8S_CA_FILE": self.k8s_ca_file,
            "OCHO_K8S_NAMESPACE": self.k8s_namespace,
            "OCHO_K8S_INSECURE": "1" if self.k8s_insecure else "",
            "KUBECONFIG": self.kubeconfig,
            "KUBERNETES_SERVICE_HOST": self.kubernetes_service_host,
            "KUBERNETES_SERVICE_PORT": self.kubernetes_service_port,
        }
        return {k: v for k, v in env.items() if v}


def _check_tokens(variable: str, tokens: list[str]) -> None:
    """No blank entry (it would read as "no token" and switch auth off) and nothing short
    enough to guess; the message never shows a token."""
    for index, token in enumerate(tokens, 1):
        if not token.strip():
            raise SettingsError(f"{variable}: token {index} is empty; list tokens separated "
                                "by commas, with nothing blank between them")
        if len(token.strip()) < MIN_TOKEN_CHARS:
            raise SettingsError(f"{variable}: token {index} is shorter than {MIN_TOKEN_CHARS} "
                                "characters; make tokens long and random (python -c 'import "
                                "secrets; print(secrets.token_urlsafe(32))')")


def _read_token_file(path: str) -> tuple[str, ...]:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise SettingsError(f"OCHO_TOKEN_FILE={path!r} cannot be read: {exc}") from None
    tokens = tuple(line.strip() for line in text.splitlines()
                   if line.strip() and not line.lstrip().startswith("#"))
    if not tokens:
        raise SettingsError(f"OCHO_TOKEN_FILE={path!r} holds no token (one a line)")
    return tokens


def variable(name: str) -> str:
    """The environment variable a field is read from."""
    upper = name.upper()
    return upper if upper in UNPREFIXED_VARIABLES else f"OCHO_{upper}"


_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


def _convert(field: dataclasses.Field[Any], raw: str) -> object:
    """The typed value of one variable's text; SettingsError if it has the wrong form."""
    kind = field_kind(field)
    try:
        if kind == "int":
            return int(raw)
        if kind == "float":
            return float(raw)
    except ValueError:
        raise _not_allowed(field, raw) from None
    if kind == "bool":
        if raw.lower() in _TRUE + _FALSE:
            return raw.lower() in _TRUE
        raise _not_allowed(field, raw)
    if kind == "Path":
        return Path(raw)
    if kind.startswith("tuple"):
        return tuple(part.strip() for part in raw.split(",") if part.strip())
    return raw


def field_kind(field: dataclasses.Field[Any]) -> str:
    """The field's type as written: 'int', 'Path', 'tuple[str, ...]' …"""
    kind = field.type
    return kind if isinstance(kind, str) else getattr(kind, "__name__", str(kind))


def _check_field(field: dataclasses.Field[Any], value: Any) -> None:
    if "range" in field.metadata:
        low, high = field.metadata["range"]
        if isinstance(value, bool) or not low <= value <= high:
            raise _not_allowed(field, value)
    if "schemes" in field.metadata:
        _check_urls(field, value)
    if field.metadata.get("address") and value and not _is_address(value):
        raise SettingsError(f"{variable(field.name)}={value!r} is not allowed: use HOST:PORT, "
                            "e.g. 127.0.0.1:9000 (port 0 to 65535)")


def _is_address(text: str) -> bool:
    found = re.fullmatch(r"(\[[0-9a-fA-F:.]+\]|[^:\s]*):(\d{1,5})", text)
    return found is not None and int(found.group(2)) <= 65535


def _check_urls(field: dataclasses.Field[Any], value: str) -> None:
    many = field.metadata["many"]
    parts = [part.strip() for part in value.split(";") if part.strip()] if many else [value]
    if not parts:
        raise SettingsError(f"{variable(field.name)}={value!r} is not allowed: it is empty; "
                            "give amqp://user:password@host:5672/vhost, several separated by ';'")
    for index, part in enumerate(parts, 1):
        problem = _url_problem(part, field.metadata["schemes"])
        if problem:
            which = f"URL {index} ({_mask_password(part)}): " if many else ""
            raise SettingsError(f"{variable(field.name)}={_mask_password(value)!r} is not "
                                f"allowed: {which}{problem}")


def _url_problem(text: str, schemes: tuple[str, ...]) -> str:
    """What is wrong with one URL, or '' if nothing."""
    expected = " or ".join(f"{scheme}:///" if scheme == "sqlite" else f"{scheme}://"
                           for scheme in schemes)
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError:
        return "the host or the port is not valid (a port is from 1 to 65535)"
    if parts.scheme not in schemes or not text.startswith(f"{parts.scheme}://"):
        return f"start it with {expected}"
    if parts.scheme == "sqlite":
        return "" if len(parts.path) > 1 and not parts.netloc else \
            "sqlite:///FILE needs a file path, e.g. sqlite:///ocho.sqlite3"
    if not parts.hostname:
        return "the URL has no host, e.g. amqp://user:password@127.0.0.1:5672/%2F"
    if port is not None and port <= 0:
        return "the port must be from 1 to 65535"
    return _amqp_problem(text) if parts.scheme.startswith("amqp") else ""


def _amqp_problem(text: str) -> str:
    """What pika cannot use in an AMQP URL (a host list, an unknown option), or ''."""
    if "," in text and "://" in text.split(",", 1)[1]:
        return "separate several URLs with ';', not ','"
    import pika  # here: the CLI and the tools read settings without needing pika

    try:
        pika.URLParameters(text)
    except Exception as exc:  # noqa: BLE001 - pika raises ValueError, KeyError …
        return _mask_password(f"{type(exc).__name__}: {exc}")[:200]
    return ""


def _canonical(field: dataclasses.Field[Any], value: str) -> str:
    """The choice as the field spells it, whatever the case it was given in."""
    given = str(value).strip().lower()
    given = {k.lower(): v for k, v in field.metadata["aliases"].items()}.get(given, given)
    for option in field.metadata["choices"]:
        if option.lower() == given.lower():
            return str(option)
    raise _not_allowed(field, value)


def _not_allowed(field: dataclasses.Field[Any], value: object) -> SettingsError:
    return SettingsError(f"{variable(field.name)}={_shown(field, value)!r} is not allowed: "
                         f"use {_allowed(field)}")


def _allowed(field: dataclasses.Field[Any]) -> str:
    """What a field accepts, in words."""
    if "range" in field.metadata:
        low, high = field.metadata["range"]
        what = "a whole number" if field_kind(field) == "int" else "a number"
        return f"{what} from {low:g} to {high:g}"
    if "choices" in field.metadata:
        return "one of " + ", ".join(choice.lower() for choice in field.metadata["choices"])
    if field_kind(field) == "bool":
        return "true, 1, yes or on; false, 0, no or off"
    return f"a {field_kind(field)}"


def _mask_password(text: str) -> str:
    return re.sub(r"(://[^:/@;]*:)[^@;]*@", r"\1***@", text)


def _shown(field: dataclasses.Field[Any], value: object) -> object:
    """A value as it may appear in repr and messages."""
    if field.metadata.get("secret") and value:
        return "***"
    if "schemes" in field.metadata and isinstance(value, str):
        return _mask_password(value)
    return value
