"""Log lines that say what happened and nothing else: control characters in a
message (a newline in a tool argument, an ESC from a YAML key, a NUL) are written
escaped, as `\\n`, `\\x1b`, `\\x00`, so no input can forge a log line or reach an
operator's terminal as a control sequence.

`EscapeControl` is a logging filter: put it on a handler (`install` puts it on the
root logger's handlers) and it rewrites each record's message before any formatter
sees it, so it composes with whatever format the handler has. Tracebacks keep
their lines: only the message is escaped.
"""

from __future__ import annotations

import logging

_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
# C0 controls, DEL, C1 controls and the Unicode line and paragraph separators.
_CONTROL = [*range(0x00, 0x20), 0x7F, *range(0x80, 0xA0), 0x2028, 0x2029]
_ESCAPES = {code: _NAMED.get(chr(code), f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")
            for code in _CONTROL}


def escape(text: str) -> str:
    """`text` with every control character written as an escape."""
    return text.translate(_ESCAPES)


class EscapeControl(logging.Filter):
    """Rewrites a record's message with its control characters escaped; drops nothing."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        escaped = escape(message)
        if escaped != message:
            record.msg, record.args = escaped, None
        return True


def install(logger: logging.Logger | None = None) -> None:
    """Escape control characters on every handler of `logger` (the root by default)."""
    for handler in (logger or logging.getLogger()).handlers:
        if not any(isinstance(f, EscapeControl) for f in handler.filters):
            handler.addFilter(EscapeControl())
