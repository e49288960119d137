"""Helpers for the semantic tests on the shipped WanNano models (tests/test_nano_*.py)."""
from __future__ import annotations

import pytest

from wanflow.nano.files import NANO


def need_nano(*names: str) -> None:
    """Fail (not skip) when a shipped nano file is missing: the tests are about those files."""
    missing = [n for n in names if not NANO.path(n).is_file()]
    if missing:
        pytest.fail(f"WanNano files missing from nano/models: {missing}; run `wanflow train-nano`")
