"""Datalists and 2D slice datasets over 3D volumes.

``load_datalist`` reads one pool of ``datalist.json`` (written by :mod:`pix2rep_bundle.data.preparation`) with
absolute paths; ``select_labeled_subjects`` draws the K labelled subjects of a few-shot experiment;
``VolumeSliceDataset`` serves every short-axis slice of a list of volumes as a ``(1, H, W)`` item.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pix2rep_bundle.data.published_splits import fixed_combination
from pix2rep_bundle.data.volume_checks import check_label
from pix2rep_bundle.errors import DataError, error_in_chain
from pix2rep_bundle.label_map import LabelMap, parse_label_map
from pix2rep_bundle.slice_context import check_slice_context, neighbour_indices

POOLS = ("pretrain", "labeled", "validation", "test")
_FRAME = re.compile(r"_frame(\d+)")


# ---------------------------------------------------------------------------------------------- datalists


def load_datalist(datalist_path: str | os.PathLike, split: str, needs_labels: str | None = None) -> list[dict]:
    """The entries of pool ``split`` (``pretrain``, ``labeled``, ``validation`` or ``test``) with absolute
    ``image``/``label`` paths. DataError for a missing/unreadable file or an unknown split, and, when
    ``needs_labels`` names the config that needs them, for an entry without a label (:func:`require_labels`)."""
    entries = _pool(_read_datalist(datalist_path), datalist_path, split)
    return entries if needs_labels is None else require_labels(entries, split, needs_labels)


def require_labels(entries: list[dict], pool: str, config: str) -> list[dict]:
    """``entries``, unless one lacks a label: then DataError naming that entry, its pool and the ``config`` that
    needs labels (sources without labels are fine for pretraining only)."""
    missing = [e for e in entries if not e.get("label")]
    if missing:
        first = missing[0]
        raise DataError(
            first["image"],
            f"{config} needs labels: {pool} entry (subject {first.get('subject')!r}, frame {first.get('frame')}) has "
            f"none ({len(missing)} of {len(entries)} {pool} entries lack one); give the source's scans labels "
            "(<name>_gt beside the image, or 'label' in the datalist JSON), or use the source for pretraining only",
        )
    return entries


def _read_datalist(datalist_path: str | os.PathLike) -> dict:
    """The content of ``datalist.json``; DataError for a missing or unreadable file."""
    try:
        return json.loads(Path(datalist_path).read_text())
    except FileNotFoundError:
        raise DataError(datalist_path, "datalist not found") from None
    except (OSError, ValueError) as err:
        raise DataError(datalist_path, f"cannot read datalist ({err})") from err


def _pool(datalist: dict, datalist_path: str | os.PathLike, split: str) -> list[dict]:
    """The entries of one pool of a read datalist, with paths made absolute; DataError for an unknown pool."""
    if split not in POOLS or not isinstance(datalist.get(split), list):
        available = [p for p in POOLS if isinstance(datalist.get(p), list)]
        raise DataError(datalist_path, f"unknown split {split!r} (available: {', '.join(available)})")
    root = Path(datalist_path).parent.resolve()
    return [_absolute(entry, root) for entry in datalist[split]]


def _absolute(entry: dict, root: Path) -> dict:
    """Copy of ``entry`` with its ``image``/``label`` paths made absolute against ``root``."""
    out = dict(entry)
    for key in ("image", "label"):
        if key in out:
            out[key] = str(root / out[key])
    return out


def _subjects_in_order(entries: Sequence[dict]) -> dict[str, list[dict]]:
    """Entries grouped by ``subject`` (first-seen order)."""
    by_subject: dict[str, list[dict]] = defaultdict(list)
    for entry in entries:
        if "subject" not in entry:
            raise DataError(entry.get("image", "<entry>"), "datalist entry has no 'subject' field")
        by_subject[entry["subject"]].append(entry)
    return by_subject


def select_labeled_subjects(entries: list[dict], num_subjects: int, seed: int) -> list[dict]:
    """Entries of ``num_subjects`` subjects drawn stratified by ``group``; each subject brings all its entries.

    Groups are visited round-robin in a seeded order, each giving its next subject from a seeded shuffle,
    so draws are deterministic and nested (the K-subject draw contains the (K-1)-subject draw for the same
    seed). ValueError for ``num_subjects`` <= 0; DataError when the pool has fewer subjects.
    """
    num_subjects = int(num_subjects)
    if num_subjects <= 0:
        raise ValueError(f"num_subjects must be positive, got {num_subjects}")
    by_subject = _subjects_in_order(entries)
    if num_subjects > len(by_subject):
        where = os.path.commonpath([str(e["image"]) for e in entries]) if entries else "<empty pool>"
        raise DataError(where, f"{num_subjects} labelled subjects requested but the pool holds {len(by_subject)}")
    rng = np.random.default_rng(seed)
    queues = _group_queues(by_subject, rng)
    chosen: list[str] = []
    while len(chosen) < num_subjects:
        for queue in queues:
            if queue and len(chosen) < num_subjects:
                chosen.append(queue.pop(0))
    return [entry for subject in chosen for entry in by_subject[subject]]


def _of_subjects(entries: list[dict], subjects: list[str], pool: str, datalist_path) -> list[dict]:
    """The entries of ``subjects``; DataError naming any subject the pool lacks."""
    chosen = [e for e in entries if e.get("subject") in set(subjects)]
    missing = sorted(set(subjects) - {e["subject"] for e in chosen})
    if missing:
        raise DataError(datalist_path, f"the {pool} pool lacks subject(s) {', '.join(missing)}")
    return chosen


def _few_shot_pool(
    datalist_path: str | os.PathLike, pool: str, num_subjects: int, label_seed: int
) -> tuple[list[dict], list[str] | None]:
    """The entries of ``pool`` and, for splits with published combinations (chaitanya2020), the subjects of
    combination ``c{label_seed + 1}`` in that pool (None otherwise). Datalists of earlier versions are ``random``."""
    datalist = _read_datalist(datalist_path)
    fixed = fixed_combination(str(datalist.get("split", "random")), num_subjects, label_seed)
    subjects = None if fixed is None else fixed[0 if pool == "labeled" else 1]
    return _pool(datalist, datalist_path, pool), subjects


LABEL_SELECTIONS = ("random", "representative")


def choose_from_datalist(
    datalist_path: str | os.PathLike, backbone_path: str | os.PathLike, k: int, **options: Any
) -> tuple[list[str], dict[str, Any]]:
    """The ``k`` representative subjects of a prepared datalist's ``labeled`` pool and the evidence
    (:func:`pix2rep_bundle.selection.choose_from_entries`, whose ``options`` it takes: ``labelled``, ``seed``,
    ``device``, ``centre_fraction``)."""
    from pix2rep_bundle.selection import choose_from_entries

    return choose_from_entries(load_datalist(datalist_path, "labeled"), backbone_path, k, **options)


def labeled_entries(
    datalist_path: str | os.PathLike,
    num_subjects: int,
    label_seed: int,
    selection: str = "random",
    backbone: str | os.PathLike | None = None,
    centre_fraction: float = 1.0,
) -> list[dict]:
    """The labelled training entries of a few-shot run: the published combination ``c{label_seed + 1}`` of K
    subjects for splits that have them (chaitanya2020), else K subjects drawn from ``label_seed``
    (:func:`select_labeled_subjects`), or, with ``selection="representative"``, the K subjects that best cover the
    pool in the feature space of the Pix2Rep ``backbone`` (:mod:`pix2rep_bundle.selection`; no label is read), its
    descriptor read from the central ``centre_fraction`` of each image."""
    if selection not in LABEL_SELECTIONS:
        raise ValueError(f"unknown label selection {selection!r}: choose one of {list(LABEL_SELECTIONS)}")
    entries, fixed = _few_shot_pool(datalist_path, "labeled", num_subjects, label_seed)
    if selection == "representative":
        if fixed is not None:
            raise ValueError("this split fixes its labelled subjects: --label_selection representative does not apply")
        from pix2rep_bundle.selection import choose_from_entries

        chosen, _ = choose_from_entries(entries, backbone, int(num_subjects), centre_fraction=float(centre_fraction))
        labelled = _of_subjects(entries, chosen, "labeled", datalist_path)
        how = f"representative, {backbone}"
    elif fixed is None:
        labelled, how = select_labeled_subjects(entries, num_subjects, label_seed), f"random, label_seed {label_seed}"
    else:
        labelled, how = _of_subjects(entries, fixed, "labeled", datalist_path), f"published, label_seed {label_seed}"
    print(f"labelled subjects ({how}): {', '.join(sorted({e['subject'] for e in labelled}))}", flush=True)
    return require_labels(labelled, "labeled", "train.yaml")


def validation_entries(datalist_path: str | os.PathLike, num_subjects: int, label_seed: int) -> list[dict]:
    """The validation entries of a few-shot run: the published combination's own validation subjects
    (chaitanya2020), else the whole validation pool. Never test subjects."""
    entries, fixed = _few_shot_pool(datalist_path, "validation", num_subjects, label_seed)
    entries = entries if fixed is None else _of_subjects(entries, fixed, "validation", datalist_path)
    return require_labels(entries, "validation", "train.yaml")


def _group_queues(by_subject: dict[str, list[dict]], rng: np.random.Generator) -> list[list[str]]:
    """One shuffled queue of subjects per group, the groups in a shuffled order."""
    groups: dict[str, list[str]] = defaultdict(list)
    for subject in sorted(by_subject):
        groups[str(by_subject[subject][0].get("group", "unknown"))].append(subject)
    names = sorted(groups)
    order = [names[j] for j in rng.permutation(len(names))]
    return [[groups[g][i] for i in rng.permutation(len(groups[g]))] for g in order]


# ---------------------------------------------------------------------------------------------- slices


def _default_loader(keys: Sequence[str]) -> Callable:
    """LoadImaged + EnsureChannelFirstd for ``keys`` (missing keys skipped)."""
    from monai.transforms import Compose

    from pix2rep_bundle.data.preprocessing import load_transforms

    return Compose(load_transforms(keys))


def needs_preparation(entries: Sequence[dict]) -> bool:
    """Whether entries are raw volumes, to be prepared on the fly, rather than the bundle's prepared ones.

    Entries of the bundle's own datalist carry ``subject`` and ``frame``; any other list (e.g. MONAI Label's
    ``{"image": path, "label": path}``) is taken as raw NIfTI volumes.
    """
    return any("subject" not in entry for entry in entries)


def _identity(entry: dict) -> tuple[str, int]:
    """(subject, frame) of an entry, derived from the image file name when the entry lacks them."""
    name = Path(str(entry["image"])).name
    stem = re.sub(r"\.nii(\.gz)?$", "", name)
    subject = entry.get("subject") or re.sub(r"_frame\d+$", "", stem)
    frame = entry.get("frame")
    if frame is None:
        match = _FRAME.search(stem)
        frame = int(match.group(1)) if match else -1
    return str(subject), int(frame)


def _numpy(volume: Any) -> np.ndarray:
    """A loaded volume (tensor, MetaTensor or array) as a NumPy array."""
    return np.asarray(volume.detach().cpu().numpy() if isinstance(volume, torch.Tensor) else volume)


def _as_slices(volume: Any, path: str, dtype) -> np.ndarray:
    """A single-channel 3D volume ``(1, H, W, D)`` or ``(H, W, D)`` as a contiguous ``(D, H, W)`` array."""
    array = _numpy(volume)
    if array.ndim == 4 and array.shape[0] == 1:
        array = array[0]
    if array.ndim != 3:
        raise DataError(path, f"expected a single-channel 3D volume, got shape {tuple(array.shape)}")
    if np.issubdtype(np.dtype(dtype), np.integer):
        array = np.rint(array)
    return np.ascontiguousarray(np.moveaxis(array, -1, 0).astype(dtype))


class VolumeSliceDataset(torch.utils.data.Dataset):
    """Every slice (along the last axis) of a list of 3D volumes, as 2D items.

    Each volume is loaded once, at construction, by ``volume_transform`` (e.g.
    ``volume_preprocessing(...)`` for raw NIfTI entries such as ``{"image": path, "label": path}``) or by
    default LoadImaged + EnsureChannelFirstd (for prepared volumes); slices are kept in memory (float32
    images, uint8 labels). Item ``i``: ``{"image": (1, H, W) float32, "label": (1, H, W) uint8 (when the
    entry has one), "subject", "frame", "slice_index", "num_slices"}``, passed through ``transform``.
    The channel is added in numpy, so ``EnsureTyped(track_meta=True)`` makes a 2D MetaTensor of it.
    With ``slice_context`` c > 0 the image is (1 + 2c, H, W): slices i - c .. i + c of its volume, the end slices
    repeated (:mod:`pix2rep_bundle.slice_context`); the label stays slice i's.

    ``label_map`` (default ACDC's): the values the label files hold, checked (a value outside it is a DataError
    naming the file) and turned into class indices 0..N. Prepared volumes already hold class indices: give
    ``label_map.indexed()`` for them.
    """

    def __init__(
        self,
        data: Sequence[dict],
        transform: Callable | None = None,
        volume_transform: Callable | None = None,
        keys: Sequence[str] = ("image", "label"),
        progress: bool = True,
        label_map: LabelMap | Mapping | None = None,
        slice_context: int = 0,
    ):
        self.transform = transform
        self.slice_context = check_slice_context(slice_context)
        self.label_map = parse_label_map(label_map)
        self.keys = tuple(keys)
        self.image_key = self.keys[0]
        loader = volume_transform if volume_transform is not None else _default_loader(self.keys)
        start = time.perf_counter()
        self.volumes = [self._load(entry, loader) for entry in self._progress(list(data), progress)]
        counts = np.array([v["num_slices"] for v in self.volumes], dtype=np.int64)
        self._volume_of = np.repeat(np.arange(len(self.volumes)), counts)
        self._slice_of = np.concatenate([np.arange(n) for n in counts]) if len(counts) else np.zeros(0, np.int64)
        if progress:
            print(
                f"VolumeSliceDataset: {len(self.volumes)} volumes, {len(self)} slices "
                f"({time.perf_counter() - start:.1f} s)",
                flush=True,
            )

    @staticmethod
    def _progress(entries: list[dict], progress: bool):
        """Iterate over ``entries``, printing a line every tenth of the way when ``progress`` and loading is slow."""
        step, start, last = max(1, len(entries) // 10), time.perf_counter(), time.perf_counter()
        for i, entry in enumerate(entries, start=1):
            yield entry
            if progress and i % step == 0 and time.perf_counter() - last > 5.0:
                last = time.perf_counter()
                print(f"VolumeSliceDataset: loaded {i}/{len(entries)} volumes ({last - start:.0f} s)", flush=True)

    def _load(self, entry: dict, loader: Callable) -> dict:
        """Load one entry's volumes as slice stacks with its identity."""
        if self.image_key not in entry:
            raise DataError(str(entry), f"datalist entry has no {self.image_key!r}")
        path = str(entry[self.image_key])
        present = [k for k in self.keys if k in entry]
        try:
            loaded = loader({k: entry[k] for k in present})
        except Exception as err:
            cause = error_in_chain(err, DataError)
            if cause is not None:  # MONAI's Compose wraps it in "applying transform ..." errors
                raise cause from err
            # other loader errors name no file; say which entry failed
            raise DataError(path, f"cannot load volume ({type(err).__name__}: {err})") from err
        volume = {self.image_key: _as_slices(loaded[self.image_key], path, np.float32)}
        for key in (k for k in present if k != self.image_key):
            raw_label = np.rint(_numpy(loaded[key]))
            check_label(raw_label, Path(str(entry[key])), self.label_map)
            volume[key] = _as_slices(self.label_map.to_classes(raw_label), str(entry[key]), np.uint8)
            label_shape, image_shape = volume[key].shape, volume[self.image_key].shape
            if label_shape != image_shape:
                raise DataError(
                    str(entry[key]),
                    f"{label_shape[0]} slices of {label_shape[1:]} differ from image "
                    f"{Path(path).name} ({image_shape[0]} of {image_shape[1:]})",
                )
        subject, frame = _identity(entry)
        volume.update(subject=subject, frame=frame, num_slices=int(volume[self.image_key].shape[0]))
        return volume

    def __len__(self) -> int:
        return int(self._volume_of.shape[0])

    def __getitem__(self, index: int) -> Any:
        if index < 0:
            index += len(self)
        volume = self.volumes[int(self._volume_of[index])]
        k = int(self._slice_of[index])
        item: dict[str, Any] = {key: volume[key][k][None].copy() for key in self.keys if key in volume}
        if self.slice_context:
            item[self.image_key] = volume[self.image_key][
                neighbour_indices(k, volume["num_slices"], self.slice_context)
            ]
        item.update(subject=volume["subject"], frame=volume["frame"], slice_index=k, num_slices=volume["num_slices"])
        return self.transform(item) if self.transform is not None else item


def summarize_datalist(datalist_path: str | os.PathLike) -> dict:
    """Counts of a datalist: subjects per split and group, volumes and 2D slices per pool."""
    import nibabel as nib

    datalist_path = Path(datalist_path)
    datalist = json.loads(datalist_path.read_text())
    groups = datalist["groups"]
    summary: dict[str, Any] = {"subjects": {}, "volumes": {}, "slices": {}}
    for split, ids in datalist["splits"].items():
        summary["subjects"][split] = dict(sorted(Counter(groups[s] for s in ids).items()), total=len(ids))
    for pool in ("pretrain", "labeled", "validation", "test"):
        entries = datalist[pool]
        summary["volumes"][pool] = len(entries)
        summary["slices"][pool] = sum(int(nib.load(str(datalist_path.parent / e["image"])).shape[-1]) for e in entries)
    return summary
