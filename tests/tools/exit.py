"""exit CODE [MESSAGE]: print MESSAGE on stderr and exit with CODE (a test tool)."""
import sys

if len(sys.argv) > 2:
    print(sys.argv[2], file=sys.stderr)
sys.exit(int(sys.argv[1]))
