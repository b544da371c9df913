"""Run a command with REDIS_URL set, starting an embedded Valkey if needed."""

from __future__ import annotations

import os
import subprocess
import sys

from processes import valkey


def main(argv: list[str]) -> int:
    if not argv:
        print("usage: with_valkey.py COMMAND [ARG ...]", file=sys.stderr)
        return 2
    with valkey() as url:
        env = {**os.environ, "REDIS_URL": url}
        try:
            return subprocess.call(argv, env=env)
        except KeyboardInterrupt:
            return 130


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
