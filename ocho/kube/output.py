"""How tools print: aligned tables for people, one JSON document for machines."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, TextIO


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Columns padded to their widest cell; the last column is not padded."""
    cells = [[str(cell) for cell in row] for row in [headers, *rows]]
    widths = [max(len(row[index]) for row in cells) for index in range(len(headers))]
    lines = []
    for row in cells:
        padded = [cell.ljust(width) for cell, width in zip(row[:-1], widths, strict=False)]
        lines.append("  ".join([*padded, row[-1]]).rstrip())
    return "\n".join(lines)


def age(since: datetime | None, now: datetime | None = None) -> str:
    """`45s`, `3m`, `5h`, `2d`: how long ago, the way kubectl shows it."""
    if since is None:
        return "-"
    now = now or datetime.now(UTC)
    if since.tzinfo is None:
        since = since.replace(tzinfo=UTC)
    seconds = max(0, int((now - since).total_seconds()))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def emit_json(document: Any, stream: TextIO | None = None) -> None:
    """One JSON document on one line: easy to split from other output."""
    out = stream or sys.stdout
    out.write(json.dumps(document, separators=(",", ":"), default=str, ensure_ascii=False))
    out.write("\n")
