"""Writing the phantom in the ACDC layout: NIfTI frames and labels, ``Info.cfg``, the ``phantom.json`` marker,
atomically and only over a folder the bundle made (:func:`write_phantom`, :func:`ensure_phantom`)."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from pix2rep_bundle.data.info_cfg import read_info_cfg
from pix2rep_bundle.data.jobs import build_once, run_jobs
from pix2rep_bundle.data.phantom.anatomy import GROUPS, LABELS, PhantomSubject, subject_name
from pix2rep_bundle.data.phantom.rendering import make_subject
from pix2rep_bundle.data.records import frame_stem
from pix2rep_bundle.io import write_json_atomic
from pix2rep_bundle.outputs import check_replaceable, replaced_directory

if TYPE_CHECKING:
    import nibabel as nib

MARKER = "phantom.json"
PHANTOM_VERSION = 1  # bump when the generator's output changes: ensure_phantom then regenerates


def info_text(subject: PhantomSubject) -> str:
    """``Info.cfg`` content in ACDC's exact format."""
    return (
        f"ED: {subject.ed_frame}\nES: {subject.es_frame}\nGroup: {subject.group}\n"
        f"Height: {subject.height:.1f}\nNbFrame: {subject.num_frames}\nWeight: {subject.weight:.1f}\n"
    )


def read_info(path: str | os.PathLike) -> dict[str, str]:
    """A phantom subject's ``Info.cfg`` (:func:`pix2rep_bundle.data.info_cfg.read_info_cfg`, with ED, ES, Group)."""
    return read_info_cfg(path, required=("ED", "ES", "Group"))


def _nifti(array: np.ndarray, spacing: Sequence[float], origin: Sequence[float], dtype: type) -> "nib.Nifti1Image":
    """NIfTI-1 image with affine diag(spacing) + origin and millimetre units."""
    import nibabel as nib

    affine = np.diag([*map(float, spacing[:3]), 1.0])
    affine[:3, 3] = origin
    img = nib.Nifti1Image(np.asarray(array).astype(dtype), affine)
    img.header.set_xyzt_units("mm", "sec")
    img.header.set_zooms(tuple(float(s) for s in spacing) + (1.0,) * (array.ndim - 3))
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    return img


def write_subject(subject: PhantomSubject, out_dir: str | os.PathLike) -> Path:
    """Write one subject in the ACDC layout under ``out_dir/patientXXX`` and return that folder."""
    import nibabel as nib

    folder = Path(out_dir) / subject.name
    folder.mkdir(parents=True, exist_ok=True)
    for frame in (subject.ed_frame, subject.es_frame):
        stem = frame_stem(subject.name, frame)
        nib.save(_nifti(subject.images[frame], subject.spacing, subject.origin, np.int16), folder / f"{stem}.nii.gz")
        nib.save(_nifti(subject.labels[frame], subject.spacing, subject.origin, np.uint8), folder / f"{stem}_gt.nii.gz")
    if subject.cine is not None:
        nib.save(_nifti(subject.cine, subject.spacing, subject.origin, np.int16), folder / f"{subject.name}_4d.nii.gz")
    (folder / "Info.cfg").write_text(info_text(subject))
    return folder


def _make_and_write(args: tuple[int, int, bool, str]) -> dict:
    """Worker: generate and write one subject; return its summary for the marker file."""
    subject_id, seed, with_cine, out_dir = args
    subject = make_subject(subject_id, seed=seed, with_cine=with_cine)
    write_subject(subject, out_dir)
    return {
        "id": subject.name,
        "group": subject.group,
        "ed": subject.ed_frame,
        "es": subject.es_frame,
        "shape": list(subject.images[subject.ed_frame].shape),
        "spacing": list(subject.spacing),
    }


def _params(num_subjects: int, seed: int, first_id: int, with_cine: bool) -> dict:
    """The parameters that define a phantom dataset (what the marker file must match)."""
    return {
        "num_subjects": int(num_subjects),
        "seed": int(seed),
        "first_id": int(first_id),
        "with_cine": bool(with_cine),
        "phantom_version": PHANTOM_VERSION,
    }


def write_phantom(
    out_dir: str | os.PathLike,
    num_subjects: int = 100,
    seed: int = 0,
    first_id: int = 1,
    with_cine: bool = False,
    num_workers: int = 0,
) -> Path:
    """Generate ``num_subjects`` subjects into ``out_dir`` atomically, with the marker ``phantom.json``."""
    from pix2rep_bundle import __version__

    if num_subjects < 1:
        raise ValueError(f"num_subjects must be >= 1, got {num_subjects}")
    out_dir = Path(out_dir)
    ids = list(range(int(first_id), int(first_id) + int(num_subjects)))
    start = time.perf_counter()
    print(f"phantom: generating {num_subjects} subjects (seed {seed}) into {out_dir}", flush=True)
    with replaced_directory(out_dir, "phantom") as tmp:
        jobs = [(i, int(seed), bool(with_cine), str(tmp)) for i in ids]
        summaries = []
        for done, summary in enumerate(run_jobs(_make_and_write, jobs, num_workers), start=1):
            summaries.append(summary)
            if done % max(1, num_subjects // 10) == 0 or done == num_subjects:
                print(f"phantom: {done}/{num_subjects} subjects ({time.perf_counter() - start:.1f} s)", flush=True)
        marker = {
            **_params(num_subjects, seed, first_id, with_cine),
            "package_version": __version__,
            "generator": "pix2rep_bundle.data.phantom",
            "groups": list(GROUPS),
            "labels": LABELS,
            "subjects": summaries,
        }
        write_json_atomic(tmp / MARKER, marker)  # the folder and the marker get the usual permissions
    print(f"phantom: wrote {num_subjects} subjects to {out_dir} in {time.perf_counter() - start:.1f} s", flush=True)
    return out_dir


def phantom_matches(
    out_dir: str | os.PathLike, num_subjects: int = 100, seed: int = 0, first_id: int = 1, with_cine: bool = False
) -> bool:
    """Whether ``out_dir`` holds a complete phantom made with these parameters."""
    out_dir = Path(out_dir)
    try:
        marker = json.loads((out_dir / MARKER).read_text())
    except (OSError, ValueError):
        return False
    wanted = _params(num_subjects, seed, first_id, with_cine)
    if any(marker.get(k) != v for k, v in wanted.items()):
        return False
    return all((out_dir / subject_name(i) / "Info.cfg").is_file() for i in range(first_id, first_id + num_subjects))


def ensure_phantom(out_dir: str | os.PathLike, num_subjects: int = 100, seed: int = 0, with_cine: bool = False) -> Path:
    """Return ``out_dir`` after making sure it holds the phantom with these parameters (generated if not).

    A folder that exists, is not empty and was not made as a phantom by the bundle is left alone and a DataError
    is raised (:func:`pix2rep_bundle.outputs.check_replaceable`). Concurrent callers (e.g. several ranks) are
    serialised by a lock file.
    """
    out_dir = Path(out_dir)
    build_once(
        out_dir,
        lambda: phantom_matches(out_dir, num_subjects, seed, 1, with_cine),
        lambda: write_phantom(out_dir, num_subjects=num_subjects, seed=seed, with_cine=with_cine),
        lambda: check_replaceable(out_dir, "phantom"),
    )
    return out_dir
