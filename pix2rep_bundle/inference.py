"""Inference on 3D NIfTI volumes and 4D cines: which files to segment, the checks of inputs and outputs.

``configs/inference.yaml`` wires these around MONAI's pieces: the preprocessing chain of
:func:`pix2rep_bundle.data.preprocessing.volume_preprocessing`, ``SliceInferer``, ``Invertd`` back to the
input's voxel grid and ``SaveImaged`` with the atomic writer of :mod:`pix2rep_bundle.segmentation_writer`.

A 4D cine (x, y, z, t) is segmented frame by frame: :func:`frame_entries` gives the dataset one entry per frame,
the loader reads that frame only (:class:`~pix2rep_bundle.data.preprocessing.CineFrameReader`), the frame takes the
3D path unchanged, and the writer keeps each frame's labels (uint8) until the last one arrives, then writes the
cine's one 4D segmentation with the input's header. The run checks and records files, not frames.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pix2rep_bundle.data.preprocessing import CINE_FRAME
from pix2rep_bundle.data.records import NIFTI_SUFFIXES, frame_stem
from pix2rep_bundle.errors import DataError
from pix2rep_bundle.outputs import claim_output_dir, refuse_overlap
from pix2rep_bundle.settings import as_bool

# file names that are never inputs: ground-truth labels and this bundle's own outputs
SKIPPED_SUFFIXES = ("_gt", "_seg")
# ``<subject>_frameNN``: a 3D frame of a subject (ACDC names); its cine is ``<subject>`` or ``<subject>_4d``
_FRAME_NAME = re.compile(r"^(?P<subject>.+)_frame\d+$")


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


def _blank(value: Any) -> bool:
    return value is None or (isinstance(value, (str, os.PathLike)) and not os.fspath(value).strip())


def inference_data(inputs: str | os.PathLike | Sequence[Any]) -> list[dict[str, Any]]:
    """The ``{"image": path, ...}`` entries to segment.

    ``inputs`` is a folder (every volume under it, see :func:`volumes_in_folder`), one NIfTI file, a JSON
    file holding a list of paths or of entries (or ``{"data": [...]}``), or such a list itself. DataError naming
    ``--inputs`` (or the JSON file) for an empty or blank value (e.g. an unset shell variable, which would otherwise
    mean the working folder) and for an entry that is not a path, naming the entry's index.
    """
    if _blank(inputs):
        raise DataError(
            "--inputs",
            f"empty ({inputs!r}; an unset shell variable?): give a folder, a NIfTI file or a JSON list of volumes",
        )
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
            entries = _listed_entries(listed, path)
            return _refuse_duplicates([e | {"image": str(root / e["image"])} for e in entries], path)
        if not path.exists():
            raise DataError(path, "input not found")
        return [{"image": str(path)}]
    if isinstance(inputs, Mapping) or not isinstance(inputs, Sequence):
        raise DataError(
            "--inputs",
            f"expected a folder, a NIfTI file, a JSON list or a list of volumes, got {type(inputs).__name__}",
        )
    return _refuse_duplicates(_listed_entries(inputs, "--inputs"), "--inputs")


def _refuse_duplicates(entries: list[dict[str, Any]], where: str | os.PathLike) -> list[dict[str, Any]]:
    """``entries`` unchanged; DataError naming the file and both entries when one file is listed twice (the same
    path, or two paths to one file)."""
    seen: dict[str, int] = {}
    for index, entry in enumerate(entries):
        key = os.path.realpath(entry["image"])
        if key in seen:
            raise DataError(
                entry["image"],
                f"listed twice in {os.fspath(where)} (input entries {seen[key]} and {index}): give each file once",
            )
        seen[key] = index
    return entries


def _listed_entries(items: Sequence[Any], where: str | os.PathLike) -> list[dict[str, Any]]:
    """The entries of a list of paths or ``{"image": path}`` mappings; DataError naming ``where`` and the index of
    an entry that is not one (a number, null, a mapping without a string ``image``, an empty path)."""
    if not items:
        raise DataError(where, "the input list is empty")
    entries = []
    for index, item in enumerate(items):
        entry = dict(item) if isinstance(item, Mapping) else {"image": item}
        if "image" not in entry:
            raise DataError(where, f'input entry {index} has no "image": {item!r}')
        image = entry["image"]
        if not isinstance(image, (str, os.PathLike)):
            what = f'"image" of input entry {index}' if isinstance(item, Mapping) else f"input entry {index}"
            raise DataError(where, f"{what} is {image!r} ({type(image).__name__}), not a path")
        if _blank(image):
            raise DataError(where, f"input entry {index} is an empty path")
        entries.append(entry | {"image": os.fspath(image)})
    return entries


def _header_shape(image: str | os.PathLike) -> tuple[int, ...] | None:
    """The shape a NIfTI file's header declares, or None when the header cannot be read (the loader names why)."""
    import nibabel as nib

    try:
        return tuple(int(n) for n in nib.load(os.fspath(image)).shape)
    except Exception:  # unreadable: the loader names the problem (missing, not NIfTI, truncated, ...)
        return None


def _check_shape(image: str, shape: tuple[int, ...]) -> None:
    """DataError naming ``image`` unless ``shape`` is a 3D volume (x, y, z) or a 4D cine (x, y, z, t) of at least
    one frame, with at least two slices."""
    if len(shape) not in (3, 4):
        raise DataError(
            image,
            "expected a 3D volume (rows, columns, slices) or a 4D cine (rows, columns, slices, frames), "
            + f"got shape {shape}",
        )
    if len(shape) == 4 and shape[3] < 1:
        raise DataError(image, f"a 4D cine of no frame (shape {shape}): nothing to segment")
    if shape[2] < 2:
        raise DataError(
            image,
            f"a single slice (shape {shape}): the network segments 3D stacks of short-axis slices; "
            + "give the volume with all its slices",
        )


def _is_cine(shape: tuple[int, ...]) -> bool:
    """A 4D file of two frames or more (a trailing axis of one frame is a 3D volume)."""
    return len(shape) == 4 and shape[3] >= 2


def _subject_key(image: str) -> tuple[str, str]:
    """(folder, subject) of an input: ``<subject>_frameNN`` is a 3D frame of ``<subject>``, whose cine is
    ``<subject>`` or ``<subject>_4d`` (the names of ACDC and of scripts/cardiac_indices.py)."""
    stem = _nifti_stem(os.path.basename(image)) or os.path.basename(image)
    match = _FRAME_NAME.match(stem)
    subject = match["subject"] if match else stem.removesuffix("_4d")
    return os.path.dirname(os.path.abspath(image)), subject


def _refuse_mixed_subjects(shapes: Mapping[str, tuple[int, ...]]) -> None:
    """DataError naming the cine when a folder holds a 4D cine and 3D frames of the same subject (see
    :func:`_subject_key`): one subject's segmentations are of one kind."""
    cines: dict[tuple[str, str], str] = {}
    volumes: dict[tuple[str, str], str] = {}
    for image, shape in shapes.items():
        (cines if _is_cine(shape) else volumes).setdefault(_subject_key(image), image)
    for key, cine in cines.items():
        if key in volumes:
            raise DataError(
                cine,
                f"a 4D cine of subject {key[1]!r}, and {os.path.basename(volumes[key])} beside it is a 3D volume of "
                + "the same subject: segment the cine or its 3D frames, not both in one run (list the files to "
                + "segment in --inputs, or run each kind into its own --output_dir)",
            )


def check_input_volumes(entries: Sequence[Mapping[str, Any]]) -> None:
    """Before any work, from each file's header only (cheap): every input is a NIfTI file that exists and holds a
    3D volume or a 4D cine (x, y, z, t; t >= 1) of at least two slices, and no folder holds both a cine and 3D
    frames of one subject. DataError naming the first file that does not (a single slice, a 2D image, a 5D file,
    a cine of no frame); files whose header cannot be read are left to the loader, which names the problem."""
    shapes: dict[str, tuple[int, ...]] = {}
    for entry in entries:
        image = os.fspath(entry["image"])
        if _nifti_stem(os.path.basename(image)) is None:
            raise DataError(image, "not a NIfTI file name (expected .nii or .nii.gz)")
        if not os.path.isfile(image):
            raise DataError(image, "file not found")
        shape = _header_shape(image)
        if shape is None:
            continue
        _check_shape(image, shape)
        shapes[image] = shape
    _refuse_mixed_subjects(shapes)


def frame_entries(entries: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The dataset's entries: a 3D volume's as it is, a 4D file's (x, y, z, t) as t entries, frame k's with
    ``"cine_frame": k`` (0-based), which the loader reads alone (memory of one frame). Shapes from the headers;
    an unreadable file stays one entry, for the loader to name its problem."""
    expanded = []
    for entry in entries:
        shape = _header_shape(entry["image"])
        if shape is not None and len(shape) == 4:
            expanded += [dict(entry) | {CINE_FRAME: index} for index in range(shape[3])]
        else:
            expanded.append(dict(entry))
    return expanded


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
        name = frame_stem(subject, frame)
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


def check_postfix(postfix: Any) -> str:
    """``postfix`` as the name part ``<name>_<postfix>.nii.gz``; DataError naming ``--output_postfix`` unless it is
    a plain, non-empty name part: letters, digits, ``_``, ``-``, ``+`` and ``.``, no leading dot, no ``..`` (so no
    path separator can take an output out of its folder, and no output takes its input's name)."""
    if isinstance(postfix, int) and not isinstance(postfix, bool):
        postfix = str(postfix)
    if not isinstance(postfix, str):
        raise DataError("--output_postfix", f"expected a name part such as seg, got {postfix!r}")
    if not postfix:
        raise DataError(
            "--output_postfix", "empty: each segmentation would take its input file's name; give a postfix such as seg"
        )
    if len(postfix) > 64:
        raise DataError("--output_postfix", f"{len(postfix)} characters: at most 64 (file names have a length limit)")
    bad = sorted({c for c in postfix if not (c.isalnum() or c in "_-+.")})
    if bad or postfix.startswith(".") or ".." in postfix:
        problem = f"characters {''.join(bad)!r} not allowed" if bad else "a leading dot or '..' is not allowed"
        raise DataError(
            "--output_postfix",
            f"{postfix!r}: {problem} (path separators, '..' and hidden names could write outside --output_dir); "
            + "use letters, digits, '_', '-', '+' and '.'",
        )
    return postfix


def _inside(path: str, folder: str) -> bool:
    """Whether ``path`` resolves (symbolic links included) to a place inside ``folder``."""
    real, root = os.path.realpath(path), os.path.realpath(folder)
    return real != root and os.path.commonpath([real, root]) == root


def _refuse_a_file_on_the_way(out: str, output_dir: str | os.PathLike) -> None:
    """DataError when a file stands where a folder of ``out`` below ``output_dir`` would be made."""
    folder = os.path.dirname(out)
    while os.path.abspath(folder) != os.path.abspath(os.fspath(output_dir)) and len(folder) > 1:
        if os.path.lexists(folder) and not os.path.isdir(folder):
            raise DataError(
                folder, f"a file is in the way of the folder of {os.path.basename(out)}; it is left untouched"
            )
        folder = os.path.dirname(folder)


def output_paths(
    entries: Sequence[Mapping[str, Any]], output_dir: str | os.PathLike, postfix: str = "seg", suffix: str = ".nii.gz"
) -> dict[str, str]:
    """``{input image: segmentation path}`` as ``SaveImaged`` writes them (``data_root_dir`` = :func:`inputs_root`,
    so ``in/a/sa.nii.gz`` and ``in/b/sa.nii.gz`` give ``out/a/sa_seg.nii.gz`` and ``out/b/sa_seg.nii.gz``).

    DataError, before any work, for a ``postfix`` that is not a plain name part (:func:`check_postfix`), when two
    inputs would give one output (``a.nii`` beside ``a.nii.gz``, or one file listed twice), an output would be an
    input file or a folder, or an output would resolve outside ``output_dir`` (a symbolic link on its way)."""
    postfix = check_postfix(postfix)
    root = inputs_root(entries)
    inputs = {os.path.abspath(os.fspath(e["image"])) for e in entries}
    planned: dict[str, str] = {}
    for entry in entries:
        image = os.path.abspath(os.fspath(entry["image"]))
        name = _output_stem(image) + f"_{postfix}" + suffix
        out = os.path.abspath(os.path.join(os.fspath(output_dir), os.path.relpath(os.path.dirname(image), root), name))
        clash = next((i for i, o in planned.items() if o == out), None)
        if clash is not None:
            raise DataError(
                image, f"gives the same output as {clash} ({out}): rename one of them or segment them in separate runs"
            )
        if out in inputs:
            raise DataError(
                out,
                "would be overwritten by a segmentation (an input file): choose another "
                "--output_dir or another --output_postfix",
            )
        if not _inside(out, os.fspath(output_dir)):
            raise DataError(
                out,
                f"resolves to {os.path.realpath(out)}, outside --output_dir {output_dir} (a symbolic link on its "
                + "way): the bundle writes only inside its output folder; remove the link or choose another folder",
            )
        if os.path.isdir(out):
            raise DataError(out, "a folder is in the way of this segmentation; it is left untouched")
        _refuse_a_file_on_the_way(out, output_dir)
        planned[image] = out
    return planned


def check_outputs(
    entries: Sequence[Mapping[str, Any]], output_dir: str | os.PathLike, postfix: str = "seg", overwrite: Any = False
) -> str:
    """Before any work: ``output_dir`` is not and does not contain the inputs' folder, every input gets its own
    output inside it (:func:`output_paths`), and it is a new, empty or bundle-made segmentation folder (else
    ``--overwrite true``). A subfolder of the inputs' folder is fine. Returns ``output_dir``."""
    protected = {"inputs' folder": inputs_root(entries)}
    refuse_overlap(output_dir, protected, ("inputs' folder",))
    output_paths(entries, output_dir, postfix)
    return claim_output_dir(
        output_dir,
        "segmentations",
        overwrite=as_bool(overwrite, "overwrite"),
        protected=protected,
        inside_allowed=("inputs' folder",),
    )
