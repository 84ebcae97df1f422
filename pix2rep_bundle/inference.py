"""Inference on 3D NIfTI volumes: which files to segment, atomic NIfTI output and progress lines.

``configs/inference.yaml`` wires these around MONAI's pieces: the preprocessing chain of
:func:`pix2rep_bundle.data.preprocessing.volume_preprocessing`, ``SliceInferer``, ``Invertd`` back to the
input's voxel grid and ``SaveImaged`` with :class:`AtomicNibabelWriter`.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from monai.data import NibabelWriter

from pix2rep_bundle.data.preprocessing import NIFTI_SUFFIXES
from pix2rep_bundle.errors import DataError
from pix2rep_bundle.io import atomic_path

# file names that are never inputs: ground-truth labels and this bundle's own outputs
SKIPPED_SUFFIXES = ("_gt", "_seg")


def _nifti_stem(name: str) -> str | None:
    """The name without its NIfTI suffix, or ``None`` when it is not a NIfTI file name."""
    for suffix in NIFTI_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return None


def volumes_in_folder(folder: str | os.PathLike) -> list[str]:
    """The NIfTI volumes under ``folder`` (recursively, sorted), without ``*_gt`` labels and ``*_seg`` outputs."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(folder, "input folder not found")
    found = []
    for path in sorted(folder.rglob("*")):
        stem = _nifti_stem(path.name)
        if (
            path.is_file()
            and stem is not None
            and not stem.endswith(SKIPPED_SUFFIXES)
            and not any(part.startswith(".") for part in path.relative_to(folder).parts)
        ):
            found.append(str(path))
    if not found:
        raise DataError(folder, "no NIfTI volume (*.nii, *.nii.gz) in this folder")
    return found


def inference_data(inputs: str | os.PathLike | Sequence[Any]) -> list[dict[str, Any]]:
    """The ``{"image": path, ...}`` entries to segment.

    ``inputs`` is a folder (every volume under it, see :func:`volumes_in_folder`), one NIfTI file, a JSON
    file holding a list of paths or of entries (or ``{"data": [...]}``), or such a list itself.
    """
    if isinstance(inputs, (str, os.PathLike)):
        path = Path(inputs)
        if path.is_dir():
            return [{"image": p} for p in volumes_in_folder(path)]
        if path.suffix == ".json":
            if not path.is_file():
                raise DataError(path, "input list not found")
            try:
                listed = json.loads(path.read_text())
            except ValueError as err:
                raise DataError(path, f"not valid JSON ({err})") from err
            listed = listed.get("data", listed) if isinstance(listed, dict) else listed
            if not isinstance(listed, list):
                raise DataError(path, 'expected a list of paths or {"image": path} entries')
            root = path.parent
            entries = inference_data(listed)
            return [e | {"image": str(root / e["image"])} for e in entries]
        if not path.exists():
            raise DataError(path, "input not found")
        return [{"image": str(path)}]
    entries = []
    for item in inputs:
        entry = dict(item) if isinstance(item, Mapping) else {"image": item}
        if "image" not in entry:
            raise DataError(str(item), 'an input entry has no "image"')
        entries.append(entry | {"image": os.fspath(entry["image"])})
    if not entries:
        raise DataError("<inputs>", "the input list is empty")
    return entries


def split_volumes(datalist_path: str | os.PathLike, split: str = "test") -> list[dict[str, Any]]:
    """The original (unprepared) volumes of a datalist split: ``{"image", "label", "subject", "frame"}``.

    The prepared datalist records its source folder; the ACDC layout names each frame
    ``<subject>/<subject>_frameXX.nii.gz`` and its label ``..._gt.nii.gz``.
    """
    datalist_path = Path(datalist_path)
    datalist = json.loads(datalist_path.read_text())
    if split not in datalist or not isinstance(datalist[split], list):
        raise DataError(datalist_path, f"no split {split!r}")
    source = Path(datalist["source"])
    entries = []
    for entry in datalist[split]:
        subject, frame = entry["subject"], int(entry["frame"])
        name = f"{subject}_frame{frame:02d}"
        item = {"image": str(source / subject / f"{name}.nii.gz"), "subject": subject, "frame": frame}
        if "label" in entry:
            item["label"] = str(source / subject / f"{name}_gt.nii.gz")
        entries.append(item)
    return entries


def _output_stem(image: str | os.PathLike) -> str:
    """The name ``SaveImaged`` derives from an input file: its base name without ``.nii``/``.nii.gz``."""
    name = os.path.basename(os.fspath(image))
    stem, ext = os.path.splitext(name)
    return os.path.splitext(stem)[0] if ext == ".gz" else stem


def inputs_root(entries: Sequence[Mapping[str, Any]]) -> str:
    """The deepest folder holding every input image: outputs mirror the inputs' paths below it."""
    folders = [os.path.dirname(os.path.abspath(os.fspath(e["image"]))) for e in entries]
    return os.path.commonpath(folders) if folders else ""


def output_paths(
    entries: Sequence[Mapping[str, Any]], output_dir: str | os.PathLike, postfix: str = "seg", suffix: str = ".nii.gz"
) -> dict[str, str]:
    """``{input image: segmentation path}`` as ``SaveImaged`` writes them (``data_root_dir`` = :func:`inputs_root`,
    so ``in/a/sa.nii.gz`` and ``in/b/sa.nii.gz`` give ``out/a/sa_seg.nii.gz`` and ``out/b/sa_seg.nii.gz``).

    DataError, before any work, when two inputs would give one output (``a.nii`` beside ``a.nii.gz``, or one file
    listed twice) or an output would be an input file."""
    root = inputs_root(entries)
    inputs = {os.path.abspath(os.fspath(e["image"])) for e in entries}
    planned: dict[str, str] = {}
    for entry in entries:
        image = os.path.abspath(os.fspath(entry["image"]))
        name = _output_stem(image) + (f"_{postfix}" if postfix else "") + suffix
        out = os.path.abspath(os.path.join(os.fspath(output_dir), os.path.relpath(os.path.dirname(image), root), name))
        clash = next((i for i, o in planned.items() if o == out), None)
        if clash is not None:
            raise DataError(
                image,
                f"gives the same output as {clash} ({out}): rename one of them or segment them " "in separate runs",
            )
        if out in inputs:
            raise DataError(
                out,
                "would be overwritten by a segmentation (an input file): choose another "
                "--output_dir or a non-empty --output_postfix",
            )
        planned[image] = out
    return planned


def check_outputs(
    entries: Sequence[Mapping[str, Any]], output_dir: str | os.PathLike, postfix: str = "seg", overwrite: Any = False
) -> str:
    """Before any work: every input gets its own output (:func:`output_paths`), ``output_dir`` is not and does not
    contain the inputs' folder, and it is a new, empty or bundle-made segmentation folder (else
    ``--overwrite true``). A subfolder of the inputs' folder is fine. Returns ``output_dir``."""
    from pix2rep_bundle.outputs import claim_output_dir
    from pix2rep_bundle.settings import as_bool

    output_paths(entries, output_dir, postfix)
    return claim_output_dir(
        output_dir,
        "segmentations",
        overwrite=as_bool(overwrite, "overwrite"),
        protected={"inputs' folder": inputs_root(entries)},
        inside_allowed=("inputs' folder",),
    )


def copy_geometry(path: str | os.PathLike, source: str | os.PathLike) -> None:
    """Rewrite the NIfTI ``path`` with the header of ``source`` (affine, qform/sform and their codes, pixdim,
    units), keeping its own voxels and data type: the segmentation overlays the scan in any tool, whichever of
    qform, sform or pixdim that tool reads."""
    import nibabel as nib
    import numpy as np

    written, original = nib.load(os.fspath(path)), nib.load(os.fspath(source))
    data = np.asanyarray(written.dataobj)
    if data.shape[:3] != original.shape[:3]:
        raise DataError(source, f"segmentation shape {data.shape} does not match the input's {original.shape}")
    image = nib.Nifti1Image(data, None, header=original.header.copy())
    image.set_data_dtype(data.dtype)
    image.header.set_slope_inter(1.0, 0.0)
    nib.save(image, os.fspath(path))


class AtomicNibabelWriter(NibabelWriter):
    """``NibabelWriter`` that writes to a temporary sibling then renames (no half-written segmentation), with the
    input's own header (:func:`copy_geometry`) when the input is a NIfTI file."""

    source: str | None = None

    def set_metadata(self, meta_dict: Mapping | None = None, resample: bool = True, **options):
        super().set_metadata(meta_dict, resample, **options)
        source = (meta_dict or {}).get("filename_or_obj")
        self.source = os.fspath(source) if source and _nifti_stem(os.path.basename(os.fspath(source))) else None

    def write(self, filename_or_obj, verbose: bool = False, **obj_kwargs):
        path = Path(filename_or_obj)
        stem = _nifti_stem(path.name)
        suffix = path.name[len(stem) :] if stem is not None else ".nii.gz"
        with atomic_path(path, suffix=suffix) as tmp:
            super().write(tmp, verbose=False, **obj_kwargs)
            if self.source is not None:
                copy_geometry(tmp, self.source)


class InferenceProgress:
    """Logs each segmented volume (input, shape, seconds) and a summary line at the end of the run."""

    def __init__(self, output_dir: str | os.PathLike, postfix: str = "seg", log: Any = print):
        self.output_dir, self.postfix, self.log = os.fspath(output_dir), postfix, log

    def attach(self, engine) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.STARTED, self._started)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._volume_done)
        engine.add_event_handler(Events.COMPLETED, self._completed)

    def _started(self, engine) -> None:
        self.start = self.last = time.perf_counter()

    def _volume_done(self, engine) -> None:
        now = time.perf_counter()
        total = engine.state.epoch_length or "?"
        for item in engine.state.output:
            image = item["image"]
            source = image.meta.get("filename_or_obj", "?") if hasattr(image, "meta") else "?"
            shape = tuple(int(s) for s in image.meta.get("spatial_shape", ())) if hasattr(image, "meta") else ()
            self.log(f"infer {engine.state.iteration}/{total}: {source} {shape} in {now - self.last:.2f} s")
        self.last = now

    def _completed(self, engine) -> None:
        count = engine.state.iteration
        seconds = time.perf_counter() - self.start
        self.log(
            f"infer: {count} volume(s) in {seconds:.1f} s ({seconds / max(count, 1):.2f} s per volume), "
            f"segmentations *_{self.postfix}.nii.gz in {self.output_dir}"
        )
