"""Where the images come from: the user's ACDC-layout folder, or the embedded phantom made on first use."""

from __future__ import annotations

import os
from pathlib import Path

from pix2rep_bundle.errors import DataError


def resolve_dataset_dir(
    dataset_dir: str | os.PathLike, phantom_dir: str | os.PathLike, phantom_subjects: int = 100, seed: int = 0
) -> str:
    """Return ``dataset_dir``, generating the phantom there first when it is the bundle's phantom folder.

    A user folder (e.g. ``--dataset_dir /data/ACDC/training``) is only checked for existence; the phantom
    folder is (re)generated when missing or made with other parameters.
    """
    from pix2rep_bundle.data.phantom import ensure_phantom

    dataset_dir, phantom_dir = Path(dataset_dir).resolve(), Path(phantom_dir).resolve()
    if dataset_dir == phantom_dir:
        return str(ensure_phantom(phantom_dir, num_subjects=phantom_subjects, seed=seed))
    if not dataset_dir.is_dir():
        raise DataError(
            dataset_dir,
            "dataset folder not found (expected an ACDC-layout folder of patientXXX/ "
            "subfolders; leave --dataset_dir unset to use the generated phantom)",
        )
    return str(dataset_dir)
