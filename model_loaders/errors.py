"""Errors raised while reading model files.

Every message names the file, what was found and what was expected, so a user who picked the
wrong file (or has a half-downloaded one) knows what to do without reading a traceback.
All of them are ``ValueError`` subclasses, so callers that only care about "bad input" can catch
one type.
"""
from __future__ import annotations

import functools
from typing import Callable, TypeVar

T = TypeVar("T")


class CheckpointError(ValueError):
    """Base class: a model file could not be used."""


class CorruptCheckpointError(CheckpointError):
    """The file is truncated, damaged, or not in the format its name claims."""


class UnsafeCheckpointError(CheckpointError):
    """A pickle file that would need arbitrary code execution to load."""


class WrongModelError(CheckpointError):
    """A valid file that holds a different kind of model than the loader expects."""


class UnsupportedModelError(CheckpointError):
    """A recognised Wan variant that this pack does not implement (yet)."""


class StorageChoiceError(ValueError):
    """A storage dtype option that does not exist (the caller's choice, not the file's fault)."""


_CONTENT_ERRORS = (ValueError, KeyError, IndexError, TypeError, RuntimeError, OverflowError)
"""What reading a damaged file's contents can raise from key maps, config builders and torch."""


def names_the_file(loader: Callable[..., T]) -> Callable[..., T]:
    """Make ``loader(path, ...)`` raise only :class:`CheckpointError` for what the file holds.

    The specific checks give the best messages; this is the net under them, so a damaged or
    renamed key, an odd shape or a config the model cannot take never surfaces as a bare Python
    error without the file's name.
    """
    @functools.wraps(loader)
    def wrapper(path, *args, **kwargs):
        try:
            return loader(path, *args, **kwargs)
        except (CheckpointError, StorageChoiceError):
            raise
        except _CONTENT_ERRORS as exc:
            text = str(exc).strip().splitlines()
            detail = f"{type(exc).__name__}: {text[0][:300]}" if text else type(exc).__name__
            raise CorruptCheckpointError(f"{path}: the file's contents cannot be used ({detail}); "
                                         "expected a complete Wan model file of this kind.") from exc
    return wrapper
