"""One typed settings object, read from OCHO_* environment variables.

Everything else receives a `Settings` instance; nothing deeper in the code
reads the environment.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from pathlib import Path

from ocho.errors import SettingsError
from ocho.topology import DEFAULT_DELIVERY_LIMIT

SHIPPED_TOOLS_DIR = Path(__file__).resolve().parent.parent / "tools"
DEFAULT_DATABASE_URL = "sqlite:///ocho.sqlite3"

# RabbitMQ's default consumer_timeout is 30 minutes; a job must always end
# (and be acked) before the broker gives up on its delivery and closes the
# channel, or the job would run twice.
BROKER_CONSUMER_TIMEOUT_S = 1800

# Room in an AMQP request body beside the files: 256 arguments of 4096 characters,
# each up to 6 bytes once JSON-escaped, and the rest of the envelope.
MESSAGE_ENVELOPE_BYTES = 8 * 1024 * 1024


# Variables that keep the names Kubernetes gives them: in a pod, the
# service host and port are how the tools find the API in-cluster.
UNPREFIXED_VARIABLES = {"KUBECONFIG", "KUBERNETES_SERVICE_HOST", "KUBERNETES_SERVICE_PORT"}


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
    tool_cpu_seconds: int = 0  # 0: twice the job's timeout, plus a margin
    tool_memory_bytes: int = 2 * 1024**3
    tool_file_bytes: int = 256 * 1024**2
    tool_open_files: int = 1024
    tool_max_processes: int = 128
    # warm: Python tools are forked from the worker's tool zygote; cold: a new interpreter.
    tool_start: str = "warm"
    gateway_threads: int = 16
    tokens: tuple[str, ...] = ()
    # A file of tokens, one a line ('#' comments): read once, at start, into `tokens`.
    token_file: str = ""
    k8s_host: str = ""
    k8s_token: str = ""
    k8s_ca_file: str = ""
    k8s_namespace: str = ""
    k8s_insecure: bool = False
    kubeconfig: str = ""
    kubernetes_service_host: str = ""
    kubernetes_service_port: str = ""
    log_level: str = "INFO"

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
        settings = cls(**values)  # type: ignore[arg-type]
        if settings.token_file:
            tokens = settings.tokens + _read_token_file(settings.token_file)
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
        if self.output_cap < 1024:
            raise SettingsError("OCHO_OUTPUT_CAP must be at least 1024 bytes")
        if self.tool_start not in ("warm", "cold"):
            raise SettingsError(f"OCHO_TOOL_START must be warm or cold, not {self.tool_start!r}")
        if ":" not in self.bind:
            raise SettingsError("OCHO_BIND must look like HOST:PORT, e.g. 127.0.0.1:9000")

    @property
    def max_message_bytes(self) -> int:
        """The largest request body on AMQP: what the gateway publishes for a request of
        max_request_bytes (files in base64, 4 bytes for every 3) plus room for the
        arguments and the rest of the JSON."""
        return 4 * (self.max_request_bytes // 3 + 1) + MESSAGE_ENVELOPE_BYTES

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
