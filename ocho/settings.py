"""One typed settings object, read from OCHO_* environment variables.

Everything else receives a `Settings` instance; nothing deeper in the code
reads the environment.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from pathlib import Path

import pika

from ocho.errors import SettingsError
from ocho.topology import DEFAULT_DELIVERY_LIMIT, DEFAULT_MAX_QUEUED

SHIPPED_TOOLS_DIR = Path(__file__).resolve().parent.parent / "tools"
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


@dataclasses.dataclass(frozen=True)
class Settings:
    amqp_url: str = "amqp://guest:guest@127.0.0.1:5672/%2F"
    database_url: str = DEFAULT_DATABASE_URL
    tools_dir: Path = SHIPPED_TOOLS_DIR
    bind: str = "127.0.0.1:9000"
    concurrency: int = 2
    heartbeat: int = 30
    default_timeout: int = 300
    max_timeout: int = BROKER_CONSUMER_TIMEOUT_S - 300
    kill_grace: float = 2.0
    shutdown_grace: float = 30.0
    output_cap: int = 4 * 1024 * 1024
    output_flush_ms: int = 200
    max_request_bytes: int = 32 * 1024 * 1024
    max_files: int = 64
    max_file_bytes: int = 8 * 1024 * 1024
    delivery_limit: int = DEFAULT_DELIVERY_LIMIT
    # Requests waiting in ocho.jobs at most; past it a publish is refused (HTTP 503).
    max_queued: int = DEFAULT_MAX_QUEUED
    tool_cpu_seconds: int = 0  # 0: twice the job's timeout, plus a margin
    tool_memory_bytes: int = 2 * 1024**3
    tool_file_bytes: int = 256 * 1024**2
    tool_open_files: int = 1024
    tool_max_processes: int = 128
    gateway_threads: int = 16
    tokens: tuple[str, ...] = ()
    # A file of tokens, one a line ('#' comments): read once, at start, into `tokens`.
    token_file: str = ""
    # Host names (optionally name:port) a tokenless gateway answers to; "*" for any.
    allowed_hosts: tuple[str, ...] = ()
    signature_max_age: float = 300.0
    # Open connections the gateway holds at once (slow clients included).
    max_connections: int = 2000
    # Seconds a request's headers may take to arrive (a slowloris trickles them).
    header_timeout: float = 30.0
    k8s_host: str = ""
    k8s_token: str = ""
    k8s_ca_file: str = ""
    k8s_namespace: str = ""
    k8s_insecure: bool = False
    kubeconfig: str = ""
    kubernetes_service_host: str = ""
    kubernetes_service_port: str = ""
    log_level: str = "INFO"
    log_format: str = "text"  # text: one readable line per event; json: one object a line
    # How long ended jobs and their output are kept: 30d, 12h, 90m, 45s (a bare number
    # is days); 0 keeps them forever.
    retention: str = "30d"
    # HOST:PORT where a worker serves its Prometheus metrics; empty: not served.
    metrics_bind: str = ""
    # How long the gateway waits for the broker to confirm a request (twice, if it was
    # already on the wire); a job left `submitting` for 3× this is its dead gateway's.
    confirm_timeout: float = 10.0
    # How often each gateway looks for jobs a dead gateway left `submitting`.
    recover_interval: float = 30.0
    # Nodes holding a replica of each quorum queue when the portal creates it, and of the
    # cancel log stream; 0: the broker's default. Used only when the queue is created.
    quorum_group_size: int = 0
    stream_cluster_size: int = 0

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: object) -> Settings:
        """Read OCHO_* variables (and KUBECONFIG); `overrides` win, e.g. from flags."""
        env = os.environ if environ is None else environ
        values: dict[str, object] = {}
        for field in dataclasses.fields(cls):
            name = field.name.upper()
            if name not in UNPREFIXED_VARIABLES:
                name = f"OCHO_{name}"
            raw = env.get(name)
            if raw is None or raw == "":
                continue
            values[field.name] = _convert(name, raw, field.type)
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

    def check(self) -> None:
        if self.concurrency < 1:
            raise SettingsError("OCHO_CONCURRENCY must be at least 1")
        if not 0 < self.default_timeout <= self.max_timeout:
            raise SettingsError(
                f"OCHO_DEFAULT_TIMEOUT must be between 1 and OCHO_MAX_TIMEOUT ({self.max_timeout})"
            )
        if self.max_timeout >= BROKER_CONSUMER_TIMEOUT_S:
            raise SettingsError(
                f"OCHO_MAX_TIMEOUT must stay below RabbitMQ's consumer_timeout "
                f"({BROKER_CONSUMER_TIMEOUT_S} s) so a running job is never redelivered"
            )
        if self.max_queued < 1:
            raise SettingsError("OCHO_MAX_QUEUED must be at least 1 (requests waiting in "
                                "ocho.jobs)")
        if self.output_cap < 1024:
            raise SettingsError("OCHO_OUTPUT_CAP must be at least 1024 bytes")
        if self.signature_max_age <= 0:
            raise SettingsError("OCHO_SIGNATURE_MAX_AGE must be a positive number of seconds")
        if self.max_connections < 10:
            raise SettingsError("OCHO_MAX_CONNECTIONS must be at least 10")
        if self.header_timeout <= 0:
            raise SettingsError("OCHO_HEADER_TIMEOUT must be a positive number of seconds")
        if ":" not in self.bind:
            raise SettingsError("OCHO_BIND must look like HOST:PORT, e.g. 127.0.0.1:9000")
        if self.log_format.lower() not in LOG_FORMATS:
            raise SettingsError(f"OCHO_LOG_FORMAT={self.log_format!r}: use text or json")
        self.retention_seconds  # noqa: B018 - raises SettingsError for a bad value
        if self.metrics_bind and not _is_host_port(self.metrics_bind):
            raise SettingsError(f"OCHO_METRICS_BIND={self.metrics_bind!r} must look like "
                                "HOST:PORT, e.g. 127.0.0.1:9101 (empty: no metrics)")
        self.amqp_urls  # noqa: B018 - raises SettingsError naming a malformed URL
        if self.quorum_group_size < 0 or self.stream_cluster_size < 0:
            raise SettingsError("OCHO_QUORUM_GROUP_SIZE and OCHO_STREAM_CLUSTER_SIZE must be "
                                "0 (the broker's default) or a number of nodes")
        if not (self.confirm_timeout > 0 and self.recover_interval > 0):
            raise SettingsError("OCHO_CONFIRM_TIMEOUT and OCHO_RECOVER_INTERVAL must be "
                                "positive numbers of seconds")

    @property
    def amqp_urls(self) -> tuple[str, ...]:
        """The broker nodes of OCHO_AMQP_URL: one or more URLs separated by `;` (kombu's
        convention). SettingsError names the first malformed one, without its password."""
        urls = tuple(url.strip() for url in self.amqp_url.split(";") if url.strip())
        if not urls:
            raise SettingsError("OCHO_AMQP_URL is empty: give amqp://user:password@host:5672/"
                                "vhost, several separated by ';'")
        for index, url in enumerate(urls, 1):
            _check_amqp_url(index, url)
        return urls

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


def _check_amqp_url(index: int, url: str) -> None:
    password = url.partition("://")[2].partition("@")[0].partition(":")[2]
    shown = _without_password(url).replace(password, "***") if password else url
    problem = ""
    if not url.startswith(("amqp://", "amqps://")):
        problem = "it must start with amqp:// or amqps://"
    elif "," in url and "://" in url.split(",", 1)[1]:
        problem = "separate several URLs with ';', not ','"
    else:
        try:
            pika.URLParameters(url)
        except Exception as exc:  # noqa: BLE001 - pika raises ValueError, KeyError …
            problem = f"{type(exc).__name__}: {exc}"[:200]
            problem = problem.replace(password, "***") if password else problem
    if problem:
        raise SettingsError(f"OCHO_AMQP_URL: URL {index} ({shown}) is malformed: {problem}; "
                            "write amqp://user:password@host:5672/vhost, several separated "
                            "by ';'")


def _without_password(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    userinfo, at, host = rest.partition("@")
    if not at:
        return url
    return f"{scheme}{sep}{userinfo.split(':', 1)[0]}:***@{host}"


def _is_host_port(value: str) -> bool:
    host, _, port = value.rpartition(":")
    return bool(host) and port.isdigit() and 0 < int(port) < 65536


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


def _convert(name: str, raw: str, kind: object) -> object:
    kind_name = kind if isinstance(kind, str) else getattr(kind, "__name__", str(kind))
    try:
        if kind_name == "int":
            return int(raw)
        if kind_name == "float":
            return float(raw)
        if kind_name == "bool":
            if raw.lower() in ("1", "true", "yes", "on"):
                return True
            if raw.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(raw)
        if kind_name == "Path":
            return Path(raw)
        if kind_name.startswith("tuple"):
            return tuple(part.strip() for part in raw.split(",") if part.strip())
    except ValueError:
        raise SettingsError(f"{name}={raw!r} is not a valid {kind_name}") from None
    return raw
