"""Errors of the headless runner and the exit code each one maps to.

Exit codes of ``wanflow run`` / ``wanflow demo``:

====  =====================================================================
0     the workflow ran; output files were written
1     internal error (a bug in WanFlow: please report it)
2     usage error: bad command line, unreadable or non-JSON workflow file, bad ``--set``
3     invalid workflow: unknown node type, wrong link type, missing input, bad widget value,
      file name with ``..`` or an absolute path, cycle, no output node
4     a file the workflow names is missing (model file, input image)
5     a node failed while running (e.g. an image of the wrong size for the model)
130   interrupted (Ctrl-C)
143   terminated (SIGTERM)
====  =====================================================================

Nothing is written to the output folder unless the exit code is 0. ``wanflow batch`` uses the
same codes for a bad jobs file (2, 3, 4; 2 also when ``--ray`` finds no Ray), 5 when some job
failed after its retry (the others' files and the manifest are written), 130 on Ctrl-C.
"""
from __future__ import annotations

from typing import Optional

EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_USAGE = 2
EXIT_INVALID = 3
EXIT_MISSING_FILE = 4
EXIT_NODE_FAILED = 5
EXIT_INTERRUPTED = 130


class RunnerError(Exception):
    """An error reported to the user as one clear line, with its exit code."""

    exit_code = EXIT_INTERNAL

    def __init__(self, message: str, node_id: Optional[str] = None, node_type: Optional[str] = None):
        self.node_id = node_id
        self.node_type = node_type
        where = f"node {node_id} ({node_type}): " if node_id is not None else ""
        super().__init__(where + message)


class UsageError(RunnerError):
    exit_code = EXIT_USAGE


class InvalidWorkflow(RunnerError):
    exit_code = EXIT_INVALID


class MissingFileError(RunnerError):
    exit_code = EXIT_MISSING_FILE


class NodeFailed(RunnerError):
    exit_code = EXIT_NODE_FAILED


class RunInterrupted(RunnerError):
    exit_code = EXIT_INTERRUPTED
