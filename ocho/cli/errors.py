"""The CLI's exit statuses and its one error type.

Invariant: every failure the CLI reports on purpose is a CliError carrying the
exit status to end with; nothing else here imports anything.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_TIMED_OUT = 124
EXIT_REFUSED = 125  # ocho usage error, bad request, unknown job or tool, job rejected
EXIT_UNAVAILABLE = 126  # the gateway cannot be reached or used, or failed to run the tool
EXIT_SIGNAL_BASE = 128  # + N: the tool was killed by signal N
EXIT_INTERRUPTED = 130  # the job was cancelled, or you detached from it with Ctrl-C


class CliError(Exception):
    """Something to say in one line on stderr, and the exit status to end with."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def refused(message: str) -> CliError:
    return CliError(message, EXIT_REFUSED)


def unavailable(message: str) -> CliError:
    return CliError(message, EXIT_UNAVAILABLE)
