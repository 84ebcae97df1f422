"""One run at a time in an output folder: ``<folder>/.run.lock`` holds the process id and host of the run writing
there. A second run into the same folder stops with an error naming the first one's process; a lock left by a process
that no longer runs (a crash) is taken over with a warning; the lock is removed when its process ends."""

from __future__ import annotations

import atexit
import json
import logging
import os
import socket
from pathlib import Path
from typing import Any

from pix2rep_bundle.errors import DataError
from pix2rep_bundle.io import process_alive

logger = logging.getLogger(__name__)

LOCK_NAME = ".run.lock"


class RunLock:
    """``<folder>/.run.lock`` held by this process (pid and host inside) until it ends or :meth:`release`."""

    def __init__(self, folder: str | os.PathLike):
        self.path = Path(folder) / LOCK_NAME
        self.held = False

    def _holder(self) -> dict[str, Any] | None:
        try:
            return json.loads(self.path.read_text())
        except (OSError, ValueError):
            return None

    def acquire(self) -> None:
        me = {"pid": os.getpid(), "host": socket.gethostname()}
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = self._holder() or {}
                if holder == me:  # this process already holds it (a second config run in one process)
                    self.held = True
                    return
                same_host = holder.get("host") == me["host"]
                if same_host and isinstance(holder.get("pid"), int) and not process_alive(holder["pid"]):
                    logger.warning(f"{self.path}: left by process {holder['pid']}, which no longer runs; taken over")
                    self.path.unlink(missing_ok=True)
                    continue
                where = f"process {holder.get('pid', '?')} on {holder.get('host', '?')}"
                raise DataError(
                    self.path.parent,
                    f"another run ({where}) is writing into this folder: wait for it "
                    f"to end or choose another --output_dir (if no such run exists, "
                    f"remove {self.path})",
                ) from None
            with os.fdopen(fd, "w") as handle:
                json.dump(me, handle)
            self.held = True
            atexit.register(self.release)
            return

    def release(self) -> None:
        """Remove the lock file if this process holds it."""
        if (self._holder() or {}).get("pid") == os.getpid():
            self.path.unlink(missing_ok=True)
        self.held = False
