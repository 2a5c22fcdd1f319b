"""A job's output as events: raw pipe bytes from the tool's stdout and stderr turned
into ordered `output` events, capped and batched.

Invariants: text is decoded as UTF-8 per stream (a character split across reads
is kept whole, invalid bytes are replaced); offsets count the UTF-8 bytes kept so
far, across streams, so the chunks of a job never overlap nor leave gaps; at most
the output cap minus TRUNCATION_NOTE_ROOM is kept (the rest is counted in
`produced` only, and `truncated` says so); a chunk is sent once it reaches MAX_CHUNK_BYTES,
holds one stream, and is due (`due`) once it waited the flush interval. What is
still pending when the tool ends rides in the `finished` event (`tail`) instead.
"""

from __future__ import annotations

import codecs
import time
from collections.abc import Callable
from typing import Any

# Size of one `output` event at most.
MAX_CHUNK_BYTES = 1024 * 1024
# Room kept below the cap for the note that says the output was truncated.
TRUNCATION_NOTE_ROOM = 256

Emit = Callable[[str, int, str], None]  # (stream, offset, data)
Chunk = dict[str, Any]  # {stream, offset, data}: output that rides in the `finished` event


class OutputSink:
    """Turns raw pipe bytes into ordered `output` events, capped and batched."""

    def __init__(self, emit: Emit, cap: int, flush_seconds: float) -> None:
        self._emit = emit
        self._limit = cap - TRUNCATION_NOTE_ROOM
        self._flush_seconds = flush_seconds
        self._decoders = {
            name: codecs.getincrementaldecoder("utf-8")(errors="replace")
            for name in ("stdout", "stderr")
        }
        self._pending_stream: str | None = None
        self._pending: list[str] = []
        self._pending_bytes = 0
        self._pending_since = 0.0
        self.kept = 0  # bytes of output sent on (UTF-8, what offsets count)
        self.produced = 0  # raw bytes the tool wrote, kept or not
        self.truncated = False

    def feed(self, stream: str, raw: bytes, final: bool = False) -> None:
        self.produced += len(raw)
        text = self._decoders[stream].decode(raw, final)
        if not text or self.truncated:
            return
        encoded_len = len(text.encode())
        if self.kept + self._pending_bytes + encoded_len > self._limit:
            room = self._limit - self.kept - self._pending_bytes
            text = text.encode()[: max(room, 0)].decode(errors="ignore")
            encoded_len = len(text.encode())
            self.truncated = True
        if self._pending_stream not in (None, stream):
            self.flush()
        if not self._pending:
            self._pending_since = time.monotonic()
        self._pending_stream = stream
        if text:
            self._pending.append(text)
            self._pending_bytes += encoded_len
        if self._pending_bytes >= MAX_CHUNK_BYTES or self.truncated:
            self.flush()

    @property
    def has_pending(self) -> bool:
        return bool(self._pending)

    @property
    def pending_bytes(self) -> int:
        return self._pending_bytes

    def due(self) -> bool:
        return bool(self._pending) and time.monotonic() - self._pending_since >= self._flush_seconds

    def flush(self) -> None:
        chunk = self._take()
        if chunk is not None:
            self._emit(chunk["stream"], chunk["offset"], chunk["data"])

    def tail(self, note: str | None = None) -> list[Chunk]:
        """What is still pending, and then `note` (a line from the portal itself,
        on the `ocho` stream), as chunks for the `finished` event instead of
        events of their own."""
        pending = self._take()
        chunks = [pending] if pending is not None else []
        if note:
            chunks.append({"stream": "ocho", "offset": self.kept, "data": note})
            self.kept += len(note.encode())
        return chunks

    def _take(self) -> Chunk | None:
        chunk = None
        if self._pending and self._pending_stream is not None:
            chunk = {"stream": self._pending_stream, "offset": self.kept,
                     "data": "".join(self._pending)}
            self.kept += self._pending_bytes
        self._pending = []
        self._pending_bytes = 0
        self._pending_stream = None
        return chunk
