"""crlf [PAUSE]: write carriage returns to stdout and stderr as raw bytes (a test tool).

`\\r\\n`, a lone `\\r`, `\\r` then `\\n` in separate writes, `\\r\\r\\n`, a progress
bar redrawn with `\\r`, a byte that is not UTF-8, and a trailing `\\r`: each write
flushed, with PAUSE seconds (default 0.3, past the worker's output flush
interval) between them, so the output crosses event boundaries. The exact bytes
are PIECES below (tests import it).
"""
import sys
import time

PIECES = (
    ("stdout", b"one\r\ntwo\r\n"),
    ("stdout", b"progress 10%\rprogress 50%\r"),
    ("stdout", b"\nsplit CR"),
    ("stdout", b"\r"),
    ("stdout", b"\nafter a split CRLF\r\r\n"),
    ("stderr", b"err one\r\nerr lone\rerr end\r"),
    ("stderr", b"\n"),
    ("stdout", b"bad \xff byte\r\n"),
    ("stdout", b"caf\xc3"),
    ("stdout", b"\xa9\r"),
    ("stderr", b"last err\r"),
    ("stdout", b"trailing CR\r"),
)

if __name__ == "__main__":
    pause = float(sys.argv[1]) if len(sys.argv) > 1 else 0.3
    for stream, data in PIECES:
        out = sys.stdout.buffer if stream == "stdout" else sys.stderr.buffer
        out.write(data)
        out.flush()
        time.sleep(pause)
