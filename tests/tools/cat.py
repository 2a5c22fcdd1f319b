"""cat FILE...: print uploaded files (a test tool)."""
import sys

for name in sys.argv[1:]:
    with open(name) as handle:
        sys.stdout.write(handle.read())
