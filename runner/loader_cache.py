"""Loaded models kept between workflow runs in one process (``wanflow batch``'s warm workers).

The headless runner executes every node afresh, so each run reads its model files again. A batch
worker runs many workflows on the same files; with a :class:`LoaderCache` a WanFlow loader node
whose inputs are all literal values (file name, storage dtype, attention, ...) returns the handle
an earlier run loaded with the same inputs. Loaded handles are never changed by later nodes
(LoRAs run as side branches, the sampler moves weights back to their offload device), so a
cached model gives the same frames as a fresh one.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from ..nodes.types import LOADERS
from .workflow import is_link


@dataclass
class LoaderCache:
    """Outputs of loader nodes, keyed by node type and input values; counts loads and reuses."""

    outputs: dict[str, Any] = field(default_factory=dict)
    loads: int = 0
    hits: int = 0
    used: set[str] = field(default_factory=set)  # keys the current run asked for

    @staticmethod
    def key(cls: type, kind: str, inputs: dict) -> Optional[str]:
        """The cache key of a loader node, or None for nodes that are not cached (not a WanFlow
        loader, or an input fed by a link)."""
        if getattr(cls, "CATEGORY", None) != LOADERS or any(is_link(v) for v in inputs.values()):
            return None
        return kind + ":" + json.dumps(inputs, sort_keys=True, default=str)

    def get_or_load(self, key: Optional[str], load: Callable[[], Any]) -> Any:
        """The cached output of ``key``, or ``load()``'s (stored when ``key`` is not None)."""
        if key is None:
            return load()
        self.used.add(key)
        if key in self.outputs:
            self.hits += 1
            return self.outputs[key]
        output = load()
        self.loads += 1
        self.outputs[key] = output
        return output

    def begin_run(self) -> None:
        self.used.clear()

    def end_run(self) -> None:
        """Forget the models the run just finished did not use: a worker holds one job's models
        at a time, not every model it ever loaded."""
        for key in [k for k in self.outputs if k not in self.used]:
            del self.outputs[key]

    def clear(self) -> None:
        self.outputs.clear()
