"""Session replay simulation: ``python sim/replay.py --log LOG --model DIR ...``.

The same program as ``qac replay`` (the library part is :mod:`qac.replay`); see its
docstring and sim/README.md for what is simulated and measured.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from qac.replay import add_replay_arguments, run_replay  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="sim/replay.py",
        description="Replay a query log's sessions keystroke by keystroke against "
                    "completers in-process or a running `qac serve`; writes replay.json, "
                    "replay.md and PNG plots.")
    add_replay_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    return run_replay(args)


if __name__ == "__main__":
    sys.exit(main())
