"""Where the images come from, one concept for every source:

- an ACDC-layout folder (``patient*/`` subfolders with ``Info.cfg``: :mod:`pix2rep_bundle.data.acdc`);
- a plain folder of NIfTI scans, any names, nested, 3D or 4D, labels optional (:mod:`pix2rep_bundle.data.folder`);
- a MONAI datalist JSON in the Decathlon form (:mod:`pix2rep_bundle.data.decathlon`);
- by default the embedded phantom (ACDC layout), made on first use.

:func:`scan_source` gives the subjects of any of them (:mod:`pix2rep_bundle.data.records`), which the preparation
(:mod:`pix2rep_bundle.data.preparation`) turns into the prepared datalist.
"""

from __future__ import annotations

import os
from pathlib import Path

from pix2rep_bundle.data.acdc import acdc_source, is_acdc_layout
from pix2rep_bundle.data.decathlon import datalist_source
from pix2rep_bundle.data.folder import folder_source
from pix2rep_bundle.data.records import Source
from pix2rep_bundle.errors import DataError


def resolve_dataset_dir(
    dataset_dir: str | os.PathLike,
    phantom_dir: str | os.PathLike,
    phantom_subjects: int = 100,
    seed: int = 0,
    datalist: str | os.PathLike | None = None,
) -> str:
    """Return the source to prepare: ``datalist`` (a datalist JSON) when given, else ``dataset_dir``, generating the
    phantom there first when it is the bundle's phantom folder.

    A user folder (e.g. ``--dataset_dir /data/ACDC/training``) or datalist is only checked for existence; the
    phantom folder is (re)generated when missing or made with other parameters.
    """
    from pix2rep_bundle.data.phantom import ensure_phantom

    if datalist not in (None, ""):
        if not Path(datalist).is_file():
            raise DataError(
                datalist, "datalist file not found (--datalist expects a datalist JSON in the Decathlon form)"
            )
        return str(Path(datalist).resolve())
    dataset_dir, phantom_dir = Path(dataset_dir).resolve(), Path(phantom_dir).resolve()
    if dataset_dir == phantom_dir:
        return str(ensure_phantom(phantom_dir, num_subjects=phantom_subjects, seed=seed))
    if not dataset_dir.is_dir():
        raise DataError(
            dataset_dir,
            "dataset folder not found (expected an ACDC-layout folder of patientXXX/ subfolders or a folder of NIfTI "
            "scans; leave --dataset_dir unset to use the generated phantom)",
        )
    return str(dataset_dir)


def source_kind(path: str | os.PathLike) -> str:
    """``datalist`` for a file, ``acdc`` for a folder with ``patient*/Info.cfg`` subfolders, else ``folder``."""
    path = Path(path)
    if path.is_file():
        return "datalist"
    return "acdc" if is_acdc_layout(path) else "folder"


def _check_names(source: Source) -> None:
    """DataError when two volumes would be written under one name (names made from file paths)."""
    seen: dict[str, Path] = {}
    for subject in source.subjects:
        for volume in subject.volumes + subject.extra:
            if volume.name in seen and seen[volume.name] != volume.image:
                raise DataError(
                    volume.image, f"gets the prepared name {volume.name!r}, as {seen[volume.name]} does: rename one"
                )
            seen[volume.name] = volume.image


def scan_source(path: str | os.PathLike, include_cine: bool = False) -> Source:
    """The subjects of a data source: a datalist JSON (a file), an ACDC-layout folder, or a plain folder of NIfTI
    scans (:func:`source_kind`); ``include_cine`` adds an ACDC subject's cine frames for pretraining. DataError
    naming the path when it does not exist."""
    path = Path(path)
    if not path.exists():
        raise DataError(path, "dataset folder not found")
    kind = source_kind(path)
    if kind == "acdc":
        return acdc_source(path, include_cine)
    source = datalist_source(path) if kind == "datalist" else folder_source(path)
    _check_names(source)
    return source
