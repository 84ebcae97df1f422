"""What every data source (ACDC layout, plain folder, datalist JSON) hands to the preparation: subjects, each listing
its volumes. Plain data classes with no other dependency, so that any module of the package may import them."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

UNKNOWN_GROUP = "unknown"
# File name endings of NIfTI volumes, longest first.
NIFTI_SUFFIXES = (".nii.gz", ".nii")
_NIFTI_SUFFIX = re.compile(r"\.nii(\.gz)?$")


@dataclass(frozen=True)
class Volume:
    """One 3D volume to prepare: an image (a 3D file, or frame ``index`` of a 4D file), its optional label (the same
    frame of a 4D label when the image is 4D), and where it lands: ``name`` under the prepared ``volumes/`` folder."""

    image: Path
    name: str
    frame: int
    phase: str = "volume"
    label: Path | None = None
    index: int | None = None


@dataclass
class Subject:
    """One subject of a source: its id, pathology group (``unknown`` where the source has none), the volumes that
    every pool may hold, the extra frames that only pretraining takes (an ACDC cine with ``include_cine``), the files
    whose changes make a prepared datalist stale, and the pool a datalist JSON puts it in (None: drawn by the split).
    """

    subject: str
    group: str
    volumes: list[Volume]
    origin: Path
    extra: list[Volume] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)
    pool: str | None = None


@dataclass
class Source:
    """A scanned data source: ``kind`` (``acdc``, ``folder`` or ``datalist``), its path (folder or JSON file), its
    subjects in a deterministic order and the files of the source itself (the JSON of a datalist)."""

    kind: str
    path: Path
    subjects: list[Subject]
    files: list[Path] = field(default_factory=list)

    def describe(self) -> str:
        """How the progress line names the source."""
        names = {"acdc": "ACDC layout", "folder": "plain folder of NIfTI volumes", "datalist": "datalist JSON"}
        return names[self.kind]


def subject_name(number: int | str) -> str:
    """ACDC folder name of a subject number: ``1`` or ``"001"`` -> ``patient001``."""
    return f"patient{int(number):03d}"


def frame_stem(subject: str, frame: int) -> str:
    """ACDC name of a subject's frame, without ending: ``patient001``, 1 -> ``patient001_frame01``."""
    return f"{subject}_frame{int(frame):02d}"


def frame_file(folder: str | os.PathLike, subject: str, frame: int, suffix: str = "") -> Path:
    """The ACDC path of a frame's image in ``folder`` (``suffix="_gt"``: its label), ``.nii.gz``."""
    return Path(folder) / f"{frame_stem(subject, frame)}{suffix}.nii.gz"


def nifti_stem(path: Path) -> str:
    """The file name without ``.nii`` or ``.nii.gz``."""
    return _NIFTI_SUFFIX.sub("", path.name)


def is_nifti(path: Path) -> bool:
    """Whether the file name ends with ``.nii`` or ``.nii.gz``."""
    return bool(_NIFTI_SUFFIX.search(path.name))


def nifti_shape(path: Path, ndims: tuple[int, ...] = (3, 4)) -> tuple[int, ...]:
    """The shape in a NIfTI file's header (the data is not read); DataError naming the file when it is unreadable,
    not NIfTI, or not of one of ``ndims`` dimensions."""
    import nibabel as nib

    from pix2rep_bundle.errors import DataError

    try:
        img = nib.load(str(path))
    except Exception as err:  # nibabel raises many types for bad files
        raise DataError(path, f"not a readable NIfTI file ({type(err).__name__}: {err})") from err
    if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
        raise DataError(path, f"not a NIfTI file (read as {type(img).__name__})")
    shape = tuple(int(n) for n in img.shape)
    if len(shape) not in ndims:
        wanted = " or ".join(f"{n}D" for n in ndims)
        raise DataError(path, f"expected a {wanted} volume, got shape {shape}")
    return shape
