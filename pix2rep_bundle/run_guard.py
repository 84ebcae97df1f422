"""Starting a run in an ``output_dir`` without harming another run: one run at a time (a lock file), no silent
restart over a finished or stopped run, and ``--resume true`` only with the settings the run was started with.

:func:`start_run` is what the configs call in ``initialize``, before any long work:

1. the folder is claimed as a bundle output (:func:`pix2rep_bundle.outputs.claim_output_dir`: never the dataset
   folder, never a non-empty folder the bundle did not make unless ``--overwrite true``);
2. ``<output_dir>/.run.lock`` is created with this process's id; a second run into the same folder stops with an
   error naming the first one's process, while a lock left by a process that no longer runs (a crash) is taken
   over with a warning; it is removed when this process ends;
3. a folder that holds another run (its checkpoint, written at the end of every epoch with the run's best network)
   is refused unless ``--resume true`` (continue it) or ``--overwrite true`` (start afresh over it);
4. with ``--resume true``, every setting that defines the run (network, data, loss, mode, K, seeds, schedule, ...)
   must equal the recorded one; each difference is named. Settings of speed only (``amp``, ``channels_last``,
   ``compile``, ``augment_on_device``, ``num_workers``, the device) may change;
5. ``run_info.json`` is written: the settings, command, versions and commit, and on a resume the earlier starts
   under ``"started_before"``.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pix2rep_bundle.errors import DataError
from pix2rep_bundle.outputs import claim_output_dir
from pix2rep_bundle.run_state import RUN_RECORD, plain_value, write_run_record
from pix2rep_bundle.settings import as_bool

logger = logging.getLogger(__name__)

RUN_KIND = "run"  # the marker kind of a training run's output folder (models/ is one, see models/.pix2rep_bundle.json)
LOCK_NAME = ".run.lock"
# settings that change how fast a run goes, not what it computes: a resumed run may change them
SPEED_SETTINGS = frozenset(
    {
        "resume",
        "overwrite",
        "amp",
        "channels_last",
        "compile",
        "augment_on_device",
        "num_workers",
        "device",
        "log_interval",
        "save_interval",
    }
)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


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
                if same_host and isinstance(holder.get("pid"), int) and not _process_alive(holder["pid"]):
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


def differing_settings(recorded: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """``--name: recorded -> current`` for every run-defining setting that differs (speed settings excepted)."""
    names = sorted((set(recorded) | set(current)) - SPEED_SETTINGS)
    current = {k: plain_value(v) for k, v in current.items()}
    return [
        f"--{n}: {recorded.get(n, '(not set)')!r} -> {current.get(n, '(not set)')!r}"
        for n in names
        if recorded.get(n) != current.get(n)
    ]


def _recorded(output_dir: Path) -> dict[str, Any]:
    try:
        return json.loads((output_dir / RUN_RECORD).read_text())
    except (OSError, ValueError):
        return {}


def start_run(
    output_dir: str | os.PathLike,
    checkpoint_path: str | os.PathLike,
    settings: Mapping[str, Any],
    resume: Any = False,
    overwrite: Any = False,
    dataset_dir: str | os.PathLike | None = None,
    bundle_root: str = ".",
    write_record: bool = True,
) -> str:
    """Claim ``output_dir`` for a training run (pretraining or few-shot) and record it; see the module docstring.

    Returns the path of ``run_info.json``. ``write_record=False`` checks and locks without writing the record
    (processes other than rank 0)."""
    resume, overwrite = as_bool(resume, "resume"), as_bool(overwrite, "overwrite")
    folder = Path(output_dir)
    claim_output_dir(folder, RUN_KIND, overwrite=overwrite, protected={"dataset folder": dataset_dir})
    lock = RunLock(folder)
    lock.acquire()
    try:
        return _check_and_record(folder, Path(checkpoint_path), settings, resume, overwrite, bundle_root, write_record)
    except BaseException:
        lock.release()  # refused: the folder is left as it was
        raise


def _check_and_record(
    folder: Path,
    checkpoint: Path,
    settings: Mapping[str, Any],
    resume: bool,
    overwrite: bool,
    bundle_root: str,
    write_record: bool,
) -> str:
    record = _recorded(folder)
    if checkpoint.is_file():
        if resume and record.get("settings"):
            differences = differing_settings(record["settings"], settings)
            if differences:
                raise DataError(
                    folder,
                    "--resume true with settings that differ from the run being resumed ("
                    + "; ".join(differences)
                    + "): resume with its settings, or start a new run "
                    "in another --output_dir",
                )
        elif resume:
            logger.warning(f"--resume: {folder / RUN_RECORD} is missing, the settings cannot be compared")
        elif overwrite:
            logger.warning(f"--overwrite true: a new run replaces the files of the earlier run in {folder}")
        else:
            raise DataError(
                folder,
                f"holds another run (its checkpoint {checkpoint}): continue it with --resume true, "
                "start afresh over it with --overwrite true (its files are replaced), or choose "
                "another --output_dir",
            )
    if not write_record:
        return str(folder / RUN_RECORD)
    history = (
        record.get("started_before", []) + [{k: record.get(k) for k in ("started", "command", "git_commit")}]
        if resume and record
        else []
    )
    return write_run_record(folder, settings, bundle_root, started_before=history)


def require_batches(loader: Any, what: str) -> int:
    """The number of batches of ``loader``; DataError when it gives none (e.g. ``--batch_size`` larger than the
    slices with ``drop_last``), so that a run that cannot train or validate stops before writing anything."""
    count = len(loader)
    if count == 0:
        dataset = getattr(loader, "dataset", None)
        size = f"{len(dataset)} slices" if dataset is not None else "no slices"
        raise DataError(
            what,
            f"the {what} data give no batch ({size}, --batch_size {loader.batch_size}"
            f"{', incomplete batches dropped' if getattr(loader, 'drop_last', False) else ''}): "
            "lower --batch_size or add data",
        )
    return count
