"""Every error the portal raises on purpose, in one place."""

from __future__ import annotations


class OchoError(Exception):
    """Base of all portal errors; the message is meant for a person."""


class SettingsError(OchoError):
    """An OCHO_* variable or flag has a value that cannot be used."""


class InvalidRequest(OchoError):
    """A job request is malformed; `field` names what is wrong."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class UnknownTool(InvalidRequest):
    """The request names a tool that is not in the catalog."""

    def __init__(self, tool: str, known: list[str]) -> None:
        listing = ", ".join(known) if known else "none installed"
        super().__init__(f"unknown tool {tool!r}; available tools: {listing}", field="tool")
        self.tool = tool
        self.known = list(known)


class BrokerUnavailable(OchoError):
    """RabbitMQ cannot be reached or did not confirm a publish."""


class PublishRejected(OchoError):
    """The broker refused a message (nacked or returned it as unroutable)."""


class JobNotFound(OchoError):
    """No job has that id. The message names only the id; each interface (HTTP, CLI)
    adds how its user finds the jobs there are."""

    def __init__(self, job_id: str) -> None:
        super().__init__(f"no job {job_id!r}")
        self.job_id = job_id


class PayloadTooLarge(InvalidRequest):
    """A request, an uploaded file or their number is over a configured limit."""


class JobConflict(OchoError):
    """The job exists but is in a state that does not allow the operation."""


class StoreUnavailable(OchoError):
    """The job store (SQLite file or PostgreSQL) cannot be reached or is too busy."""
