"""`python -m ocho`: the same command-line client as `ocho`."""

import sys

from ocho.cli import main

if __name__ == "__main__":
    sys.exit(main())
