"""Preparation of any data source (:mod:`pix2rep_bundle.data.sources`: ACDC layout, plain folder, datalist JSON) into
the prepared datalist every config reads.

Each volume is resampled in plane, cropped/padded around the image centre and normalised
(:func:`pix2rep_bundle.data.preprocessing.volume_preprocessing`), written as NIfTI under ``output_dir/volumes/`` and
recorded in ``output_dir/datalist.json`` (paths relative to ``output_dir``) with four pools: ``pretrain`` (images of
the training subjects), ``labeled``, ``validation`` and ``test`` (entries keep their ``label`` where the source has
one). Prepared labels hold class indices 0..N in the order of the label map (:mod:`pix2rep_bundle.label_map`; with
ACDC's map, the file values themselves), and a datalist made under another map is never reused. Splits are by
subject (:mod:`pix2rep_bundle.data.splits`); validation and test subjects never appear in the pretraining or labelled
pools.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from pix2rep_bundle.data.jobs import build_once, run_jobs
from pix2rep_bundle.data.published_splits import check_split, labelled_phases
from pix2rep_bundle.data.records import Source, Subject, Volume
from pix2rep_bundle.data.sources import scan_source
from pix2rep_bundle.data.splits import source_splits
from pix2rep_bundle.data.volume_checks import check_label, check_pair, load_nifti
from pix2rep_bundle.io import write_json_atomic
from pix2rep_bundle.label_map import DEFAULT_LABEL_MAP, LabelMap, parse_label_map
from pix2rep_bundle.outputs import check_replaceable, refuse_overlap, replaced_directory

DATALIST_NAME = "datalist.json"
VOLUMES_DIR = "volumes"
DATALIST_VERSION = 1


# ---------------------------------------------------------------------------------------------- volumes


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
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(img, str(path))


def _read(path: Path, index: int | None, cache: dict) -> tuple[np.ndarray, np.ndarray]:
    """A 3D volume and its affine: the whole file, or frame ``index`` of a 4D file (read once per subject)."""
    if index is None:
        return load_nifti(path)
    if path not in cache:
        if len(cache) >= 2:  # a 4D image and its 4D label in memory at most
            cache.pop(next(iter(cache)))
        cache[path] = load_nifti(path, ndim=4)
    data, affine = cache[path]
    return data[..., index], affine


def _entry(volume: Volume, subject: Subject, labeled: bool) -> dict:
    """A datalist entry with paths relative to the output folder."""
    entry: dict[str, Any] = {"image": f"{VOLUMES_DIR}/{volume.name}.nii.gz"}
    if labeled:
        entry["label"] = f"{VOLUMES_DIR}/{volume.name}_gt.nii.gz"
    entry.update(subject=subject.subject, frame=int(volume.frame), phase=volume.phase, group=subject.group)
    return entry


def _prepare_volume(
    volume: Volume, subject: Subject, out_dir: Path, spacing, image_size, cache: dict, label_map: LabelMap
) -> dict:
    """Check, preprocess and write one volume (and its label, if any, as class indices of ``label_map``); return its
    entry."""
    from pix2rep_bundle.data.preprocessing import volume_preprocessing

    image, image_affine = _read(volume.image, volume.index, cache)
    data = {"image": _meta_tensor(image, image_affine, volume.image)}
    if volume.label is not None:
        label, label_affine = _read(volume.label, volume.index, cache)
        check_label(label, volume.label, label_map)
        check_pair(image, image_affine, label, label_affine, volume.image, volume.label)
        data["label"] = _meta_tensor(label_map.to_classes(label).astype(np.float32), image_affine, volume.label)
    out = volume_preprocessing(tuple(data), spacing, image_size, load=False)(data)
    _write_nifti(out["image"], out_dir / VOLUMES_DIR / f"{volume.name}.nii.gz", np.float32)
    if volume.label is not None:
        _write_nifti(out["label"], out_dir / VOLUMES_DIR / f"{volume.name}_gt.nii.gz", np.uint8)
    return _entry(volume, subject, labeled=volume.label is not None)


def _prepare_subject(job: tuple[Subject, str, tuple, tuple, bool, LabelMap]) -> tuple[list[dict], list[dict]]:
    """Worker: (entries of the subject's volumes, entries of its extra pretraining frames) written under the output
    folder; the extra frames only when asked."""
    subject, out_dir, spacing, image_size, with_extra, label_map = job
    out_dir, cache = Path(out_dir), {}
    volumes = subject.volumes + (subject.extra if with_extra else [])
    prepared = [_prepare_volume(v, subject, out_dir, spacing, image_size, cache, label_map) for v in volumes]
    return prepared[: len(subject.volumes)], prepared[len(subject.volumes) :]


# ---------------------------------------------------------------------------------------------- datalist


def _parameters(
    dataset_dir,
    spacing,
    image_size,
    seed,
    val_fraction,
    test_fraction,
    include_cine,
    split: str = "random",
    kind: str = "acdc",
    label_map: LabelMap = DEFAULT_LABEL_MAP,
) -> dict:
    """The recorded parameters of a preparation (what a reused datalist must match); ``source_kind`` is recorded for
    the sources other than the ACDC layout, ``label_map`` for a map other than ACDC's."""
    params = {
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
    if kind != "acdc":
        params["source_kind"] = kind
    if label_map != DEFAULT_LABEL_MAP:
        params["label_map"] = label_map.as_dict()
    return params


def source_fingerprint(source: Source) -> str:
    """Hash of the names, sizes and modification times of every source file the preparation reads."""
    digest = hashlib.sha256()
    for path in source.files:
        stat = path.stat()
        digest.update(f"{path}:{stat.st_size}:{stat.st_mtime_ns};".encode())
    for subject in source.subjects:
        for path in subject.files:
            stat = path.stat()
            name = path.name if source.kind == "acdc" else str(path)
            digest.update(f"{subject.subject}/{name}:{stat.st_size}:{stat.st_mtime_ns};".encode())
    return digest.hexdigest()[:16]


def _datalist(
    params: dict, fingerprint: str, splits: dict, subjects: list, labeled: dict[str, list[dict]], cine: dict
) -> dict:
    """Assemble the datalist: splits, groups and the four pools of entries (``labeled``: the entries of every
    subject's volumes; ``cine``: its extra pretraining frames). A published split keeps only its phases in the
    labelled, validation and test pools. The labelled pool keeps the training entries that have a label (all of
    them, unlabelled, where none has one)."""
    pretrain = []
    for subject in splits["pretrain"]:
        pretrain += [{k: v for k, v in e.items() if k != "label"} for e in labeled[subject]] + cine[subject]
    phases = labelled_phases(params["split"])
    every = params["split"] == "random"

    def pool(ids: list[str]) -> list[dict]:
        return [e for s in ids for e in labeled[s] if every or e["phase"] in phases]

    def labelled_pool(ids: list[str]) -> list[dict]:
        entries = pool(ids)
        return [e for e in entries if "label" in e] or entries  # all of them where none has a label

    return {
        **params,
        "source_fingerprint": fingerprint,
        "splits": splits,
        "groups": {r.subject: r.group for r in subjects},
        "pretrain": pretrain,
        "labeled": labelled_pool(splits["train"]),
        "validation": pool(splits["validation"]),
        "test": pool(splits["test"]),
    }


def _protected(dataset_dir: str | os.PathLike) -> dict[str, str | os.PathLike]:
    """What the output folder must neither be, contain nor lie in: the dataset folder, or the datalist file."""
    return {"datalist file" if Path(dataset_dir).is_file() else "dataset folder": dataset_dir}


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
    reuse: bool = False,
    label_map: LabelMap | dict | None = None,
) -> Path:
    """Prepare every subject of ``dataset_dir`` (an ACDC-layout folder, a plain folder of NIfTI volumes or a datalist
    JSON: :func:`pix2rep_bundle.data.sources.scan_source`) into ``output_dir`` (atomically); return the datalist path.

    ``split``: ``random`` (subject-level from ``seed``, stratified by group where the source has groups,
    ``val_fraction``/``test_fraction``; a datalist's own validation/test lists are kept) or a published split of ACDC
    (:mod:`pix2rep_bundle.data.published_splits`: ``chaitanya2020``, ``semi_70_10_20``).

    Writes ``output_dir/volumes/<name>[_gt].nii.gz`` (float32 image in [0, 1], uint8 label, the resampled affine) and
    ``output_dir/datalist.json``. ``label_map`` (default ACDC's, :mod:`pix2rep_bundle.label_map`): the values the
    labels hold; a label holding another value is a DataError naming the file, and prepared labels hold class indices.
    On any error nothing is left at ``output_dir``. ``reuse``: keep an ``output_dir``
    that already holds the datalist of this source with these parameters (:func:`ensure_prepared`).
    """
    from pix2rep_bundle.data.preprocessing import crop_size, in_plane_pixdim

    in_plane_pixdim(spacing)  # validate both before any work
    crop_size(image_size)
    output_dir = Path(output_dir)

    def check() -> None:
        refuse_overlap(output_dir, _protected(dataset_dir))
        check_replaceable(output_dir, "prepared")

    if not reuse:
        check()
    start = time.perf_counter()
    source = scan_source(dataset_dir, include_cine)
    label_map = parse_label_map(label_map)
    params = _parameters(
        dataset_dir, spacing, image_size, seed, val_fraction, test_fraction, include_cine, split, source.kind, label_map
    )
    if not reuse:
        return _write_prepared(source, params, output_dir, num_workers, start)
    fingerprint = source_fingerprint(source)
    build_once(
        output_dir,
        lambda: _matches(output_dir / DATALIST_NAME, params, fingerprint),
        lambda: _write_prepared(source, params, output_dir, num_workers, start),
        check,
    )
    return output_dir / DATALIST_NAME


def _write_prepared(source: Source, params: dict, output_dir: Path, num_workers: int, start: float) -> Path:
    """Prepare the subjects of the scanned ``source`` with the recorded ``params`` into ``output_dir`` (atomically);
    the datalist path."""
    splits = source_splits(source, params["split"], params["seed"], params["val_fraction"], params["test_fraction"])
    train = set(splits["pretrain"])
    include_cine = params["include_cine"]
    label_map = parse_label_map(params.get("label_map"))
    print(
        f"prepare: {len(source.subjects)} subjects from {params['source']} ({source.describe()}) -> {output_dir} "
        f"(spacing {params['spacing']} mm, size {params['image_size']})",
        flush=True,
    )
    labeled: dict[str, list[dict]] = {}
    extra: dict[str, list[dict]] = {}
    subjects = source.subjects
    with replaced_directory(output_dir, "prepared") as tmp:
        (tmp / VOLUMES_DIR).mkdir()
        jobs = [
            (
                s,
                str(tmp),
                tuple(params["spacing"]),
                tuple(params["image_size"]),
                include_cine and s.subject in train,
                label_map,
            )
            for s in subjects
        ]
        step = max(1, len(jobs) // 10)
        for done, (subject, (lab, ext)) in enumerate(
            zip(subjects, run_jobs(_prepare_subject, jobs, num_workers)), start=1
        ):
            labeled[subject.subject], extra[subject.subject] = lab, ext
            if done % step == 0 or done == len(jobs):
                print(f"prepare: {done}/{len(jobs)} subjects ({time.perf_counter() - start:.1f} s)", flush=True)
        datalist = _datalist(params, source_fingerprint(source), splits, subjects, labeled, extra)
        write_json_atomic(tmp / DATALIST_NAME, datalist)  # the folder and the files get the usual permissions
    print(f"prepare: wrote {output_dir / DATALIST_NAME} in {time.perf_counter() - start:.1f} s", flush=True)
    return output_dir / DATALIST_NAME


# ---------------------------------------------------------------------------------------------- reuse


def _matches(datalist_path: Path, params: dict, fingerprint: str) -> bool:
    """Whether an existing datalist was made from this source with these parameters and is complete."""
    try:
        datalist = json.loads(datalist_path.read_text())
    except (OSError, ValueError):
        return False
    if any(datalist.get(k) != v for k, v in params.items()) or datalist.get("source_fingerprint") != fingerprint:
        return False
    if list((datalist.get("label_map") or {}).items()) != list((params.get("label_map") or {}).items()):
        return False  # made under another label map, or the same values in another class order
    root = datalist_path.parent
    pools = ("pretrain", "labeled", "validation", "test")
    paths = [e[k] for p in pools for e in datalist.get(p, []) for k in ("image", "label") if k in e]
    return all((root / path).is_file() for path in paths)


def ensure_prepared(dataset_dir: str | os.PathLike, output_dir: str | os.PathLike, **options: Any) -> Path:
    """Return ``output_dir/datalist.json``, preparing it first unless it already matches the source and these
    parameters (:func:`prepare_dataset` with ``reuse=True``, which takes ``options``). Concurrent callers (e.g. several
    ranks) are serialised by a lock file beside ``output_dir``."""
    return prepare_dataset(dataset_dir, output_dir, reuse=True, **options)
