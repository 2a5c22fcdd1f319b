"""Reading a job's output: stored chunks → one slice from a byte offset.

Offsets are bytes of the job's combined UTF-8 output. A slice never splits a
character (an offset inside one skips its tail; a limit inside one stops before
it), never skips a gap (a chunk still on its way ends the slice until it
arrives, unless the job ended), and says whether the reader has it all.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ocho.gateway.store.records import Chunk, Job, OutputSlice

# A worker that caps output says so in a last `ocho`-stream chunk placed right
# at the cap; this much room past the cap keeps that notice.
NOTICE_ROOM = 1024
# Chunks read per query; a reader asks again from `next_offset` for more.
CHUNKS_PER_READ = 1000


def slice_output(job: Job, rows: Sequence[Any], offset: int, limit: int) -> OutputSlice:
    """The slice from `offset` of at most `limit` bytes, from rows of (byte_offset, stream,
    data) in offset order, at most CHUNKS_PER_READ of them."""
    chunks: list[Chunk] = []
    position = offset
    taken = 0
    more = len(rows) == CHUNKS_PER_READ
    for row_offset, stream, raw in rows:
        data = bytes(raw)
        start = int(row_offset)
        if start + len(data) <= position:
            continue  # overlaps what was already taken
        if start > position and not job.terminal:
            more = True  # a chunk before this one is still on its way
            break
        if start < position:
            tail = data[position - start:]
            data = skip_continuation(tail)
            start = position + len(tail) - len(data)
        if taken + len(data) > limit:
            data = utf8_prefix(data, limit - taken)
            more = True
            if data:
                chunks.append(Chunk(start, stream, data))
                position = start + len(data)
            break
        if data:
            chunks.append(Chunk(start, stream, data))
            taken += len(data)
        position = max(position, start + len(data))
    return OutputSlice(job=job, offset=offset, next_offset=position, chunks=chunks,
                       finished=job.terminal and not more)


def utf8_prefix(data: bytes, size: int) -> bytes:
    """At most `size` bytes of UTF-8 `data`, not cutting a character in two."""
    if size >= len(data):
        return data
    cut = max(size, 0)
    while cut > 0 and (data[cut] & 0xC0) == 0x80:
        cut -= 1
    return data[:cut]


def skip_continuation(data: bytes) -> bytes:
    """Drop the tail of a character cut at the front (an offset inside a character)."""
    start = 0
    while start < len(data) and (data[start] & 0xC0) == 0x80:
        start += 1
    return data[start:]
