"""Which folders the bundle may write into or replace: only those it recognisably made itself.

Every folder an entry point creates (the phantom, a prepared dataset, a run's ``output_dir``, inference outputs,
a sweep) gets a marker file, ``.pix2rep_bundle.json``, naming what kind of folder it is. The rules:

- a folder is **replaced** wholesale (the phantom, a prepared dataset) only when it does not exist, is empty, or
  carries the marker of that kind (:func:`check_replaceable`); anything else is left untouched with an error;
- a folder is **written into** (runs, inference, sweeps) when it does not exist, is empty, carries the marker of
  that kind, or the user says ``--overwrite true`` (:func:`claim_output_dir`): the bundle then adds or replaces its
  own files there and deletes nothing else;
- never the dataset folder, a folder containing it or a folder inside it, nor the inference inputs' folder or a
  folder containing it (:func:`refuse_overlap`), whatever the override.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import logging
import os
from collections.abc import Iterator, Mapping
from pathlib import Path

from pix2rep_bundle.errors import DataError
from pix2rep_bundle.io import atomic_directory, remove_stale_temporaries, write_json_atomic

logger = logging.getLogger(__name__)

MARKER = ".pix2rep_bundle.json"
PLACEHOLDERS = (".gitkeep",)  # files that leave a folder "empty" (a repository keeps models/ with one)
# folders made before the marker existed, recognised by a file only the bundle writes: kind -> (file, JSON key)
LEGACY_MARKERS = {
    "phantom": ("phantom.json", "generator"),
    "prepared": ("datalist.json", "source_fingerprint"),
    "run": ("run_info.json", "settings"),
}


def is_empty(folder: str | os.PathLike) -> bool:
    """Whether ``folder`` does not exist or holds nothing but placeholder files (``.gitkeep``)."""
    folder = Path(folder)
    if not folder.exists():
        return True
    if not folder.is_dir():
        return False
    return all(entry.name in PLACEHOLDERS for entry in folder.iterdir())


def _holds_only_bundle_folders(folder: Path) -> bool:
    """Empty, or nothing but placeholders and bundle-made subfolders (e.g. ``eval/`` holding ``segmentations/``)."""
    if is_empty(folder):
        return True
    if not folder.is_dir() or (folder / MARKER).exists():
        return False
    return all(
        entry.name in PLACEHOLDERS or (entry.is_dir() and folder_kind(entry) is not None) for entry in folder.iterdir()
    )


def folder_kind(folder: str | os.PathLike) -> str | None:
    """The kind of bundle-made folder ``folder`` is (``phantom``, ``prepared``, ``run``, ...), or None."""
    folder = Path(folder)
    try:
        return str(json.loads((folder / MARKER).read_text())["kind"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    for kind, (name, key) in LEGACY_MARKERS.items():
        try:
            if key in json.loads((folder / name).read_text()):
                return kind
        except (OSError, ValueError, TypeError):
            continue
    return None


def write_marker(folder: str | os.PathLike, kind: str) -> Path:
    """Mark ``folder`` as a bundle-made folder of ``kind``."""
    path = Path(folder) / MARKER
    write_json_atomic(
        path,
        {
            "kind": kind,
            "made_by": "pix2rep_bundle",
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        },
    )
    return path


def _relation(path: Path, other: Path) -> str | None:
    if path == other:
        return "is"
    if path in other.parents:
        return "contains"
    if other in path.parents:
        return "is inside"
    return None


def refuse_overlap(
    path: str | os.PathLike, protected: Mapping[str, str | os.PathLike | None], inside_allowed: tuple[str, ...] = ()
) -> None:
    """DataError when ``path`` is, contains or lies inside one of the ``protected`` folders (``{what: folder}``,
    e.g. ``{"dataset folder": dataset_dir}``; None entries are skipped). For the ``what`` in ``inside_allowed``, a
    subfolder is fine (e.g. segmentations in ``scans/seg/``: the outputs are checked file by file)."""
    resolved = Path(path).resolve()
    for what, folder in protected.items():
        if folder is None:
            continue
        relation = _relation(resolved, Path(folder).resolve())
        if relation is not None and not (relation == "is inside" and what in inside_allowed):
            raise DataError(
                path,
                f"this output folder {relation} the {what} ({folder}): the bundle never writes "
                "there; choose another output folder",
            )


def _refuse_a_file_in_the_way(folder: Path) -> None:
    if folder.exists() and not folder.is_dir():
        raise DataError(folder, "a file is in the way of this output folder; it is left untouched")


def check_replaceable(folder: str | os.PathLike, kind: str) -> None:
    """DataError unless ``folder`` may be replaced wholesale by a new ``kind`` folder: it does not exist, is empty,
    or is a bundle-made ``kind`` folder."""
    folder = Path(folder)
    _refuse_a_file_in_the_way(folder)
    if is_empty(folder):
        return
    found = folder_kind(folder)
    if found == kind:
        return
    what = f"a bundle-made '{found}' folder" if found else f"not made by the bundle (no {MARKER})"
    raise DataError(
        folder,
        f"exists, is not empty and is {what}: it is left untouched. Choose a new or empty "
        f"folder for the {kind} output (or remove this one yourself)",
    )


@contextlib.contextmanager
def replaced_directory(folder: str | os.PathLike, kind: str) -> Iterator[Path]:
    """Yield a temporary folder that, on success, is marked as ``kind`` and replaces ``folder`` atomically; refused
    before any work (and checked again before the swap) unless :func:`check_replaceable` allows it."""
    check_replaceable(folder, kind)
    with atomic_directory(folder) as tmp:
        yield tmp
        write_marker(tmp, kind)
        check_replaceable(folder, kind)


def claim_output_dir(
    folder: str | os.PathLike,
    kind: str,
    overwrite: bool = False,
    protected: Mapping[str, str | os.PathLike | None] | None = None,
    inside_allowed: tuple[str, ...] = (),
) -> str:
    """Make ``folder`` the output folder of a ``kind`` job and mark it; returns it.

    Taken when it does not exist, is empty (or holds only bundle-made folders) or is already a bundle-made ``kind``
    folder; a non-empty folder that is not (the user's own files, or another kind of output) only with
    ``overwrite`` (the job then writes its own files beside what is there and deletes nothing). Never a
    ``protected`` folder (:func:`refuse_overlap`). Checks that
    files can be written there, before any long work, and removes the temporaries that killed writers left there
    (:func:`pix2rep_bundle.io.remove_stale_temporaries`).
    """
    import tempfile

    refuse_overlap(folder, protected or {}, inside_allowed)
    path = Path(folder)
    _refuse_a_file_in_the_way(path)
    found = None if is_empty(path) else folder_kind(path)
    if not _holds_only_bundle_folders(path) and found != kind:
        what = f"holds a '{found}' output of the bundle" if found else f"was not made by the bundle (no {MARKER})"
        if not overwrite:
            raise DataError(
                folder,
                f"is not empty and {what}: choose a new or empty output folder, or pass "
                "--overwrite true to write into it (files of the same names are replaced, "
                "nothing else is deleted)",
            )
        logger.warning(f"--overwrite true: writing into {folder}, which {what}")
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
        if found != kind or not (path / MARKER).is_file():
            write_marker(path, kind)
        remove_stale_temporaries(path)
    except OSError as err:
        raise DataError(folder, f"cannot write output here ({err.strerror or err})") from err
    return os.fspath(folder)
