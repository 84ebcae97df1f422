"""3D evaluation of the slice-wise segmentation: Dice and HD95 per structure on whole volumes.

``configs/evaluate.yaml`` segments every short-axis slice of a volume with the 2D network (MONAI's
``SliceInferer`` in the bundle's evaluator) and scores the label volume with :class:`VolumeScores`:
:func:`volume_metrics` compares two volumes of class indices per structure (those of the label map,
:mod:`pix2rep_bundle.label_map`: RV, MYO, LV by default, which name the columns) with MONAI's ``DiceMetric`` and
``HausdorffDistanceMetric(percentile=95)``, in millimetres from the voxel spacing, and :func:`write_report`
writes ``metrics.csv`` (one row per volume) and ``summary.json`` (mean and std over volumes, overall and by
phase).

Empty structures (e.g. no RV in a volume cropped below the apex, or a structure the network missed):

- empty in both prediction and ground truth: Dice 1, HD95 0 (a correct "nothing here");
- empty in only one of them: Dice 0, HD95 ``nan`` (a distance to nothing is undefined). ``nan`` is written
  as such in ``metrics.csv``; the per-volume mean HD95 and the summary statistics skip ``nan`` values and
  ``summary.json`` counts them (``num_nan``) so they are never silently lost (a statistic with no value at
  all is ``null``, keeping the file strict JSON).
"""

from __future__ import annotations

import csv
import io
import math
import os
import warnings
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from monai.data import MetaTensor
from monai.metrics import DiceMetric, HausdorffDistanceMetric
from monai.networks.utils import one_hot

from pix2rep_bundle.data.preprocessing import volume_loader
from pix2rep_bundle.errors import DataError
from pix2rep_bundle.inference import output_paths
from pix2rep_bundle.inference_runs import check_inference_folder
from pix2rep_bundle.io import write_json_atomic, write_text_atomic
from pix2rep_bundle.label_map import DEFAULT_LABEL_MAP, parse_label_map
from pix2rep_bundle.outputs import claim_output_dir

if TYPE_CHECKING:
    from monai.bundle import ConfigParser

STRUCTURES = DEFAULT_LABEL_MAP.names  # ACDC's: class indices 1, 2, 3; 0 is background
NUM_CLASSES = len(STRUCTURES) + 1
INFO_COLUMNS = ("subject", "frame", "phase", "group", "image")


def metric_columns(structures: Sequence[str] = STRUCTURES) -> list[str]:
    """The metric columns of ``metrics.csv``: Dice then HD95, per structure and their mean."""
    names = [*structures, "mean"]
    return [f"dice_{s}" for s in names] + [f"hd95_{s}" for s in names]


def _one_hot(labels: torch.Tensor | np.ndarray, num_classes: int = NUM_CLASSES) -> torch.Tensor:
    """(H, W, S) volume of class indices -> (1, num_classes, H, W, S) one-hot."""
    labels = torch.as_tensor(np.asarray(labels)).long()
    return one_hot(labels[None, None], num_classes=num_classes)


def volume_metrics(
    pred: torch.Tensor | np.ndarray,
    label: torch.Tensor | np.ndarray,
    spacing: Sequence[float],
    structures: Sequence[str] = STRUCTURES,
) -> dict[str, float]:
    """Dice and HD95 (mm) per structure and their mean, for two (H, W, S) volumes of class indices (class ``i`` is
    ``structures[i - 1]``, 0 background).

    Empty structures follow the module's rules (both empty: Dice 1, HD95 0; one empty: Dice 0, HD95 nan);
    ``hd95_mean`` averages the structures whose HD95 is defined (nan when none is).
    """
    pred = np.asarray(pred)
    label = np.asarray(label)
    if pred.shape != label.shape or pred.ndim != 3:
        raise ValueError(f"prediction {pred.shape} and label {label.shape} must be two (H, W, S) volumes")
    pred_oh, label_oh = _one_hot(pred, len(structures) + 1), _one_hot(label, len(structures) + 1)
    dice = DiceMetric(include_background=False, reduction="none", ignore_empty=False)(pred_oh, label_oh)[0]
    hd_metric = HausdorffDistanceMetric(include_background=True, percentile=95, reduction="none")
    out: dict[str, float] = {}
    for c, name in enumerate(structures, start=1):
        in_pred, in_label = bool(pred_oh[:, c].any()), bool(label_oh[:, c].any())
        out[f"dice_{name}"] = float(dice[c - 1])
        if in_pred and in_label:
            with warnings.catch_warnings():  # MONAI 1.6 passes a deprecated argument to itself
                warnings.filterwarnings("ignore", message=".*always_return_as_numpy.*", category=FutureWarning)
                hd = hd_metric(pred_oh[:, c : c + 1], label_oh[:, c : c + 1], spacing=[float(s) for s in spacing])
            out[f"hd95_{name}"] = float(hd.item())
        else:
            out[f"hd95_{name}"] = 0.0 if in_pred == in_label else math.nan
    out["dice_mean"] = float(np.mean([out[f"dice_{s}"] for s in structures]))
    hds = [out[f"hd95_{s}"] for s in structures if not math.isnan(out[f"hd95_{s}"])]
    out["hd95_mean"] = float(np.mean(hds)) if hds else math.nan
    return {k: out[k] for k in metric_columns(structures)}


def voxel_spacing(image: MetaTensor) -> list[float]:
    """Voxel spacing (mm) of a loaded volume: its affine's column norms, which ``HeaderSpacingNibabelReader``
    takes from the NIfTI header's voxel sizes (so HD95 is in mm)."""
    affine = torch.as_tensor(image.affine, dtype=torch.float64)
    return [float(v) for v in torch.linalg.norm(affine[:3, :3], dim=0)]


class VolumeScores:
    """Ignite handler of ``configs/evaluate.yaml``'s evaluator: scores every segmented volume (``pred``, an argmax
    label map, against ``label``; HD95 in mm from the label's voxel size), logs one line per volume and, when the
    run completes, writes the report (:func:`write_report`) into ``output_dir``.

    ``rows`` holds one row per volume: the entry's ``subject``, ``frame``, ``phase``, ``group``, ``image`` (the
    file) and the metrics of :func:`volume_metrics` for ``structures`` (the label map's names, in class order).
    """

    def __init__(
        self,
        output_dir: str | os.PathLike,
        extra: Mapping[str, Any] | None = None,
        log: Any = print,
        structures: Sequence[str] = STRUCTURES,
    ):
        self.output_dir, self.extra, self.log = os.fspath(output_dir), dict(extra or {}), log
        self.structures = tuple(structures)
        self.rows: list[dict[str, Any]] = []

    def attach(self, engine) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.STARTED, self._started)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._score)
        engine.add_event_handler(Events.COMPLETED, self._report)

    def _started(self, engine) -> None:
        self.rows = []

    def _score(self, engine) -> None:
        for data, item in zip(engine.state.batch, engine.state.output):  # decollated: one volume each
            entry = {k: data.get(k, "") for k in INFO_COLUMNS}
            entry["image"] = data["image"].meta.get("filename_or_obj", "") if hasattr(data["image"], "meta") else ""
            row = _volume_row(entry, item["pred"][0], item["label"][0], self.structures)
            self.rows.append(row)
            if self.log is not None:
                dice = " ".join(f"{s} {row[f'dice_{s}']:.3f}" for s in (*self.structures, "mean"))
                self.log(
                    f"{row['subject']} {row['phase'] or row['frame']}: Dice {dice}, "
                    f"HD95 mean {row['hd95_mean']:.1f} mm"
                )

    def _report(self, engine) -> None:
        write_report(self.rows, self.output_dir, extra=self.extra, log=self.log, structures=self.structures)


def score_segmentations(
    entries: Iterable[Mapping[str, Any]], segmentations: Mapping[str, str], log: Any = print, label_map: Any = None
) -> list[dict[str, Any]]:
    """Score written segmentations on their inputs' own grids: one row per entry (``image`` and ``label`` paths),
    ``segmentations`` mapping each input image (absolute path) to its segmentation file; both hold the values of
    ``label_map`` (default ACDC's; a value outside it is a DataError naming the file). DataError for an entry
    without a label or a missing segmentation."""
    label_map = parse_label_map(label_map)
    loader = volume_loader()
    rows = []
    for entry in entries:
        if "label" not in entry:
            raise DataError(entry["image"], "has no label to score against")
        segmentation = segmentations[os.path.abspath(os.fspath(entry["image"]))]
        if not os.path.isfile(segmentation):
            raise DataError(segmentation, "segmentation not found (run configs/inference.yaml with the same overrides)")
        pred, label = np.rint(np.asarray(loader(segmentation))), loader(entry["label"])
        for path, values in ((segmentation, pred), (entry["label"], np.rint(np.asarray(label)))):
            label_map.check(values, path)
        label = label.clone().copy_(torch.as_tensor(label_map.to_classes(np.asarray(label)), dtype=label.dtype))
        rows.append(_volume_row(entry, label_map.to_classes(pred).astype(np.int64), label, label_map.names))
        if log is not None:
            log(f"{os.path.basename(segmentation)}: Dice mean {rows[-1]['dice_mean']:.3f}")
    return rows


def score_inference_outputs(
    parser: ConfigParser, report_dir: str | os.PathLike, overwrite: bool = False
) -> dict[str, Any]:
    """Score what ``parser``'s config (configs/inference.yaml with its overrides, e.g. from
    :func:`pix2rep_bundle.bundle_configs.config_parser`) wrote, each output on its input's own grid
    (:func:`score_segmentations`), into ``report_dir`` (``metrics.csv``, ``summary.json``); the summary. DataError,
    before anything is written, unless the output folder holds one finished inference run's outputs
    (:func:`pix2rep_bundle.inference_runs.check_inference_folder`)."""
    entries = parser.get_parsed_content("input_entries")
    output_dir = parser.get_parsed_content("output_dir")
    outputs = output_paths(entries, output_dir, parser.get_parsed_content("output_postfix"))
    check_inference_folder(output_dir, outputs.values())  # one finished run's outputs, nothing else mixed in
    label_map = parser.get_parsed_content("settings").label_map
    claim_output_dir(report_dir, "evaluation", overwrite=overwrite)
    rows = score_segmentations(entries, outputs, label_map=label_map)
    return write_report(
        rows,
        report_dir,
        extra={"scored": "configs/inference.yaml outputs, on the input grids"},
        structures=label_map.names,
    )


def _volume_row(
    entry: Mapping[str, Any], pred: torch.Tensor | np.ndarray, label: MetaTensor, structures: Sequence[str] = STRUCTURES
) -> dict[str, Any]:
    """One row of the report: the entry's information columns and the metrics of ``pred`` against ``label`` (class
    indices of ``structures``), with HD95 in mm from the label's voxel size."""
    metrics = volume_metrics(pred, np.rint(np.asarray(label)).astype(np.int64), voxel_spacing(label), structures)
    return {k: entry.get(k, "") for k in INFO_COLUMNS} | metrics


def _stats(values: Sequence[float]) -> dict[str, float | int]:
    """Mean and (population) std over the non-nan values (``None`` when there is none), and how many were nan."""
    arr = np.asarray(values, dtype=np.float64)
    finite = arr[~np.isnan(arr)]
    mean = float(finite.mean()) if finite.size else None
    std = float(finite.std()) if finite.size else None
    return {"mean": mean, "std": std, "num_nan": int(arr.size - finite.size)}


def summarize(rows: Sequence[Mapping[str, Any]], structures: Sequence[str] = STRUCTURES) -> dict[str, Any]:
    """Mean/std of every metric over the volumes, overall and by phase (ED, ES)."""

    def block(subset: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        return {"num_volumes": len(subset)} | {m: _stats([r[m] for r in subset]) for m in metric_columns(structures)}

    phases = sorted({str(r.get("phase", "")) for r in rows if r.get("phase")})
    return {"overall": block(rows), "by_phase": {p: block([r for r in rows if r.get("phase") == p]) for p in phases}}


def rows_to_csv(rows: Sequence[Mapping[str, Any]], structures: Sequence[str] = STRUCTURES) -> str:
    """CSV text of the per-volume rows (``nan`` written as ``nan``)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=[*INFO_COLUMNS, *metric_columns(structures)], extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def write_report(
    rows: Sequence[Mapping[str, Any]],
    output_dir: str | os.PathLike,
    extra: Mapping[str, Any] | None = None,
    log: Any = print,
    structures: Sequence[str] = STRUCTURES,
) -> dict[str, Any]:
    """Write ``metrics.csv`` and ``summary.json`` into ``output_dir`` atomically; return the summary.

    Args:
        rows: per-volume rows (:class:`VolumeScores`, :func:`score_segmentations`).
        output_dir: folder of the report (created if needed).
        extra: additional fields stored at the top of ``summary.json`` (e.g. checkpoint and split).
        log: where to print the overall means (``None``: silent).
        structures: the names of the structures scored (the label map's), which name the metric columns.
    """
    if not rows:
        raise ValueError("no volume was evaluated (empty split?)")
    summary = dict(extra or {}) | summarize(rows, structures)
    write_text_atomic(os.path.join(output_dir, "metrics.csv"), rows_to_csv(rows, structures))
    write_json_atomic(os.path.join(output_dir, "summary.json"), summary)
    if log is not None:
        overall = summary["overall"]
        parts = [f"{s} {overall[f'dice_{s}']['mean']:.3f}" for s in (*structures, "mean")]
        hd95 = overall["hd95_mean"]["mean"]
        log(
            f"{len(rows)} volumes, Dice "
            + ", ".join(parts)
            + f"; HD95 mean {'n/a' if hd95 is None else f'{hd95:.1f} mm'}; report in {output_dir}"
        )
    return summary
