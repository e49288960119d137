"""The ``wanflow`` command's entry point: signal handling first, then the real command line.

Importing the command line pulls in torch and the nodes, which takes seconds; a Ctrl-C or
SIGTERM in that time must still end in one line and the usual exit code, not a traceback. The
arguments are checked first, from a torch-free module, so ``--help``, ``--version`` and usage
errors answer at once.
"""
from __future__ import annotations

import sys
from typing import Optional, Sequence

from . import signals
from .arguments import build_parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    signals.install()
    try:
        build_parser().parse_args(argv)  # --help, --version and usage errors: answered before torch loads
    except SystemExit as exc:
        return int(exc.code or 0)
    try:
        # A signal inside torch's import can land in C++ code that calls back into Python, where an
        # exception aborts the process; it is held until the import is done, then acted on.
        with signals.deferred():
            from .cli import main as cli_main

        return cli_main(argv)
    except KeyboardInterrupt:
        print("wanflow: interrupted", file=sys.stderr)
        return signals.EXIT_SIGINT
    except signals.Terminated:
        print("wanflow: terminated", file=sys.stderr)
        return signals.EXIT_SIGTERM


if __name__ == "__main__":
    sys.exit(main())
