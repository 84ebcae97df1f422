"""The scripts' command lines: ``fire`` with one line of error for bad input instead of a traceback."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import fire


def fire_cli(main: Callable[..., Any], argv: list[str] | None = None) -> int:
    """Run ``main`` as a ``fire`` command line (``argv``, else ``sys.argv``); bad input or an existing output prints
    ``error: <message>`` on stderr and gives exit status 1 (a DataError or CheckpointError is a ValueError, a
    FileExistsError an OSError)."""
    try:
        fire.Fire(main, command=argv)
    except (OSError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0
