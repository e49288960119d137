"""Errors raised while reading model files.

Every message names the file, what was found and what was expected, so a user who picked the
wrong file (or has a half-downloaded one) knows what to do without reading a traceback.
All of them are ``ValueError`` subclasses, so callers that only care about "bad input" can catch
one type.
"""
from __future__ import annotations


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
