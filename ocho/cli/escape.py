"""Tool output made harmless for a terminal.

A tool's output is whatever its process wrote: escape sequences in it could
move the cursor, retitle the window, rewrite what was printed before, or hide
text (a carriage return, a bidi override). When stdout or stderr is a terminal
the CLI shows every such character as a visible escape (`\\x1b`, `\\u202e`);
newlines and tabs stay as they are, and `\\r\\n` is a newline. Piped or
redirected output is passed through byte for byte (invariant).
"""

from __future__ import annotations

# Bidirectional overrides and isolates: they reorder what a reader sees.
BIDI_CONTROLS = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
KEPT = frozenset("\n\t")


def harmless(text: str) -> str:
    text = text.replace("\r\n", "\n")
    if text.isprintable() and not any(c in BIDI_CONTROLS for c in text):
        return text  # the common case: nothing to look at twice
    return "".join(c if c in KEPT or (c.isprintable() and c not in BIDI_CONTROLS)
                   else _visible(c) for c in text)


def _visible(char: str) -> str:
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"
