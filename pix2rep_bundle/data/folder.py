"""A plain folder of NIfTI scans as a data source: any names, searched recursively, no Info.cfg, labels optional.

- Files: ``*.nii`` and ``*.nii.gz`` anywhere below the folder, sorted by path; hidden files and folders (``.name``)
  are skipped. ``<name>_gt.nii[.gz]`` is the label of ``<name>.nii[.gz]`` beside it (optional).
- Volumes: a 3D file is one volume; a 4D file (a cine) gives one volume per frame (its label, if any, is 4D too).
- Subjects: a 4D file is one subject; the 3D files of a subfolder are one subject (a subfolder may not hold both);
  a 3D file directly in the folder is a subject of its own. Subject ids are paths relative to the folder.
"""

from __future__ import annotations

import os
import re
from collections import defaultdict
from pathlib import Path

from pix2rep_bundle.data.records import UNKNOWN_GROUP, Source, Subject, Volume, is_nifti, nifti_shape, nifti_stem
from pix2rep_bundle.errors import DataError

LABEL_SUFFIX = "_gt"
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def safe_name(path: str) -> str:
    """``path`` (``/``-separated) with every part reduced to letters, digits, ``.``, ``_`` and ``-`` (``.`` and
    ``..`` parts become ``_``): a name under the prepared ``volumes/`` folder."""
    parts = [_UNSAFE.sub("_", part) for part in str(path).replace("\\", "/").split("/") if part]
    return "/".join("_" if part in (".", "..") else part for part in parts) or "_"


def file_volumes(image: Path, label: Path | None, name: str, first_frame: int = 1) -> list[Volume]:
    """The volumes of one image file: itself when 3D, one per frame when 4D (``<name>_tNN``); DataError naming the
    label when it is not of the image's dimensionality."""
    shape = nifti_shape(image)
    if label is not None and len(nifti_shape(label)) != len(shape):
        raise DataError(label, f"label is {len(nifti_shape(label))}D but its image {image.name} is {len(shape)}D")
    if len(shape) == 3:
        return [Volume(image, name, first_frame, "volume", label=label)]
    return [
        Volume(image, f"{name}_t{index + 1:02d}", first_frame + index, "frame", label=label, index=index)
        for index in range(shape[-1])
    ]


def _nifti_files(root: Path) -> list[Path]:
    """Every NIfTI file below ``root``, sorted, hidden files and folders skipped."""
    found = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found += [Path(folder) / f for f in files if not f.startswith(".") and is_nifti(Path(f))]
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())


def _pair_labels(files: list[Path]) -> dict[Path, Path | None]:
    """Map image -> its ``_gt`` label (or None); DataError for two files of one volume (``a.nii`` beside
    ``a.nii.gz``) or a label without its image."""
    images: dict[tuple[Path, str], Path] = {}
    labels: dict[tuple[Path, str], Path] = {}
    for path in files:
        stem = nifti_stem(path)
        is_label = stem.endswith(LABEL_SUFFIX) and len(stem) > len(LABEL_SUFFIX)
        found = labels if is_label else images
        key = (path.parent, stem[: -len(LABEL_SUFFIX)] if is_label else stem)
        if key in found:
            raise DataError(path, f"is the same volume as {found[key].name} (two files, one name): keep one of them")
        found[key] = path
    for key, label in labels.items():
        if key not in images:
            raise DataError(label, f"a label ({LABEL_SUFFIX}) without its image {key[1]}.nii.gz beside it")
    return {image: labels.get(key) for key, image in images.items()}


def _subject_id(root: Path, path: Path) -> str:
    """A path relative to ``root`` without the NIfTI extension."""
    relative = path.relative_to(root)
    return (relative.parent / nifti_stem(path)).as_posix() if is_nifti(path) else relative.as_posix()


def _folder_subject(root: Path, folder: Path, images: list[Path], labels: dict[Path, Path | None]) -> Subject:
    """The subject of a subfolder's 3D files, numbered 1.. in name order."""
    subject = folder.relative_to(root).as_posix()
    volumes = []
    for image in images:
        name = safe_name(f"{subject}/{nifti_stem(image)}")
        volumes += file_volumes(image, labels[image], name, first_frame=len(volumes) + 1)
    files = [p for image in images for p in (image, labels[image]) if p is not None]
    return Subject(subject, UNKNOWN_GROUP, volumes, folder, files=files)


def _file_subject(root: Path, image: Path, label: Path | None) -> Subject:
    """The subject of one file: a 4D cine, or a 3D file directly in the folder."""
    subject = _subject_id(root, image)
    files = [image] if label is None else [image, label]
    return Subject(subject, UNKNOWN_GROUP, file_volumes(image, label, safe_name(subject)), image, files=files)


def _mixed_error(folder: Path, three: list[Path], four: list[Path]) -> DataError:
    """The error for a subfolder holding both 3D volumes and 4D files."""
    return DataError(
        folder,
        f"holds 3D volumes ({three[0].name}) and 4D files ({four[0].name}): a subject is a folder of 3D volumes "
        "or one 4D file; move one kind into a folder of its own",
    )


def folder_source(root: str | os.PathLike) -> Source:
    """The subjects of a plain folder of NIfTI scans (module docstring), in path order; DataError naming the folder
    when it holds no NIfTI volume, or the file or folder that breaks a rule."""
    root = Path(root)
    files = _nifti_files(root)
    if not files:
        raise DataError(
            root,
            "no NIfTI volumes (.nii, .nii.gz) in this folder or below: expected a folder of scans or the ACDC layout "
            "(patientXXX/ folders with Info.cfg)",
        )
    labels = _pair_labels(files)
    by_folder: dict[Path, list[Path]] = defaultdict(list)
    subjects: dict[str, Subject] = {}
    for image in labels:
        if len(nifti_shape(image)) == 4 or image.parent == root:
            _add(subjects, _file_subject(root, image, labels[image]))
        else:
            by_folder[image.parent].append(image)
    for folder, images in by_folder.items():
        four = [s.origin for s in subjects.values() if s.origin.parent == folder]
        if four:
            raise _mixed_error(folder, images, four)
        _add(subjects, _folder_subject(root, folder, images, labels))
    return Source("folder", root, [subjects[s] for s in sorted(subjects)])


def _add(subjects: dict[str, Subject], subject: Subject) -> None:
    """Add a subject; DataError when another one has the same id (``a.nii.gz`` beside a folder ``a/``)."""
    if subject.subject in subjects:
        other = subjects[subject.subject].origin
        raise DataError(subject.origin, f"is subject {subject.subject!r}, and so is {other}: rename one of them")
    subjects[subject.subject] = subject
