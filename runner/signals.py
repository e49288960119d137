"""Ctrl-C and SIGTERM for the command line: stop cleanly, clean up, exit 130 / 143.

The first SIGINT raises ``KeyboardInterrupt`` and the first SIGTERM raises :class:`Terminated`
where the program is, so ``finally`` blocks (the output staging folder's removal) run. A signal
that arrives while such cleanup runs inside :func:`deferred` waits until it is done, so a second
Ctrl-C cannot cut the cleanup short and leave a partial file behind. Only the command line
installs these handlers; inside ComfyUI, signals are ComfyUI's.
"""
from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from typing import Iterator, Optional

EXIT_SIGINT = 130
EXIT_SIGTERM = 143


class Terminated(BaseException):
    """SIGTERM arrived (a BaseException, like KeyboardInterrupt: node error handlers let it pass)."""


class _State:
    cleaning = 0                   # depth of deferred() blocks running now
    pending: Optional[int] = None  # a signal that arrived during cleanup


def _raise_for(signum: int) -> None:
    if signum == signal.SIGTERM:
        raise Terminated()
    raise KeyboardInterrupt()


def _handler(signum: int, frame) -> None:
    if _State.cleaning:
        _State.pending = _State.pending or signum
        return
    _raise_for(signum)


def install() -> None:
    """Route SIGINT and SIGTERM through :func:`_handler` (main thread only; else a no-op)."""
    if threading.current_thread() is not threading.main_thread():
        return
    signal.signal(signal.SIGINT, _handler)
    signal.signal(signal.SIGTERM, _handler)


@contextmanager
def deferred() -> Iterator[None]:
    """Run cleanup that must finish: signals arriving meanwhile are raised after it."""
    _State.cleaning += 1
    try:
        yield
    finally:
        _State.cleaning -= 1
        if not _State.cleaning and _State.pending is not None:
            signum, _State.pending = _State.pending, None
            _raise_for(signum)
