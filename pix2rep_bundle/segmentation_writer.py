"""Writing segmentations: NIfTI files written atomically with the input's own header, a 4D cine's frames assembled
into its one 4D segmentation, and the progress lines of inference (``configs/inference.yaml`` wires them to
``SaveImaged`` and the evaluator)."""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

from monai.data import NibabelWriter

from pix2rep_bundle.data.preprocessing import CINE_FRAME, CINE_FRAMES
from pix2rep_bundle.data.records import is_nifti, nifti_stem
from pix2rep_bundle.errors import DataError
from pix2rep_bundle.io import atomic_path


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


def write_cine(path: str | os.PathLike, labels: Any, source: str | os.PathLike) -> None:
    """Write the 4D label map ``labels`` (x, y, z, t) to ``path`` atomically with the header of the cine ``source``
    (affine, qform/sform and codes, pixdim of all four axes, units); DataError when the shapes differ."""
    import nibabel as nib

    original = nib.load(os.fspath(source))
    if tuple(labels.shape) != tuple(original.shape):
        raise DataError(source, f"segmentation shape {tuple(labels.shape)} does not match the input's {original.shape}")
    image = nib.Nifti1Image(labels, None, header=original.header.copy())
    image.set_data_dtype(labels.dtype)
    image.header.set_slope_inter(1.0, 0.0)
    with atomic_path(path, suffix=_suffix(Path(path).name)) as tmp:
        nib.save(image, os.fspath(tmp))


def _suffix(name: str) -> str:
    """The NIfTI suffix of a file name (``.nii.gz`` when it has none)."""
    return name[len(nifti_stem(Path(name))) :] if is_nifti(Path(name)) else ".nii.gz"


class _PendingCine:
    """The labels of the frames of one cine segmented so far, in frame order."""

    def __init__(self, shape: tuple[int, ...], frames: int, dtype: Any):
        import numpy as np

        self.labels = np.zeros((*shape, frames), dtype=dtype)
        self.received = 0


class AtomicNibabelWriter(NibabelWriter):
    """``NibabelWriter`` that writes to a temporary sibling then renames (no half-written segmentation), with the
    input's own header (:func:`copy_geometry`) when the input is a NIfTI file.

    A frame of a 4D cine (metadata ``cine_frame``, ``cine_frames``) is kept, as the labels it would be written with,
    until the cine's last frame arrives; then the cine's one 4D segmentation is written (:func:`write_cine`). Frames
    come in order, one cine at a time: the first frame of a cine drops what an unfinished one left (a failed run)."""

    source: str | None = None
    frame: tuple[int, int] | None = None  # (index, count) of a cine frame
    # output path -> the frames of its cine so far (shared by the instances: SaveImaged makes one per volume)
    _pending: ClassVar[dict[str, _PendingCine]] = {}

    def set_metadata(self, meta_dict: Mapping | None = None, resample: bool = True, **options):
        super().set_metadata(meta_dict, resample, **options)
        meta = meta_dict or {}
        source = meta.get("filename_or_obj")
        self.source = os.fspath(source) if source and is_nifti(Path(os.fspath(source))) else None
        index = meta.get(CINE_FRAME)
        self.frame = None if index is None else (int(index), int(meta[CINE_FRAMES]))

    def write(self, filename_or_obj, verbose: bool = False, **obj_kwargs):
        if self.frame is not None:
            self._keep_frame(os.path.abspath(os.fspath(filename_or_obj)))
            return
        path = Path(filename_or_obj)
        with atomic_path(path, suffix=_suffix(path.name)) as tmp:
            super().write(tmp, verbose=False, **obj_kwargs)
            if self.source is not None:
                copy_geometry(tmp, self.source)

    def _keep_frame(self, path: str) -> None:
        """Keep this frame's labels; write the cine's segmentation once its last frame is in."""
        import numpy as np

        index, count = self.frame
        labels = np.asanyarray(
            self.create_backend_obj(self.data_obj, affine=self.affine, dtype=self.output_dtype).dataobj
        )
        if index == 0:
            type(self)._pending.clear()
            type(self)._pending[path] = _PendingCine(labels.shape, count, labels.dtype)
        pending = self._pending.get(path)
        if pending is None or pending.received != index or pending.labels.shape[:-1] != labels.shape:
            done = 0 if pending is None else pending.received
            raise DataError(
                self.source or path,
                f"frame {index + 1} of {count} came after {done} frame(s): frames must come in order",
            )
        pending.labels[..., index] = labels
        pending.received += 1
        if pending.received == count:
            del type(self)._pending[path]
            write_cine(path, pending.labels, self.source or path)


class InferenceProgress:
    """Logs each segmented volume (input, frame k/t of a cine, shape, seconds) and a summary line at the end of the
    run (a cine's frames count as volumes)."""

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
            meta = image.meta if hasattr(image, "meta") else {}
            source = meta.get("filename_or_obj", "?")
            shape = tuple(int(s) for s in meta.get("spatial_shape", ()))
            index = meta.get(CINE_FRAME)
            frame = "" if index is None else f" frame {int(index) + 1}/{int(meta.get(CINE_FRAMES, 0)) or '?'}"
            self.log(f"infer {engine.state.iteration}/{total}: {source}{frame} {shape} in {now - self.last:.2f} s")
        self.last = now

    def _completed(self, engine) -> None:
        count = engine.state.iteration
        seconds = time.perf_counter() - self.start
        self.log(
            f"infer: {count} volume(s) in {seconds:.1f} s ({seconds / max(count, 1):.2f} s per volume), "
            f"segmentations *_{self.postfix}.nii.gz in {self.output_dir}"
        )
