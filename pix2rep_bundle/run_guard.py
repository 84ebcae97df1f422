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

Inference (:func:`start_inference_run`) takes the same lock and keeps its own ``run_info.json`` in its output folder
(``"kind": "inference"``): the checkpoint (path, size, modification time, md5), the inputs, the postfix, the planned
outputs and a ``"status"``: ``running`` from the start, ``finished`` with the list of ``outputs`` at the end
(:class:`InferenceRunRecord`), ``failed`` with the error. A folder holding an earlier run's segmentations is refused
unless ``--overwrite true``, which first removes the files the earlier record lists (nothing else). Whatever reads
an inference folder as one run's results checks that record first (:func:`check_inference_folder`).
"""

from __future__ import annotations

import atexit
import datetime
import hashlib
import json
import logging
import os
import socket
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from pix2rep_bundle.errors import DataError
from pix2rep_bundle.io import process_alive, write_json_atomic
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
        "snapshot_interval",
    }
)


_process_alive = process_alive


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


# ---------------------------------------------------------------- inference runs

INFERENCE_KIND = "inference"  # the "kind" of an inference run's record
NIFTI_SUFFIXES = (".nii.gz", ".nii")


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def checkpoint_fingerprint(path: str | os.PathLike) -> dict[str, Any]:
    """The checkpoint's absolute path, size, modification time and md5 (``found: false`` when there is no such
    file, e.g. a network given directly)."""
    path = Path(path)
    found = {"path": os.path.abspath(path), "found": path.is_file()}
    if not found["found"]:
        return found
    with open(path, "rb") as handle:
        digest = hashlib.file_digest(handle, lambda: hashlib.md5(usedforsecurity=False)).hexdigest()
    stat = path.stat()
    return found | {"size": stat.st_size, "mtime": stat.st_mtime, "md5": digest}


def _relative(path: str | os.PathLike, folder: Path) -> str:
    """``path`` relative to ``folder``, with forward slashes (as the record lists it)."""
    return Path(os.path.relpath(os.fspath(path), folder)).as_posix()


def _listed_files(folder: Path, record: Mapping[str, Any]) -> list[Path]:
    """The segmentation files an inference record lists (planned and written outputs) that lie inside ``folder``:
    NIfTI names only, never the record, the marker or a path leading out."""
    names = [*record.get("planned_outputs", []), *record.get("outputs", [])]
    root = os.path.realpath(folder)
    files = []
    for name in dict.fromkeys(n for n in names if isinstance(n, str) and n.endswith(NIFTI_SUFFIXES)):
        path = folder / name
        if os.path.commonpath([os.path.realpath(path.parent), root]) == root and not path.name.startswith("."):
            files.append(path)
    return files


def segmentation_files(folder: str | os.PathLike) -> list[str]:
    """The NIfTI files under ``folder`` (recursively, hidden names skipped), relative to it, sorted."""
    folder = Path(folder)
    found = []
    for path in folder.rglob("*"):
        relative = path.relative_to(folder)
        if path.name.endswith(NIFTI_SUFFIXES) and not any(p.startswith(".") for p in relative.parts):
            found.append(relative.as_posix())
    return sorted(found)


def _read_record(folder: Path) -> dict[str, Any] | None:
    """The folder's ``run_info.json`` (None when absent); DataError when it is not a JSON object."""
    path = folder / RUN_RECORD
    if not path.exists():
        return None
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise DataError(path, f"unreadable run record ({err})") from err
    if not isinstance(record, dict):
        raise DataError(path, "not a run record (expected a JSON object)")
    return record


def _clear_earlier_outputs(
    folder: Path, record: Mapping[str, Any] | None, planned: Iterable[str], overwrite: bool
) -> None:
    """Refuse (or with ``overwrite`` remove first) the segmentations an earlier run left in ``folder``: the files its
    record lists, and any file this run would replace."""
    listed = _listed_files(folder, record) if record else []
    present = [p for p in listed if p.is_file() or p.is_symlink()]
    replaced = [Path(p) for p in planned if os.path.lexists(p) and Path(p) not in present]
    if not present and not replaced:
        return
    if not overwrite:
        status = f"its record {RUN_RECORD} says {record.get('status', '?')!r}" if record else f"no {RUN_RECORD}"
        shown = ", ".join(_relative(p, folder) for p in (present + replaced)[:3])
        raise DataError(
            folder,
            f"holds the segmentations of an earlier run ({len(present) + len(replaced)} files, e.g. {shown}; "
            + f"{status}): pass --overwrite true to replace them (the earlier run's outputs are removed first), "
            + "or choose another --output_dir",
        )
    for path in present:
        path.unlink()
        for parent in path.parents:  # subfolders the earlier run made and that are now empty
            if parent == folder or not parent.is_relative_to(folder) or any(parent.iterdir()):
                break
            parent.rmdir()
    if present:
        logger.warning(f"--overwrite true: {len(present)} segmentation(s) of the earlier run in {folder} removed")


def start_inference_run(
    entries: Sequence[Mapping[str, Any]],
    output_dir: str | os.PathLike,
    postfix: Any,
    ckpt_path: str | os.PathLike,
    settings: Mapping[str, Any] | None = None,
    overwrite: Any = False,
    bundle_root: str = ".",
) -> str:
    """Before any work: check the inputs' headers and the planned outputs, claim ``output_dir``, take its lock, clear
    (``--overwrite true``) or refuse an earlier run's outputs, and record this run as ``running``; the record's path.

    See the module docstring; :class:`InferenceRunRecord` marks the run ``finished`` (or ``failed``)."""
    from pix2rep_bundle.inference import check_input_volumes, check_outputs, output_paths

    overwrite = as_bool(overwrite, "overwrite")
    check_input_volumes(entries)
    check_outputs(entries, output_dir, postfix, overwrite)
    planned = output_paths(entries, output_dir, postfix)
    folder = Path(output_dir)
    lock = RunLock(folder)
    lock.acquire()
    try:
        record = _read_record(folder)
        if record is not None and record.get("kind") != INFERENCE_KIND:
            raise DataError(
                folder / RUN_RECORD,
                "the record of another kind of run (training?): inference never writes over it; "
                + "choose another --output_dir",
            )
        _clear_earlier_outputs(folder, record, planned.values(), overwrite)
        details = {
            "kind": INFERENCE_KIND,
            "status": "running",
            "pid": os.getpid(),
            "checkpoint": checkpoint_fingerprint(ckpt_path),
            "inputs": list(planned),
            "output_postfix": str(postfix),
            "planned_outputs": [_relative(p, folder) for p in planned.values()],
        }
        return write_run_record(folder, dict(settings or {}), bundle_root, extra=details)
    except BaseException:
        lock.release()  # refused: the folder is left as it was
        raise


def _end_inference_run(output_dir: str | os.PathLike, status: str, **details: Any) -> dict[str, Any] | None:
    """Mark this process's running inference record in ``output_dir`` as ``status`` and release the folder's lock;
    None (and nothing done) when the folder holds no such record (e.g. the evaluator run without ``initialize``)."""
    folder = Path(output_dir)
    try:
        record = _read_record(folder)
    except DataError:
        return None
    if not record or record.get("kind") != INFERENCE_KIND or record.get("status") != "running":
        return None
    if record.get("pid") != os.getpid():
        return None
    written = [n for n in record.get("planned_outputs", []) if (folder / n).is_file()]
    record |= {"status": status, "ended": _now(), "outputs": written, **details}
    write_json_atomic(folder / RUN_RECORD, record)
    RunLock(folder).release()
    return record


def finish_inference_run(output_dir: str | os.PathLike) -> dict[str, Any] | None:
    """Mark the run ``finished`` with the list of outputs written (``failed`` if a planned one is missing)."""
    folder = Path(output_dir)
    record = _read_record(folder) or {}
    missing = [n for n in record.get("planned_outputs", []) if not (folder / n).is_file()]
    if missing:
        return _end_inference_run(folder, "failed", error=f"planned outputs not written: {', '.join(missing[:5])}")
    return _end_inference_run(folder, "finished")


class InferenceRunRecord:
    """Ends the inference record of ``output_dir``: ``finished`` when the evaluator completes, ``failed`` (with the
    error, which is raised on) when it stops on an error; the folder's lock is released either way."""

    def __init__(self, output_dir: str | os.PathLike):
        self.output_dir = output_dir

    def attach(self, engine) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.COMPLETED, self._completed)
        engine.add_event_handler(Events.EXCEPTION_RAISED, self._failed)

    def _completed(self, engine) -> None:
        finish_inference_run(self.output_dir)

    def _failed(self, engine, error: BaseException) -> None:
        _end_inference_run(self.output_dir, "failed", error=f"{type(error).__name__}: {error}")
        raise error


def check_inference_folder(output_dir: str | os.PathLike, wanted: Iterable[str] | None = None) -> dict[str, Any]:
    """The record of the finished inference run whose results ``output_dir`` holds; DataError when the record is
    missing, is not a finished inference run's, or the folder's segmentations differ from the recorded outputs
    (one missing, or one the run did not write), or a ``wanted`` file is not among them."""
    folder = Path(output_dir)
    path = folder / RUN_RECORD
    record = _read_record(folder)
    if record is None:
        raise DataError(
            path,
            "not found: this folder holds no recorded inference run, so its files cannot be scored as one "
            + "run's results; run configs/inference.yaml into it (with --overwrite true) first",
        )
    if record.get("kind") != INFERENCE_KIND:
        raise DataError(path, "not the record of an inference run")
    if record.get("status") != "finished":
        raise DataError(
            path,
            f"the inference run is {record.get('status', 'unknown')!r}, not finished (killed, failed or still "
            + "running): its outputs are not one complete run; rerun it with --overwrite true",
        )
    recorded = [n for n in record.get("outputs", []) if isinstance(n, str)]
    present = set(segmentation_files(folder))
    missing = [n for n in recorded if n not in present]
    if missing:
        raise DataError(
            folder / missing[0],
            f"segmentation not found, though the finished run listed it in {path} "
            + f"({len(missing)} missing): rerun inference with --overwrite true",
        )
    extra = sorted(present - set(recorded))
    if extra:
        raise DataError(
            folder,
            f"holds segmentations the recorded run did not write ({', '.join(extra[:5])}"
            + f"{', ...' if len(extra) > 5 else ''}): files of another run mixed in; rerun inference with "
            + "--overwrite true or remove them",
        )
    for name in wanted or ():
        if _relative(os.path.abspath(name), folder) not in recorded:
            raise DataError(
                name,
                f"segmentation not found among the outputs of the run recorded in {path} (other --inputs or "
                + "--output_postfix than that run's?)",
            )
    return record
