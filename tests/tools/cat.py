"""cat FILE...: print uploaded files (a test tool)."""
import sys

# As bytes: a text-mode read would turn \r\n and a lone \r into \n (universal newlines).
for name in sys.argv[1:]:
    with open(name, "rb") as handle:
        sys.stdout.buffer.write(handle.read())
