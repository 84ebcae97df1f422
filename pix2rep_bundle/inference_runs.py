"""Inference runs: :func:`start_inference_run` takes the output folder's lock (:class:`~pix2rep_bundle.run_lock.RunLock`)
and keeps a ``run_info.json`` there (``"kind": "inference"``, :mod:`pix2rep_bundle.run_record`): the checkpoint
(path, size, modification time, md5), the inputs, the postfix, the planned outputs and a ``"status"``: ``running``
from the start, ``finished`` with the list of ``outputs`` at the end (:class:`InferenceRunRecord`), ``failed`` with
the error. A folder holding an earlier run's segmentations is refused unless ``--overwrite true``, which first removes
the files the earlier record lists (nothing else). Whatever reads an inference folder as one run's results checks
that record first (:func:`check_inference_folder`).
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from pix2rep_bundle.data.records import NIFTI_SUFFIXES
from pix2rep_bundle.errors import DataError
from pix2rep_bundle.io import write_json_atomic
from pix2rep_bundle.run_lock import RunLock
from pix2rep_bundle.run_record import RUN_RECORD, now, read_record, write_run_record
from pix2rep_bundle.settings import as_bool

logger = logging.getLogger(__name__)

INFERENCE_KIND = "inference"  # the "kind" of an inference run's record


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
    return read_record(folder / RUN_RECORD, strict=True)


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
    record |= {"status": status, "ended": now(), "outputs": written, **details}
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
