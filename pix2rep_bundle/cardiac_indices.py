"""Clinical indices read off cardiac segmentations, and their agreement with the ground truth.

Per subject: LV and RV end-diastolic and end-systolic volumes (voxel count x voxel volume from the file's header,
in mL), stroke volume EDV - ESV, ejection fraction 100 x SV / EDV (%), myocardial mass = MYO volume at ED x 1.05
g/mL. ED and ES are the frames of the subject's ``Info.cfg`` where there is one, else the frames of largest and
smallest LV volume among the subject's segmented frames (the frames of a 4D cine, or its ``*_frameYY`` files).

Segmentations are found by name below a folder, as ``configs/inference.yaml`` writes them:
``<subject>_frameYY_seg.nii.gz`` (one 3D frame, ACDC frame numbers) or ``<subject>[_4d]_seg.nii.gz`` (a 4D cine
x, y, z, t, frame YY at t = YY - 1). Ground truth is ACDC's ``<dataset_dir>/<subject>/<subject>_frameYY_gt.nii.gz``.
Agreement per index is reported as the ACDC challenge did: Pearson r, bias (mean of predicted - truth) and the 95 %
limits of agreement, bias +- 1.96 SD (Bland-Altman).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pix2rep_bundle.data.info_cfg import read_info_cfg
from pix2rep_bundle.data.records import NIFTI_SUFFIXES, frame_file, frame_stem
from pix2rep_bundle.errors import DataError
from pix2rep_bundle.inference_runs import check_inference_folder
from pix2rep_bundle.io import atomic_path, refuse_existing_file, rows_csv, write_text_atomic
from pix2rep_bundle.label_map import structure_values
from pix2rep_bundle.run_record import RUN_RECORD

DEFAULT_LABELS: dict[str, int] = {"rv": 1, "myo": 2, "lv": 3}
MYOCARDIUM_DENSITY_G_PER_ML = 1.05
INDEX_COLUMNS = (
    "lv_edv_ml",
    "lv_esv_ml",
    "lv_sv_ml",
    "lv_ef",
    "rv_edv_ml",
    "rv_esv_ml",
    "rv_sv_ml",
    "rv_ef",
    "myo_mass_g",
)
COLUMNS = ("subject", *INDEX_COLUMNS)
AGREEMENT_COLUMNS = ("index", "n", "pearson_r", "bias", "sd", "loa_low", "loa_high")
FIGURE_PANELS = (
    ("lv_ef", "LV EF (%)"),
    ("rv_ef", "RV EF (%)"),
    ("lv_edv_ml", "LV EDV (mL)"),
    ("rv_edv_ml", "RV EDV (mL)"),
    ("myo_mass_g", "Myocardial mass (g)"),
)
_FRAME = re.compile(r"^(?P<subject>.+)_frame(?P<frame>\d+)$")


@dataclass
class SubjectFiles:
    """A subject's segmentations: 3D frames by ACDC frame number, or one 4D cine."""

    subject: str
    frames: dict[int, Path]
    cine: Path | None = None


@dataclass
class FrameVolumes:
    """The volume (mL) of each structure in one frame, with the file it came from and its 3D shape."""

    path: Path
    frame: int
    volumes: dict[str, float]
    shape: tuple[int, ...]


@dataclass
class SubjectIndices:
    """A subject's ED/ES frames and its indices from the segmentation and, where there is one, the ground truth."""

    subject: str
    ed_frame: int
    es_frame: int
    predicted: dict[str, float]
    truth: dict[str, float] | None = None


def parse_labels(labels: str | Mapping[str, int] | None) -> dict[str, int]:
    """The label map ``{"rv", "myo", "lv"} -> value`` from a mapping or a string ``"rv=1,myo=2,lv=3"``."""
    if labels is None:
        return dict(DEFAULT_LABELS)
    if isinstance(labels, str):
        try:
            labels = {k.strip(): int(v) for k, v in (item.split("=") for item in labels.split(",") if item.strip())}
        except ValueError:
            raise ValueError(f"labels: expected 'rv=1,myo=2,lv=3', got {labels!r}") from None
    label_map = {str(k): int(v) for k, v in labels.items()}
    if set(label_map) != set(DEFAULT_LABELS):
        raise ValueError(f"labels: give exactly rv, myo and lv, got {sorted(label_map)}")
    if len(set(label_map.values())) != 3 or 0 in label_map.values():
        raise ValueError(f"labels: three distinct non-zero values needed, got {label_map}")
    return label_map


def find_segmentations(folder: str | os.PathLike, postfix: str = "seg") -> dict[str, SubjectFiles]:
    """The segmentations below ``folder`` grouped by subject (see the module docstring for the names)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(folder, "segmentation folder not found")
    subjects: dict[str, SubjectFiles] = {}
    for path in sorted(folder.rglob(f"*_{postfix}.nii*")):
        stem = next((path.name[: -len(s)] for s in NIFTI_SUFFIXES if path.name.endswith(s)), None)
        hidden = any(part.startswith(".") for part in path.relative_to(folder).parts)  # e.g. a temporary file
        if stem is None or hidden or not path.is_file() or not stem.endswith(f"_{postfix}"):
            continue
        stem = stem[: -len(postfix) - 1]
        match = _FRAME.match(stem)
        subject = match["subject"] if match else stem.removesuffix("_4d")
        files = subjects.setdefault(subject, SubjectFiles(subject, {}))
        if match is None and files.cine is None:
            files.cine = path
        elif match is not None and int(match["frame"]) not in files.frames:
            files.frames[int(match["frame"])] = path
        else:
            raise DataError(path, f"{subject}: a second segmentation of the same frame or cine")
        if files.cine is not None and files.frames:
            raise DataError(path, f"{subject}: both a 4D cine and single-frame segmentations; keep one kind")
    if not subjects:
        raise DataError(folder, f"no segmentation (*_{postfix}.nii.gz) in this folder")
    return subjects


def voxel_volume_ml(header) -> float:
    """The volume of one voxel in mL from a NIfTI header's zooms (pixdim, in mm)."""
    zooms = [float(z) for z in header.get_zooms()[:3]]
    if len(zooms) < 3 or min(zooms) <= 0:
        raise ValueError(f"voxel size {zooms} mm is not three positive numbers")
    return float(np.prod(zooms)) / 1000.0


def structure_volumes(labels: np.ndarray, voxel_ml: float, label_map: Mapping[str, int]) -> dict[str, float]:
    """The volume in mL of each structure of ``label_map`` in a label array."""
    return {name: float(np.count_nonzero(labels == value)) * voxel_ml for name, value in label_map.items()}


def _load(path: Path, ndim: int) -> tuple[np.ndarray, float]:
    """A label array of ``ndim`` dimensions and its voxel volume (mL); DataError naming the file otherwise."""
    import nibabel as nib

    try:
        img = nib.load(path)
        labels = np.asarray(img.dataobj)
        voxel_ml = voxel_volume_ml(img.header)
    except Exception as err:  # nibabel raises many kinds for a bad file
        raise DataError(path, f"cannot read this segmentation ({err})") from err
    if labels.ndim != ndim:
        named = "a 4D cine (x, y, z, t), having no _frameYY" if ndim == 4 else "a 3D frame, having _frameYY"
        raise DataError(path, f"shape {labels.shape}, but the name makes it {named} (<subject>_frameYY_seg.nii.gz)")
    return (labels if np.issubdtype(labels.dtype, np.integer) else np.rint(labels).astype(np.int32)), voxel_ml


def frame_volumes(
    files: SubjectFiles, label_map: Mapping[str, int], wanted: Sequence[int] | None = None
) -> dict[int, FrameVolumes]:
    """Structure volumes of the subject's frames (``wanted`` frame numbers, default all); DataError naming the
    expected file when a wanted frame has no segmentation."""
    result = {}
    if files.cine is not None:
        cine, voxel_ml = _load(files.cine, 4)
        for frame in wanted or range(1, cine.shape[-1] + 1):
            if not 1 <= frame <= cine.shape[-1]:
                raise DataError(files.cine, f"{files.subject}: no frame {frame} in this cine of {cine.shape[-1]}")
            volumes = structure_volumes(cine[..., frame - 1], voxel_ml, label_map)
            result[frame] = FrameVolumes(files.cine, frame, volumes, cine.shape[:3])
        return result
    for frame in wanted or sorted(files.frames):
        if frame not in files.frames:
            some = next(iter(files.frames.values()))
            rest = re.sub(r"^_frame\d+", "", some.name[len(files.subject) :])  # the postfix and the ending
            expected = some.with_name(frame_stem(files.subject, frame) + rest)
            raise DataError(expected, f"{files.subject}: no segmentation of frame {frame}")
        labels, voxel_ml = _load(files.frames[frame], 3)
        result[frame] = FrameVolumes(
            files.frames[frame], frame, structure_volumes(labels, voxel_ml, label_map), labels.shape
        )
    return result


def choose_ed_es(lv_volumes: Mapping[int, float], source: str | os.PathLike) -> tuple[int, int]:
    """ED = the frame of largest LV volume, ES = the frame of smallest; DataError naming ``source`` when they agree
    (a single frame or a flat curve)."""
    frames = sorted(lv_volumes)
    curve = np.array([lv_volumes[f] for f in frames])
    ed, es = frames[int(np.argmax(curve))], frames[int(np.argmin(curve))]
    if ed == es:
        raise DataError(
            source, f"ED and ES are the same frame ({ed}): the LV volume curve over {len(frames)} frames is flat"
        )
    return ed, es


def info_ed_es(info_path: Path) -> tuple[int, int]:
    """The ED and ES frame numbers of an ``Info.cfg``; DataError naming it when they are not two distinct integers."""
    info = read_info_cfg(info_path, required=("ED", "ES"))
    try:
        ed, es = int(info["ED"]), int(info["ES"])
    except ValueError:
        raise DataError(info_path, f"ED {info['ED']!r} and ES {info['ES']!r} must be frame numbers") from None
    if ed == es:
        raise DataError(info_path, f"ED and ES are the same frame ({ed})")
    return ed, es


def clinical_indices(ed: FrameVolumes, es: FrameVolumes, subject: str) -> dict[str, float]:
    """The indices of INDEX_COLUMNS from the ED and ES structure volumes; RV EF is NaN where RV EDV is zero."""
    if ed.volumes["lv"] <= 0:
        raise DataError(ed.path, f"{subject}: the LV volume at end-diastole (frame {ed.frame}) is zero")
    out = {}
    for side in ("lv", "rv"):
        edv, esv = ed.volumes[side], es.volumes[side]
        out |= {f"{side}_edv_ml": edv, f"{side}_esv_ml": esv, f"{side}_sv_ml": edv - esv}
        out[f"{side}_ef"] = 100.0 * (edv - esv) / edv if edv > 0 else float("nan")
    out["myo_mass_g"] = ed.volumes["myo"] * MYOCARDIUM_DENSITY_G_PER_ML
    return {k: out[k] for k in INDEX_COLUMNS}


def truth_indices(
    subject_dir: Path, subject: str, ed_seg: FrameVolumes, es_seg: FrameVolumes, label_map: Mapping[str, int]
) -> dict[str, float] | None:
    """The indices of the ground truth ``<subject>_frameYY_gt.nii.gz`` of the segmentation's ED and ES frames (None
    when neither exists); DataError when only one exists or a shape differs from the segmentation's."""
    paths = [frame_file(subject_dir, subject, seg.frame, "_gt") for seg in (ed_seg, es_seg)]
    present = [p.is_file() for p in paths]
    if not any(present):
        return None
    if not all(present):
        raise DataError(paths[present.index(False)], f"{subject}: ground truth of this frame missing")
    truth = []
    for path, seg in zip(paths, (ed_seg, es_seg)):
        labels, voxel_ml = _load(path, 3)
        if labels.shape != tuple(seg.shape):
            raise DataError(
                path, f"{subject}: shape {labels.shape} differs from the segmentation's {seg.shape} ({seg.path})"
            )
        truth.append(FrameVolumes(path, seg.frame, structure_volumes(labels, voxel_ml, label_map), labels.shape))
    return clinical_indices(truth[0], truth[1], subject)


def subject_indices(
    files: SubjectFiles, dataset_dir: str | os.PathLike | None, label_map: Mapping[str, int]
) -> SubjectIndices:
    """One subject's indices: ED/ES from ``<dataset_dir>/<subject>/Info.cfg`` if there is one, else the LV curve."""
    subject_dir = Path(dataset_dir) / files.subject if dataset_dir is not None else None
    info = subject_dir / "Info.cfg" if subject_dir is not None else None
    if info is not None and info.is_file():
        ed, es = info_ed_es(info)
        frames = frame_volumes(files, label_map, [ed, es])
    else:
        frames = frame_volumes(files, label_map)
        ed, es = choose_ed_es({f: v.volumes["lv"] for f, v in frames.items()}, files.cine or files.subject)
    predicted = clinical_indices(frames[ed], frames[es], files.subject)
    truth = (
        None if subject_dir is None else truth_indices(subject_dir, files.subject, frames[ed], frames[es], label_map)
    )
    return SubjectIndices(files.subject, ed, es, predicted, truth)


def structure_labels(labels: str | Mapping[str, int] | None = None, label_map: Any = None) -> dict[str, int]:
    """``{"rv", "myo", "lv"} -> value`` from ``labels`` (:func:`parse_labels`) or from the bundle's ``label_map``
    setting (:mod:`pix2rep_bundle.label_map`, e.g. ``{"LV": 1, "MYO": 2, "RV": 3}``), which must name RV, MYO and
    LV; ACDC's when neither is given. ValueError when both are."""
    if label_map is None:
        return parse_labels(labels)
    if labels is not None:
        raise ValueError("give --label_map or --labels, not both")
    return {name.lower(): value for name, value in structure_values(label_map).items()}


def compute_indices(
    segmentations: str | os.PathLike,
    dataset_dir: str | os.PathLike | None = None,
    labels: str | Mapping[str, int] | None = None,
    postfix: str = "seg",
    label_map: Any = None,
) -> list[SubjectIndices]:
    """The indices of every subject segmented below ``segmentations`` (sorted by subject); the structures' values
    from ``labels`` or ``label_map`` (:func:`structure_labels`)."""
    if dataset_dir is not None and not Path(dataset_dir).is_dir():
        raise DataError(dataset_dir, "dataset folder not found")
    label_map = structure_labels(labels, label_map)
    if (Path(segmentations) / RUN_RECORD).is_file():  # the bundle's inference folder: one finished run, complete
        check_inference_folder(segmentations)
    found = find_segmentations(segmentations, postfix)
    return [subject_indices(found[s], dataset_dir, label_map) for s in sorted(found)]


def agreement(predicted: Sequence[float], truth: Sequence[float]) -> dict[str, float]:
    """Pearson r, bias (mean of predicted - truth), SD of the differences and the 95 % limits of agreement
    (bias +- 1.96 SD) over the pairs where both values are finite; NaN where too few pairs."""
    p, t = np.asarray(predicted, float), np.asarray(truth, float)
    keep = np.isfinite(p) & np.isfinite(t)
    p, t = p[keep], t[keep]
    diff = p - t
    n = int(diff.size)
    bias = float(diff.mean()) if n else float("nan")
    sd = float(diff.std(ddof=1)) if n > 1 else float("nan")
    r = float(np.corrcoef(p, t)[0, 1]) if n > 1 and p.std() > 0 and t.std() > 0 else float("nan")
    return {"n": n, "pearson_r": r, "bias": bias, "sd": sd, "loa_low": bias - 1.96 * sd, "loa_high": bias + 1.96 * sd}


def agreement_table(results: Sequence[SubjectIndices]) -> list[dict[str, float | str]]:
    """One row of :func:`agreement` per index, over the subjects that have a ground truth."""
    pairs = [r for r in results if r.truth is not None]
    return [
        {"index": k, **agreement([r.predicted[k] for r in pairs], [r.truth[k] for r in pairs])} for k in INDEX_COLUMNS
    ]


def bland_altman_figure(results: Sequence[SubjectIndices], path: str | os.PathLike) -> None:
    """A Bland-Altman plot per index of FIGURE_PANELS (difference against mean, bias and limits), written
    atomically to ``path`` as a small PNG."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    pairs = [r for r in results if r.truth is not None]
    fig = Figure(figsize=(3.2 * len(FIGURE_PANELS), 3.2))
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(FIGURE_PANELS))
    for ax, (key, title) in zip(axes, FIGURE_PANELS):
        p, t = np.array([r.predicted[key] for r in pairs]), np.array([r.truth[key] for r in pairs])
        stats = agreement(p, t)
        ax.scatter((p + t) / 2, p - t, s=12, color="tab:blue", alpha=0.8)
        ax.axhline(0.0, color="grey", linestyle=":", linewidth=1)
        for value, style in ((stats["bias"], "-"), (stats["loa_low"], "--"), (stats["loa_high"], "--")):
            ax.axhline(value, color="tab:red", linestyle=style, linewidth=1)
        ax.set_title(
            f"{title}: r {stats['pearson_r']:.3f}\nbias {stats['bias']:.1f}, "
            + f"LoA [{stats['loa_low']:.1f}, {stats['loa_high']:.1f}] (n {stats['n']})",
            fontsize=9,
        )
        ax.set_xlabel("mean of prediction and ground truth", fontsize=8)
        ax.tick_params(labelsize=7)
    axes[0].set_ylabel("prediction - ground truth", fontsize=8)
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=80)


def output_paths(out: str | os.PathLike) -> dict[str, Path]:
    """The indices CSV, and beside it the ground truth's indices and the agreement table."""
    out = Path(out)
    return {
        "indices": out,
        "truth": out.with_name(f"{out.stem}_truth{out.suffix}"),
        "agreement": out.with_name(f"{out.stem}_agreement{out.suffix}"),
    }


def check_outputs(out: str | os.PathLike, figure: str | os.PathLike | None, overwrite: bool) -> None:
    """FileExistsError (or IsADirectoryError) before any work when an output would replace a file unasked."""
    for path in [*output_paths(out).values(), *([figure] if figure else [])]:
        refuse_existing_file(path, overwrite)


def write_outputs(
    results: Sequence[SubjectIndices], out: str | os.PathLike, figure: str | os.PathLike | None, overwrite: bool
) -> dict[str, Path]:
    """Write the indices CSV and, where there is ground truth, its indices, the agreement table and the figure;
    DataError before writing anything when a figure is asked for and no subject has a ground truth."""
    check_outputs(out, figure, overwrite)
    with_truth = [r for r in results if r.truth is not None]
    if figure and not with_truth:
        raise DataError(figure, "no subject has a ground truth (<subject>_frameYY_gt.nii.gz): no Bland-Altman plot")
    paths = output_paths(out)
    write_text_atomic(paths["indices"], rows_csv([{"subject": r.subject, **r.predicted} for r in results], COLUMNS))
    written = {"indices": paths["indices"]}
    if with_truth:
        truth_rows = [{"subject": r.subject, **r.truth} for r in with_truth]
        write_text_atomic(paths["truth"], rows_csv(truth_rows, COLUMNS))
        write_text_atomic(paths["agreement"], rows_csv(agreement_table(results), AGREEMENT_COLUMNS))
        written |= {"truth": paths["truth"], "agreement": paths["agreement"]}
    if figure:
        bland_altman_figure(results, figure)
        written["figure"] = Path(figure)
    return written
