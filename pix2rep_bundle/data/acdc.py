"""ACDC-layout datasets: scan and validate the folder, prepare volumes and a datalist (splits:
:mod:`pix2rep_bundle.data.splits`; checks of each volume: :mod:`pix2rep_bundle.data.volume_checks`).

Layout: ``dataset_dir/patientXXX/patientXXX_frameYY.nii.gz`` (image), ``..._frameYY_gt.nii.gz`` (labels:
0 background, 1 RV, 2 MYO, 3 LV), ``Info.cfg`` (``ED``, ``ES``, ``Group``, ``NbFrame``, ...) and optionally
``patientXXX_4d.nii.gz`` (the cine sequence). The synthetic phantom is written in the same layout.

:func:`acdc_source` turns the subjects into the records every source gives (:mod:`pix2rep_bundle.data.records`): the
ED and ES volumes with their labels, and the other cine frames for pretraining. The preparation itself is
:mod:`pix2rep_bundle.data.preparation`.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from pix2rep_bundle.data.info_cfg import read_info_cfg
from pix2rep_bundle.data.records import UNKNOWN_GROUP, Source, Subject, Volume, frame_file, frame_stem, nifti_shape
from pix2rep_bundle.errors import DataError

_FRAME_FILE = re.compile(r"^(?P<subject>.+)_frame(?P<frame>\d+)(?P<gt>_gt)?\.nii(\.gz)?$")


@dataclass
class SubjectRecord:
    """One ACDC subject: its folder, ``Info.cfg`` content and files."""

    subject: str
    folder: Path
    group: str
    ed_frame: int
    es_frame: int
    num_frames: int | None
    frames: dict[int, tuple[Path, Path | None]] = field(default_factory=dict)
    cine: Path | None = None

    def labeled_frames(self) -> list[tuple[str, int]]:
        """``[("ED", ed_frame), ("ES", es_frame)]`` (one entry when both are the same frame)."""
        phases = [("ED", self.ed_frame)]
        if self.es_frame != self.ed_frame:
            phases.append(("ES", self.es_frame))
        return phases


# ---------------------------------------------------------------------------------------------- scanning


def _int_field(info: dict[str, str], key: str, path: Path, required: bool = True) -> int | None:
    """An integer field of ``Info.cfg``; DataError when required and missing, or not an integer."""
    if key not in info:
        if required:
            raise DataError(path, f"Info.cfg lacks the '{key}' field")
        return None
    try:
        return int(float(info[key]))
    except ValueError:
        raise DataError(path, f"Info.cfg field '{key}' is not an integer: {info[key]!r}") from None


def _frame_files(folder: Path) -> dict[int, tuple[Path, Path | None]]:
    """Map frame number -> (image, label or None) from the ``<subject>_frameYY[_gt].nii[.gz]`` files of ``folder``.

    DataError naming the files when one could belong to another subject (its name does not start with the folder's)
    or two files could be the same frame (``frame01.nii`` beside ``frame01.nii.gz``, ``frame1`` beside ``frame01``).
    """
    images: dict[int, Path] = {}
    labels: dict[int, Path] = {}
    for path in sorted(folder.iterdir()):
        match = _FRAME_FILE.match(path.name)
        if not (match and path.is_file()):
            continue
        if match["subject"] != folder.name:
            raise DataError(
                path,
                f"named for subject {match['subject']!r} but lies in folder {folder.name!r}: "
                "which subject is it? Move or rename it",
            )
        found = labels if match["gt"] else images
        frame = int(match["frame"])
        if frame in found:
            raise DataError(path, f"is frame {frame} of {folder.name}, and so is {found[frame].name}: keep one of them")
        found[frame] = path
    return {frame: (image, labels.get(frame)) for frame, image in sorted(images.items())}


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_distinct_subjects(subjects: list[SubjectRecord]) -> None:
    """DataError when two subject folders hold the same ED image (e.g. ``patient002_copy`` beside ``patient002``):
    one subject under two names could land in training and in test at once."""
    seen: dict[str, SubjectRecord] = {}
    for record in subjects:
        image = record.frames[record.ed_frame][0]
        digest = _file_digest(image)
        if digest in seen:
            first = seen[digest]
            raise DataError(
                record.folder,
                f"holds the same ED image as {first.folder} ({image.name} and "
                f"{first.frames[first.ed_frame][0].name} are identical): one subject under "
                "two names; remove the copy",
            )
        seen[digest] = record


def _cine_file(folder: Path, subject: str) -> Path | None:
    """The subject's 4D cine file, if any."""
    for name in (f"{subject}_4d.nii.gz", f"{subject}_4d.nii"):
        if (folder / name).is_file():
            return folder / name
    return None


def scan_subject(folder: Path) -> SubjectRecord:
    """Read one ``patientXXX`` folder; DataError for a missing Info.cfg/ED/ES field or ED/ES image or label."""
    subject = folder.name
    info_path = folder / "Info.cfg"
    info = read_info_cfg(info_path)
    ed, es = _int_field(info, "ED", info_path), _int_field(info, "ES", info_path)
    record = SubjectRecord(
        subject=subject,
        folder=folder,
        group=info.get("Group", UNKNOWN_GROUP) or UNKNOWN_GROUP,
        ed_frame=ed,
        es_frame=es,
        num_frames=_int_field(info, "NbFrame", info_path, False),
        frames=_frame_files(folder),
        cine=_cine_file(folder, subject),
    )
    for phase, frame in record.labeled_frames():
        image, label = record.frames.get(frame, (None, None))
        if image is None:
            raise DataError(frame_file(folder, subject, frame), f"{phase} image (frame {frame} of Info.cfg) not found")
        if label is None:
            raise DataError(
                frame_file(folder, subject, frame, "_gt"), f"{phase} label (_gt of frame {frame}) not found"
            )
    return record


def scan_acdc(dataset_dir: str | os.PathLike) -> list[SubjectRecord]:
    """All ``patient*`` subjects of an ACDC-layout folder, sorted by name, each checked for its ED/ES files, no two
    the same (:func:`check_distinct_subjects`)."""
    dataset_dir = Path(dataset_dir)
    if not dataset_dir.exists():
        raise DataError(dataset_dir, "dataset folder not found")
    if not dataset_dir.is_dir():
        raise DataError(dataset_dir, "not a folder (expected an ACDC-layout folder of patientXXX/ subfolders)")
    folders = sorted(p for p in dataset_dir.iterdir() if p.is_dir() and p.name.startswith("patient"))
    if not folders:
        raise DataError(dataset_dir, "no patientXXX subfolders (expected the ACDC layout)")
    subjects = [scan_subject(folder) for folder in folders]
    check_distinct_subjects(subjects)
    return subjects


# ---------------------------------------------------------------------------------------------- records


def is_acdc_layout(folder: str | os.PathLike) -> bool:
    """Whether ``folder`` is in the ACDC layout: it has ``patient*`` subfolders holding an ``Info.cfg``."""
    folder = Path(folder)
    return folder.is_dir() and any(p.is_dir() and (p / "Info.cfg").is_file() for p in folder.glob("patient*"))


def _cine_volumes(record: SubjectRecord) -> list[Volume]:
    """The cine frames other than ED/ES (images only, frames numbered from 1 as in ACDC)."""
    if record.cine is None:
        return []
    shape = nifti_shape(record.cine, (4,))
    skip = {frame for _, frame in record.labeled_frames()}
    frames = [index + 1 for index in range(shape[-1]) if index + 1 not in skip]
    return [Volume(record.cine, frame_stem(record.subject, frame), frame, "cine", index=frame - 1) for frame in frames]


def as_subject(record: SubjectRecord, include_cine: bool) -> Subject:
    """The source record of an ACDC subject: its ED/ES volumes with labels, and with ``include_cine`` its other cine
    frames for pretraining; its files are Info.cfg, the ED/ES files and the cine (with ``include_cine``)."""
    volumes, files = [], [record.folder / "Info.cfg"]
    for phase, frame in record.labeled_frames():
        image, label = record.frames[frame]
        volumes.append(Volume(image, frame_stem(record.subject, frame), frame, phase, label=label))
        files += [image, label]
    extra = _cine_volumes(record) if include_cine else []
    if include_cine and record.cine is not None:
        files.append(record.cine)
    return Subject(record.subject, record.group, volumes, record.folder, extra=extra, files=files)


def acdc_source(dataset_dir: str | os.PathLike, include_cine: bool = False) -> Source:
    """The subjects of an ACDC-layout folder (:func:`scan_acdc`) as a :class:`~pix2rep_bundle.data.records.Source`."""
    subjects = scan_acdc(dataset_dir)
    return Source("acdc", Path(dataset_dir), [as_subject(r, include_cine) for r in subjects])
