"""env: print the environment the tool sees, one NAME=VALUE a line (a test tool)."""
import os

for name in sorted(os.environ):
    print(f"{name}={os.environ[name]}")
