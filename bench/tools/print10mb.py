"""Benchmark tool: write 10 MiB of ASCII lines to stdout (or the byte count in argv[1])."""

import sys

total = int(sys.argv[1]) if len(sys.argv) > 1 else 10 * 1024 * 1024
line = b"x" * 99 + b"\n"
block = line * 10486  # about 1 MiB per write
out = sys.stdout.buffer
left = total
while left > 0:
    piece = block if left >= len(block) else block[:left]
    out.write(piece)
    left -= len(piece)
out.flush()
