"""Progress lines of the command-line tools: ``[tool HH:MM:SS] message``, flushed at once."""

from __future__ import annotations

import time
from collections.abc import Callable


def progress_log(tool: str) -> Callable[[str], None]:
    """A function that prints ``message`` as a progress line of ``tool``, flushed at once."""

    def log(message: str) -> None:
        print(f"[{tool} {time.strftime('%H:%M:%S')}] {message}", flush=True)

    return log
