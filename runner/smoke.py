"""``python -m wanflow.runner.smoke``: the README's first-run check, same as ``wanflow demo``.

Renders the T2V template on the built-in tiny model into ./output and exits with the runner's
exit code (0 when the video was written).
"""
import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main(["demo", *sys.argv[1:]]))
