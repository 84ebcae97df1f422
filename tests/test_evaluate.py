"""3D evaluation: slice-wise prediction reassembled into volumes, Dice/HD95 per structure, the report, and
configs/evaluate.yaml end to end on a tiny phantom."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from helpers import CONFIGS, TINY_FEATURES, find_in_chain, parsed_config
from monai.bundle import run
from monai.networks.nets import BasicUNet
from torch import nn

from pix2rep_bundle.errors import CheckpointError
from pix2rep_bundle.evaluation import metric_columns, volume_metrics, write_report
from pix2rep_bundle.postprocessing import LargestComponentsd, keep_largest_components


def toy_labels(shape: tuple[int, int, int] = (24, 20, 4)) -> np.ndarray:
    """RV box, LV disc inside a MYO ring; the RV stops one slice before the last (as toward the apex)."""
    x, y = np.meshgrid(np.arange(shape[0]), np.arange(shape[1]), indexing="ij")
    r = np.hypot(x - 15, y - 10)
    plane = np.where(r < 3.5, 3, np.where(r < 6, 2, 0))
    labels = np.repeat(plane[..., None], shape[2], axis=2)
    labels[2:7, 4:16, : shape[2] - 1] = 1
    return labels.astype(np.int64)


class OneHotNet(nn.Module):
    """A 'network' whose logits are the one-hot of its rounded input: it segments an image equal to its labels."""

    def __init__(self):
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(()))
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert x.ndim == 4 and x.shape[1] == 1, "a 2D network sees (B, 1, H, W) slices"
        self.calls += 1
        labels = x[:, 0].round().long().clamp(0, 3)
        return torch.nn.functional.one_hot(labels, 4).permute(0, 3, 1, 2).float() * 10 + self.dummy


def write_volume(path: Path, data: np.ndarray, spacing: tuple[float, float, float]) -> str:
    nib.save(nib.Nifti1Image(data.astype(np.float32), np.diag([*spacing, 1.0])), str(path))
    return str(path)


def test_identical_volumes_give_dice_1_and_hd95_0():
    labels = toy_labels()
    metrics = volume_metrics(labels, labels, spacing=(1.5, 1.5, 8.0))
    assert list(metrics) == metric_columns()
    for name in ("RV", "MYO", "LV", "mean"):
        assert metrics[f"dice_{name}"] == pytest.approx(1.0)
        assert metrics[f"hd95_{name}"] == 0.0


def test_empty_structures_follow_the_documented_rules():
    labels = toy_labels()
    labels[labels == 1] = 0  # no RV in the ground truth
    pred = labels.copy()
    both_empty = volume_metrics(pred, labels, spacing=(1, 1, 1))
    assert both_empty["dice_RV"] == 1.0 and both_empty["hd95_RV"] == 0.0
    pred[0:2, 0:2, 0] = 1  # a false RV
    only_pred = volume_metrics(pred, labels, spacing=(1, 1, 1))
    assert only_pred["dice_RV"] == 0.0 and math.isnan(only_pred["hd95_RV"])
    assert only_pred["hd95_mean"] == 0.0  # the mean HD95 skips the undefined structure
    assert only_pred["dice_mean"] == pytest.approx(2 / 3)
    missed = volume_metrics(labels, toy_labels(), spacing=(1, 1, 1))  # RV in the ground truth only
    assert missed["dice_RV"] == 0.0 and math.isnan(missed["hd95_RV"])


def test_hd95_is_in_millimetres():
    labels = toy_labels()
    shifted = np.roll(labels, 2, axis=0)
    hd_1mm = volume_metrics(shifted, labels, spacing=(1, 1, 1))["hd95_LV"]
    hd_3mm = volume_metrics(shifted, labels, spacing=(3, 3, 3))["hd95_LV"]
    assert 0 < hd_1mm <= 2.0 + 1e-6
    assert hd_3mm == pytest.approx(3 * hd_1mm)


def evaluator_of_the_config(tmp_path: Path, entries: list[dict], network: nn.Module, **overrides):
    """configs/evaluate.yaml's evaluator on ``entries`` with ``network`` in place of the checkpoint's."""
    parser = parsed_config(
        "evaluate.yaml", {"bundle_root": str(tmp_path), "dataset#data": entries, "network": network, **overrides}
    )
    return parser.get_parsed_content("evaluator")


def labelled_entries(folder: Path, labels: np.ndarray, image: np.ndarray | None = None) -> list[dict]:
    """Three volumes (two subjects, ED/ES) whose image is ``image`` (default: the labels themselves)."""
    entries = []
    for subject, phase, frame in [("patient001", "ED", 1), ("patient001", "ES", 9), ("patient002", "ED", 1)]:
        stem = f"{subject}_frame{frame:02d}"
        entries.append(
            {
                "image": write_volume(folder / f"{stem}.nii.gz", labels if image is None else image, (1.5, 1.5, 10.0)),
                "label": write_volume(folder / f"{stem}_gt.nii.gz", labels, (1.5, 1.5, 10.0)),
                "subject": subject,
                "frame": frame,
                "phase": phase,
                "group": "NOR",
            }
        )
    return entries


def test_the_evaluator_segments_every_slice_scores_each_volume_and_writes_the_report(tmp_path):
    labels = toy_labels((24, 20, 5))
    entries = labelled_entries(tmp_path, labels)
    net = OneHotNet()
    out = tmp_path / "report"
    evaluator = evaluator_of_the_config(tmp_path, entries, net, output_dir=str(out), image_size=[24, 20], batch_size=2)
    evaluator.run()
    assert net.calls == 3 * 3  # 5 slices in batches of 2, for each of the 3 volumes
    summary = json.loads((out / "summary.json").read_text())
    assert summary["split"] == "test" and summary["largest_component"] is True
    with open(out / "metrics.csv") as f:
        table = list(csv.DictReader(f))
    assert [r["subject"] for r in table] == ["patient001", "patient001", "patient002"]
    assert [r["image"] for r in table] == [e["image"] for e in entries]  # the file, not the loaded image
    assert all(float(r["dice_mean"]) == pytest.approx(1.0) and float(r["hd95_mean"]) == 0.0 for r in table)


def test_largest_component_removes_a_stray_blob_and_only_it(tmp_path):
    labels = toy_labels((24, 20, 5))
    image = labels.copy()
    image[19:24, 0:3, 1:4] = 1  # the network "sees" an RV blob far from the heart
    entries = labelled_entries(tmp_path, labels, image)[:1]
    scores = {}
    for keep in (False, True):
        out = tmp_path / f"report_{keep}"
        evaluator_of_the_config(
            tmp_path, entries, OneHotNet(), output_dir=str(out), image_size=[24, 20], largest_component=keep
        ).run()
        with open(out / "metrics.csv") as f:
            scores[keep] = next(csv.DictReader(f))
    assert float(scores[False]["dice_RV"]) < 1.0 and float(scores[False]["hd95_RV"]) > 0.0
    assert float(scores[True]["dice_RV"]) == pytest.approx(1.0) and float(scores[True]["hd95_RV"]) == 0.0
    assert float(scores[True]["dice_LV"]) == float(scores[False]["dice_LV"]) == pytest.approx(1.0)


def test_keep_largest_components_per_structure():
    labels = np.zeros((1, 10, 10, 3), dtype=np.int64)
    labels[0, 0:4, 0:4, 0] = 1  # the large RV, over two slices
    labels[0, 0:4, 0:4, 1] = 1
    labels[0, 8:10, 8:10, 2] = 1  # a stray RV
    labels[0, 6, 0:3, 0] = 3  # two LV pieces: the larger one stays
    labels[0, 6, 6:10, 2] = 3
    kept = keep_largest_components(torch.as_tensor(labels))
    assert isinstance(kept, torch.Tensor) and kept.shape == labels.shape
    expected = labels.copy()
    expected[0, 8:10, 8:10, 2] = 0
    expected[0, 6, 0:3, 0] = 0
    np.testing.assert_array_equal(kept.numpy(), expected)
    np.testing.assert_array_equal(labels[0, 0:4, 0:4, 0], 1)  # the input is not modified
    with pytest.raises(ValueError, match="channel-first"):
        LargestComponentsd("pred")({"pred": torch.zeros(2, 4, 4)})


def test_report_summarises_the_rows_overall_and_by_phase(tmp_path):
    labels = toy_labels()
    rows = [
        {"subject": s, "frame": f, "phase": p, "group": "NOR", "image": "x"}
        | volume_metrics(labels, labels, spacing=(1.5, 1.5, 10.0))
        for s, p, f in [("patient001", "ED", 1), ("patient001", "ES", 9), ("patient002", "ED", 1)]
    ]
    out = tmp_path / "report"
    summary = write_report(rows, out, extra={"split": "test"}, log=None)
    assert summary["split"] == "test"
    assert summary["overall"]["num_volumes"] == 3
    assert summary["overall"]["dice_LV"] == {"mean": pytest.approx(1.0), "std": 0.0, "num_nan": 0}
    assert summary["by_phase"]["ED"]["num_volumes"] == 2 and summary["by_phase"]["ES"]["num_volumes"] == 1
    assert json.loads((out / "summary.json").read_text()) == json.loads(json.dumps(summary))
    with open(out / "metrics.csv") as f:
        table = list(csv.DictReader(f))
    assert len(table) == 3 and float(table[0]["dice_RV"]) == pytest.approx(1.0)
    assert sorted(p.name for p in out.iterdir()) == ["metrics.csv", "summary.json"]  # no temporary files


def test_report_writes_nan_hd95_and_null_statistics(tmp_path):
    row = {"subject": "p", "frame": 1, "phase": "ED", "group": "NOR", "image": "x"}
    row |= {c: (math.nan if c.startswith("hd95_RV") else 0.5) for c in metric_columns()}
    summary = write_report([row], tmp_path, log=None)
    assert summary["overall"]["hd95_RV"] == {"mean": None, "std": None, "num_nan": 1}
    text = (tmp_path / "summary.json").read_text()
    assert "NaN" not in text  # strict JSON
    assert "nan" in (tmp_path / "metrics.csv").read_text()
    with pytest.raises(ValueError, match="no volume"):
        write_report([], tmp_path / "empty", log=None)


# ---------------------------------------------------------------- configs/evaluate.yaml on a tiny phantom


def tiny_overrides(root: Path) -> dict:
    """A few small phantom subjects prepared at 48 x 48 (4 mm pixels) and a tiny U-Net, all under ``root``."""
    return {
        "bundle_root": str(root),
        "profile": "compact",
        "phantom_subjects": 10,
        "image_size": [48, 48],
        "spacing": [4.0, 4.0],
        "features": TINY_FEATURES,
    }


def test_evaluate_config_scores_every_test_volume(tmp_path):
    from pix2rep_bundle.data.datasets import load_datalist

    ckpt = tmp_path / "model.pt"
    torch.manual_seed(0)
    torch.save(BasicUNet(spatial_dims=2, in_channels=1, out_channels=4, features=TINY_FEATURES).state_dict(), ckpt)
    overrides = tiny_overrides(tmp_path)
    run(
        "run",
        config_file=str(CONFIGS / "evaluate.yaml"),
        ckpt_path=str(ckpt),
        output_dir=str(tmp_path / "eval"),
        **overrides,
    )
    summary = json.loads((tmp_path / "eval" / "summary.json").read_text())
    datalist = next((tmp_path / "cache" / "prepared").glob("*/datalist.json"))
    test_entries = load_datalist(str(datalist), "test")
    with open(tmp_path / "eval" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert summary["split"] == "test" and summary["overall"]["num_volumes"] == len(test_entries) == len(rows)
    assert {r["subject"] for r in rows} == {e["subject"] for e in test_entries}
    assert {r["phase"] for r in rows} == {"ED", "ES"}
    assert all(0.0 <= float(r["dice_mean"]) <= 1.0 for r in rows)


def test_evaluate_config_reports_a_missing_or_mismatched_checkpoint(tmp_path):
    overrides = tiny_overrides(tmp_path)
    with pytest.raises(Exception) as missing:
        run(
            "run",
            config_file=str(CONFIGS / "evaluate.yaml"),
            ckpt_path=str(tmp_path / "none.pt"),
            output_dir=str(tmp_path / "eval"),
            **overrides,
        )
    assert find_in_chain(missing.value, CheckpointError, "none.pt.*not found")
    other = tmp_path / "other.pt"
    torch.save(
        BasicUNet(spatial_dims=2, in_channels=1, out_channels=4, features=(4, 4, 8, 8, 16, 6)).state_dict(), other
    )
    with pytest.raises(Exception) as mismatch:
        run(
            "run",
            config_file=str(CONFIGS / "evaluate.yaml"),
            ckpt_path=str(other),
            output_dir=str(tmp_path / "eval"),
            **overrides,
        )
    assert find_in_chain(
        mismatch.value,
        CheckpointError,
        r"other.pt: holds a BasicUNet with features=\[4, 4, 8, 8, 16, 6\], but the config.s network is a "
        r"BasicUNet with features=\[.+\]",
    )
    assert not (tmp_path / "eval").exists()
