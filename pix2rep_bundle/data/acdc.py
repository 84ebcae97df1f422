"""ACDC-layout datasets: scan and validate the folder, prepare volumes and a datalist (splits:
:mod:`pix2rep_bundle.data.splits`; checks of each volume: :mod:`pix2rep_bundle.data.volume_checks`).

Layout: ``dataset_dir/patientXXX/patientXXX_frameYY.nii.gz`` (image), ``..._frameYY_gt.nii.gz`` (labels:
0 background, 1 RV, 2 MYO, 3 LV), ``Info.cfg`` (``ED``, ``ES``, ``Group``, ``NbFrame``, ...) and optionally
``patientXXX_4d.nii.gz`` (the cine sequence). The synthetic phantom is written in the same layout.

Preparation resamples each ED/ES volume in plane, crops/pads it around the image centre and normalises its
intensities (:func:`pix2rep_bundle.data.preprocessing.volume_preprocessing`), writes it as NIfTI under
``output_dir/volumes/`` and records everything in ``output_dir/datalist.json`` (paths relative to
``output_dir``). Splits are by subject and stratified by pathology group; validation and test subjects
never appear in the pretraining or labelled pools.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pix2rep_bundle.data.info_cfg import read_info_cfg
from pix2rep_bundle.data.jobs import FileLock, run_jobs
from pix2rep_bundle.data.published_splits import check_split, labelled_phases
from pix2rep_bundle.data.splits import subject_splits
from pix2rep_bundle.data.volume_checks import check_label, check_pair, load_nifti
from pix2rep_bundle.errors import DataError
from pix2rep_bundle.io import write_json_atomic
from pix2rep_bundle.outputs import check_replaceable, refuse_overlap, replaced_directory

DATALIST_NAME = "datalist.json"
VOLUMES_DIR = "volumes"
DATALIST_VERSION = 1
UNKNOWN_GROUP = "unknown"
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


def _expected(folder: Path, subject: str, frame: int, suffix: str = "") -> Path:
    """The conventional path of a frame file (for error messages)."""
    return folder / f"{subject}_frame{frame:02d}{suffix}.nii.gz"


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
            raise DataError(_expected(folder, subject, frame), f"{phase} image (frame {frame} of Info.cfg) not found")
        if label is None:
            raise DataError(_expected(folder, subject, frame, "_gt"), f"{phase} label (_gt of frame {frame}) not found")
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


# ---------------------------------------------------------------------------------------------- preparation


def _meta_tensor(data: np.ndarray, affine: np.ndarray, path: Path):
    """Channel-first MetaTensor with the volume's affine, as ``LoadImaged`` + ``EnsureChannelFirstd`` give."""
    import torch
    from monai.data import MetaTensor

    return MetaTensor(
        torch.from_numpy(np.ascontiguousarray(data[None])),
        affine=torch.as_tensor(affine),
        meta={"filename_or_obj": str(path)},
    )


def _write_nifti(volume, path: Path, dtype) -> None:
    """Write a channel-first MetaTensor's first channel as NIfTI with the tensor's affine."""
    import nibabel as nib

    array = np.asarray(volume.detach().cpu().numpy()[0])
    if np.issubdtype(np.dtype(dtype), np.integer):
        array = np.rint(array)
    affine = np.asarray(volume.affine.detach().cpu().numpy(), dtype=np.float64)
    img = nib.Nifti1Image(array.astype(dtype), affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    img.header.set_xyzt_units("mm", "sec")
    nib.save(img, str(path))


def _entry(name: str, record: SubjectRecord, frame: int, phase: str, labeled: bool) -> dict:
    """A datalist entry with paths relative to the output folder."""
    entry: dict[str, Any] = {"image": f"{VOLUMES_DIR}/{name}.nii.gz"}
    if labeled:
        entry["label"] = f"{VOLUMES_DIR}/{name}_gt.nii.gz"
    entry.update(subject=record.subject, frame=int(frame), phase=phase, group=record.group)
    return entry


def _prepare_labeled(record: SubjectRecord, out_dir: Path, spacing, image_size) -> list[dict]:
    """Check, preprocess and write the ED/ES image+label volumes of one subject; return their entries."""
    from pix2rep_bundle.data.preprocessing import volume_preprocessing

    chain = volume_preprocessing(("image", "label"), spacing, image_size, load=False)
    entries = []
    for phase, frame in record.labeled_frames():
        image_path, label_path = record.frames[frame]
        image, image_affine = load_nifti(image_path)
        label, label_affine = load_nifti(label_path)
        check_label(label, label_path)
        check_pair(image, image_affine, label, label_affine, image_path, label_path)
        out = chain(
            {
                "image": _meta_tensor(image, image_affine, image_path),
                "label": _meta_tensor(label, image_affine, label_path),
            }
        )
        name = f"{record.subject}_frame{frame:02d}"
        _write_nifti(out["image"], out_dir / VOLUMES_DIR / f"{name}.nii.gz", np.float32)
        _write_nifti(out["label"], out_dir / VOLUMES_DIR / f"{name}_gt.nii.gz", np.uint8)
        entries.append(_entry(name, record, frame, phase, labeled=True))
    return entries


def _prepare_cine(record: SubjectRecord, out_dir: Path, spacing, image_size) -> list[dict]:
    """Preprocess and write every cine frame other than ED/ES (images only); return their entries."""
    from pix2rep_bundle.data.preprocessing import volume_preprocessing

    if record.cine is None:
        return []
    chain = volume_preprocessing(("image",), spacing, image_size, load=False)
    cine, affine = load_nifti(record.cine, ndim=4)
    skip = {frame for _, frame in record.labeled_frames()}
    entries = []
    for index in range(cine.shape[-1]):
        frame = index + 1  # ACDC frames are numbered from 1
        if frame in skip:
            continue
        out = chain({"image": _meta_tensor(cine[..., index], affine, record.cine)})
        name = f"{record.subject}_frame{frame:02d}"
        _write_nifti(out["image"], out_dir / VOLUMES_DIR / f"{name}.nii.gz", np.float32)
        entries.append(_entry(name, record, frame, "cine", labeled=False))
    return entries


def _prepare_subject(job: tuple[SubjectRecord, str, tuple, tuple, bool]) -> tuple[list[dict], list[dict]]:
    """Worker: (labelled ED/ES entries, cine entries) of one subject written under the output folder."""
    record, out_dir, spacing, image_size, with_cine = job
    out_dir = Path(out_dir)
    labeled = _prepare_labeled(record, out_dir, spacing, image_size)
    cine = _prepare_cine(record, out_dir, spacing, image_size) if with_cine else []
    return labeled, cine


def _parameters(
    dataset_dir, spacing, image_size, seed, val_fraction, test_fraction, include_cine, split: str = "random"
) -> dict:
    """The recorded parameters of a preparation (what a reused datalist must match)."""
    return {
        "source": str(Path(dataset_dir).resolve()),
        "spacing": [float(s) for s in spacing],
        "image_size": [int(s) for s in image_size],
        "seed": int(seed),
        "val_fraction": float(val_fraction),
        "test_fraction": float(test_fraction),
        "include_cine": bool(include_cine),
        "split": check_split(split),
        "version": DATALIST_VERSION,
    }


def source_fingerprint(subjects: list[SubjectRecord], include_cine: bool) -> str:
    """Hash of the names, sizes and modification times of every source file the preparation reads."""
    digest = hashlib.sha256()
    for record in subjects:
        paths = [record.folder / "Info.cfg"]
        for _, frame in record.labeled_frames():
            paths += list(record.frames[frame])
        if include_cine and record.cine is not None:
            paths.append(record.cine)
        for path in paths:
            stat = path.stat()
            digest.update(f"{record.subject}/{path.name}:{stat.st_size}:{stat.st_mtime_ns};".encode())
    return digest.hexdigest()[:16]


def _datalist(
    params: dict,
    fingerprint: str,
    splits: dict,
    subjects: list[SubjectRecord],
    labeled: dict[str, list[dict]],
    cine: dict[str, list[dict]],
) -> dict:
    """Assemble the datalist: splits, groups and the four pools of entries."""
    pretrain = []
    for subject in splits["pretrain"]:
        pretrain += [{k: v for k, v in e.items() if k != "label"} for e in labeled[subject]] + cine[subject]
    phases = labelled_phases(params["split"])

    def pool(ids: list[str]) -> list[dict]:
        return [e for s in ids for e in labeled[s] if e["phase"] in phases]

    return {
        **params,
        "source_fingerprint": fingerprint,
        "splits": splits,
        "groups": {r.subject: r.group for r in subjects},
        "pretrain": pretrain,
        "labeled": pool(splits["train"]),
        "validation": pool(splits["validation"]),
        "test": pool(splits["test"]),
    }


def prepare_dataset(
    dataset_dir: str | os.PathLike,
    output_dir: str | os.PathLike,
    spacing: tuple[float, float] = (1.5, 1.5),
    image_size: tuple[int, int] = (128, 128),
    seed: int = 0,
    val_fraction: float = 0.1,
    test_fraction: float = 0.2,
    include_cine: bool = False,
    num_workers: int = 0,
    split: str = "random",
) -> Path:
    """Prepare every subject of ``dataset_dir`` into ``output_dir`` (atomically) and return the datalist path.

    ``split``: ``random`` (subject-level from ``seed``, stratified by group, ``val_fraction``/``test_fraction``) or a
    published split (:mod:`pix2rep_bundle.data.published_splits`: ``chaitanya2020``, ``semi_70_10_20``).

    Writes ``output_dir/volumes/<subject>_frameYY[_gt].nii.gz`` (float32 image in [0, 1], uint8 label, the
    resampled affine) and ``output_dir/datalist.json``. On any error nothing is left at ``output_dir``.
    """
    from pix2rep_bundle.data.preprocessing import crop_size, in_plane_pixdim

    in_plane_pixdim(spacing)  # validate both before any work
    crop_size(image_size)
    refuse_overlap(output_dir, {"dataset folder": dataset_dir})
    check_replaceable(output_dir, "prepared")
    start = time.perf_counter()
    subjects = scan_acdc(dataset_dir)
    params = _parameters(dataset_dir, spacing, image_size, seed, val_fraction, test_fraction, include_cine, split)
    splits = subject_splits(subjects, split, seed, val_fraction, test_fraction, dataset_dir)
    train = set(splits["pretrain"])
    output_dir = Path(output_dir)
    print(
        f"prepare: {len(subjects)} subjects from {params['source']} -> {output_dir} "
        f"(spacing {params['spacing']} mm, size {params['image_size']})",
        flush=True,
    )
    labeled: dict[str, list[dict]] = {}
    cine: dict[str, list[dict]] = {}
    with replaced_directory(output_dir, "prepared") as tmp:
        (tmp / VOLUMES_DIR).mkdir()
        jobs = [
            (r, str(tmp), tuple(params["spacing"]), tuple(params["image_size"]), include_cine and r.subject in train)
            for r in subjects
        ]
        step = max(1, len(jobs) // 10)
        for done, (record, (lab, cin)) in enumerate(
            zip(subjects, run_jobs(_prepare_subject, jobs, num_workers)), start=1
        ):
            labeled[record.subject], cine[record.subject] = lab, cin
            if done % step == 0 or done == len(jobs):
                print(f"prepare: {done}/{len(jobs)} subjects ({time.perf_counter() - start:.1f} s)", flush=True)
        datalist = _datalist(params, source_fingerprint(subjects, include_cine), splits, subjects, labeled, cine)
        write_json_atomic(tmp / DATALIST_NAME, datalist)
        _make_readable(tmp)
    print(f"prepare: wrote {output_dir / DATALIST_NAME} in {time.perf_counter() - start:.1f} s", flush=True)
    return output_dir / DATALIST_NAME


def _make_readable(folder: Path) -> None:
    """Give the (private, temporary) output folder the usual permissions under the current umask."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(folder, 0o777 & ~umask)
    os.chmod(folder / DATALIST_NAME, 0o666 & ~umask)


# ---------------------------------------------------------------------------------------------- reuse


def _matches(datalist_path: Path, params: dict, fingerprint: str) -> bool:
    """Whether an existing datalist was made from this source with these parameters and is complete."""
    try:
        datalist = json.loads(datalist_path.read_text())
    except (OSError, ValueError):
        return False
    if any(datalist.get(k) != v for k, v in params.items()) or datalist.get("source_fingerprint") != fingerprint:
        return False
    root = datalist_path.parent
    pools = ("pretrain", "labeled", "validation", "test")
    paths = [e[k] for p in pools for e in datalist.get(p, []) for k in ("image", "label") if k in e]
    return all((root / path).is_file() for path in paths)


def ensure_prepared(
    dataset_dir: str | os.PathLike,
    output_dir: str | os.PathLike,
    spacing: tuple[float, float] = (1.5, 1.5),
    image_size: tuple[int, int] = (128, 128),
    seed: int = 0,
    val_fraction: float = 0.1,
    test_fraction: float = 0.2,
    include_cine: bool = False,
    num_workers: int = 0,
    split: str = "random",
) -> Path:
    """Return ``output_dir/datalist.json``, preparing it first unless it already matches the source and these
    parameters. Concurrent callers (e.g. several ranks) are serialised by a lock file beside ``output_dir``."""
    output_dir = Path(output_dir)
    datalist_path = output_dir / DATALIST_NAME
    params = _parameters(dataset_dir, spacing, image_size, seed, val_fraction, test_fraction, include_cine, split)
    subjects = scan_acdc(dataset_dir)
    fingerprint = source_fingerprint(subjects, include_cine)
    if _matches(datalist_path, params, fingerprint):
        return datalist_path
    refuse_overlap(output_dir, {"dataset folder": dataset_dir})  # before the lock file is made beside it
    check_replaceable(output_dir, "prepared")
    with FileLock(output_dir.parent / f".{output_dir.name}.lock"):
        if _matches(datalist_path, params, fingerprint):
            return datalist_path
        return prepare_dataset(
            dataset_dir,
            output_dir,
            spacing=spacing,
            image_size=image_size,
            seed=seed,
            val_fraction=val_fraction,
            test_fraction=test_fraction,
            include_cine=include_cine,
            num_workers=num_workers,
            split=split,
        )
