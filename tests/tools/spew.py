"""spew MEGABYTES: write that many MiB of text to stdout (a test tool)."""
import sys

line = ("x" * 1023 + "\n").encode()
block = line * 1024
out = sys.stdout.buffer
for _ in range(int(float(sys.argv[1]))):
    out.write(block)
out.flush()
