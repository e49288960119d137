"""Progress outside ComfyUI: a tqdm bar on a terminal, plain lines when stderr is not one.

Logs, CI jobs and pipes get no cursor codes: one line per tenth of the work or, for a bar that
says what runs now (the workflow bar names each node as it starts), one line per item.
"""
from __future__ import annotations

import sys
from typing import Optional, TextIO


class HeadlessProgress:
    def __init__(self, total: int, desc: str, enabled: bool = True, stream: Optional[TextIO] = None):
        self.total, self.desc, self.value, self.note = max(0, int(total)), desc, 0, ""
        self.enabled = enabled
        self.stream = stream if stream is not None else sys.stderr
        self._tenth = 0
        self._bar = None
        if enabled and _is_terminal(self.stream):
            from tqdm.auto import tqdm

            self._bar = tqdm(total=self.total, desc=desc, leave=False, file=self.stream)

    def update(self, n: int = 1) -> None:
        self.value = min(self.total, self.value + n)
        if self._bar is not None:
            self._bar.update(n)
            return
        tenth = self.value * 10 // self.total if self.total else 10
        if tenth > self._tenth and not self.note:
            self._tenth = tenth
            self._line(self.value)

    def describe(self, note: str) -> None:
        """What runs now: the next item's number and ``note``."""
        self.note = note
        if self._bar is not None:
            self._bar.set_postfix_str(note)
        else:
            self._line(min(self.total, self.value + 1))

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()

    def _line(self, count: int) -> None:
        if self.enabled:
            note = f": {self.note}" if self.note else ""
            print(f"wanflow: {self.desc} {count}/{self.total}{note}", file=self.stream, flush=True)


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
