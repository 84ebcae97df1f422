"""Atomic file output: write to a temporary sibling, then rename, so no reader ever sees half a file.

Temporary names carry the writer's process id, ``.<name>.<pid>.<random>.tmp[<suffix>]``: a write killed before its
rename leaves such a file, and the next atomic write into that folder (or the start of a run in it) removes the
ones whose process no longer runs (:func:`remove_stale_temporaries`), never a live writer's. A write that fails
for want of space raises :class:`DiskWriteError` naming the file, the temporary removed.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import io
import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

# .<name>.<pid>.<random characters>.tmp, then the writer's own suffix (e.g. .nii.gz)
TEMPORARY_NAME = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)\.[A-Za-z0-9_]+\.tmp(?P<suffix>\..*)?$")
# what a write that ran out of space says: OSError ENOSPC/EDQUOT, or torch's zip writer ("unexpected pos")
_FULL_DISK_ERRNOS = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}
_FULL_DISK_HINTS = ("unexpected pos", "failed writing", "file write failed", "no space left")
_cleaned_folders: set[str] = set()  # folders already swept by this process


class DiskWriteError(OSError):
    """A file that could not be written, most likely for want of disk space; reads ``<path>: <problem>``."""

    def __init__(self, path: str | os.PathLike, problem: str, code: int = errno.ENOSPC):
        super().__init__(code, problem, os.fspath(path))

    def __str__(self) -> str:
        return f"{self.filename}: {self.strerror}"

    def __reduce__(self):
        return type(self), (self.filename, self.strerror, self.errno)


def process_alive(pid: int) -> bool:
    """Whether process ``pid`` runs on this machine (someone else's process counts as running)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    except (OverflowError, ValueError):  # not a possible process id
        return False
    return True


def remove_stale_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Remove the atomic writers' temporaries (files or folders named ``.<name>.<pid>.<random>.tmp...``) that
    processes which no longer run left in ``folder``; the removed paths. Those of running processes stay."""
    removed: list[Path] = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        match = TEMPORARY_NAME.match(entry.name)
        if match is None or process_alive(int(match["pid"])):
            continue
        path = Path(entry.path)
        try:
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(path)
            else:
                path.unlink()
        except OSError as err:
            logger.warning(f"{path}: left by process {match['pid']}, which no longer runs, but not removed ({err})")
            continue
        logger.warning(f"{path}: a temporary left by process {match['pid']}, which no longer runs; removed")
        removed.append(path)
    return removed


def _sweep_once(folder: Path) -> None:
    """:func:`remove_stale_temporaries` on ``folder`` the first time this process writes there."""
    key = os.path.realpath(folder)
    if key not in _cleaned_folders:
        remove_stale_temporaries(folder)
        _cleaned_folders.add(key)


def _temporary_affixes(path: Path, suffix: str) -> tuple[str, str]:
    """The ``mkstemp`` prefix and suffix of a temporary for ``path`` (see :data:`TEMPORARY_NAME`)."""
    return f".{path.name}.{os.getpid()}.", ".tmp" if suffix in ("", ".tmp") else ".tmp" + suffix


def _free_space(folder: Path) -> str:
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return "free space unknown"
    return f"{free / 2**20:.1f} MiB free"


def write_failure(path: str | os.PathLike, err: BaseException) -> DiskWriteError | None:
    """A :class:`DiskWriteError` naming ``path`` when ``err`` is what a write says when the disk is full (errno
    ENOSPC/EDQUOT, or torch's "unexpected pos" / "failed writing"), else None."""
    code = getattr(err, "errno", None) if isinstance(err, OSError) else None
    hinted = isinstance(err, (OSError, RuntimeError)) and any(h in str(err).lower() for h in _FULL_DISK_HINTS)
    if code not in _FULL_DISK_ERRNOS and not hinted:
        return None
    path = Path(path)
    said = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
    return DiskWriteError(
        path,
        f"could not be written ({type(err).__name__}: {said}): the disk may be full "
        + f"({_free_space(path.parent)} on {path.parent}); nothing was written there (temporary file removed)",
        code if code in _FULL_DISK_ERRNOS else errno.ENOSPC,
    )


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _normal_permissions(path: Path, directory: bool) -> None:
    """Give a ``mkstemp``/``mkdtemp`` result (0600/0700) the permissions a plain ``open``/``mkdir`` would."""
    os.chmod(path, (0o777 if directory else 0o666) & ~_umask())


@contextlib.contextmanager
def _named_write_failures(
    path: Path, kinds: tuple[type[BaseException], ...] = (OSError, RuntimeError)
) -> Iterator[None]:
    """Re-raise a write failure of ``kinds`` for want of space as :class:`DiskWriteError` naming ``path``
    (:func:`write_failure`); any other error as it is."""
    try:
        yield
    except kinds as err:
        failure = write_failure(path, err)
        if failure is None:
            raise
        raise failure from err


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is renamed to ``path``, on error removed.

    ``suffix`` ends the temporary name, for writers that choose the format from it (``.nii.gz``). A write that
    fails for want of space raises :class:`DiskWriteError` naming ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _sweep_once(path.parent)
    prefix, tmp_suffix = _temporary_affixes(path, suffix)
    with _named_write_failures(path, (OSError,)):
        fd, tmp = tempfile.mkstemp(prefix=prefix, suffix=tmp_suffix, dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    _normal_permissions(tmp_path, directory=False)
    try:
        with _named_write_failures(path):
            yield tmp_path
            os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary folder beside ``path``; on success it replaces ``path``, on error it is removed (a write
    that fails for want of space raises :class:`DiskWriteError` naming ``path``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _sweep_once(path.parent)
    prefix, suffix = _temporary_affixes(path, ".tmp")
    tmp = Path(tempfile.mkdtemp(prefix=prefix, suffix=suffix, dir=path.parent))
    _normal_permissions(tmp, directory=True)
    try:
        with _named_write_failures(path):
            yield tmp
            if path.exists():
                shutil.rmtree(path)
            os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as indented JSON to ``path`` atomically."""
    write_text_atomic(path, json.dumps(obj, indent=4) + "\n")  # as the Model Zoo's pretty-format-json hook


def torch_save_atomic(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` to ``path`` atomically; :class:`DiskWriteError` naming ``path`` when the disk is full (torch
    says "unexpected pos"), the temporary removed."""
    import torch

    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def refuse_existing_file(path: str | os.PathLike, overwrite: bool) -> Path:
    """``path`` as a Path, unless something already lies there and ``overwrite`` is false: then FileExistsError
    naming it (a figure or report must not silently replace a file the user may not want to lose)."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a folder: give the path of the file to write")
    if (path.exists() or path.is_symlink()) and not overwrite:
        raise FileExistsError(f"{path} already exists: choose another output path, or pass --overwrite true")
    return path


def rows_csv(rows: Sequence[Mapping[str, object]], columns: Sequence[str]) -> str:
    """CSV text of ``rows`` with exactly ``columns``; floats with 3 decimals, None left empty."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([f"{row[c]:.3f}" if isinstance(row[c], float) else row[c] for c in columns])
    return buffer.getvalue()
