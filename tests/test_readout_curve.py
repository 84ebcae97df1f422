"""scripts/readout_curve.py: every snapshot of a run is probed, the minutes come from the run's log, nothing is
replaced unasked, and a run without snapshots or a log without epoch times is named."""

from __future__ import annotations

import shutil

import pytest
from helpers import load_script, train_settings

from pix2rep_bundle.errors import DataError
from pix2rep_bundle.readout_curve import cumulative_minutes, logged_epoch_seconds, read_log, snapshots

LOG = """2026-12-06 10:13:25,338 - ignite.engine.engine.AutocastTrainer - INFO - Epoch[1] Complete. Time taken: 00:01:30.000
2026-12-06 10:14:50,338 - ignite.engine.engine.AutocastEvaluator - INFO - Epoch[2] Complete. Time taken: 00:00:04.946
2026-12-06 10:14:55,338 - ignite.engine.engine.AutocastTrainer - INFO - Epoch[2] Complete. Time taken: 00:01:30.000
2026-12-06 10:16:25,338 - ignite.engine.engine.AutocastTrainer - INFO - Epoch[2] Complete. Time taken: 00:02:00.000
2026-12-06 10:19:25,338 - ignite.engine.engine.AutocastTrainer - INFO - Epoch[3] Complete. Time taken: 01:00:00.500
"""


def test_epoch_times_come_from_the_log_and_add_up():
    seconds = logged_epoch_seconds(LOG)
    assert seconds == {1: 90.0, 2: 120.0, 3: 3600.5}  # a resumed epoch keeps its last time; validation's is inside
    assert cumulative_minutes([1, 3, 4], seconds) == [1.5, pytest.approx((90 + 120 + 3600.5) / 60), None]


def test_a_run_without_snapshots_and_a_foreign_log_are_named(tmp_path):
    with pytest.raises(DataError, match="no backbone snapshot.*--snapshot_interval"):
        snapshots(tmp_path)
    (tmp_path / "other.log").write_text("nothing of a run\n")
    with pytest.raises(DataError, match="other.log.*not the console log"):
        read_log(tmp_path / "other.log")
    with pytest.raises(DataError, match="missing.log.*not found"):
        read_log(tmp_path / "missing.log")


def test_every_snapshot_is_probed_and_written_with_its_minutes(tmp_path, backbone, capsys):
    run = tmp_path / "run"
    (run / "snapshots").mkdir(parents=True)
    for epoch in (1, 3):
        shutil.copy(backbone, run / "snapshots" / f"pix2rep_backbone_epoch{epoch:03d}.pt")
    (run / "pretrain.log").write_text(LOG)
    curve = load_script("readout_curve")
    settings = train_settings(tmp_path) | {"num_subjects": 2, "max_iter": 20}
    out, figure = tmp_path / "curve.csv", tmp_path / "curve.png"
    curve.main(run_dir=str(run), out=str(out), figure=str(figure), log=str(run / "pretrain.log"), **settings)
    header, first, second = out.read_text().splitlines()
    assert header == "epoch,minutes,dice_rv,dice_myo,dice_lv,dice_mean"
    assert first.startswith("1,1.500,") and second.startswith("3,63.508,")
    assert first.split(",")[2:] == second.split(",")[2:]  # the same backbone twice: the same read-out
    assert figure.read_bytes().startswith(b"\x89PNG")
    assert "random initialisation: read-out Dice" in capsys.readouterr().out
    before = out.read_bytes()
    with pytest.raises(FileExistsError, match="curve.csv already exists"):
        curve.main(run_dir=str(run), out=str(out), **settings)
    assert out.read_bytes() == before
    out_measured = tmp_path / "measured.csv"
    curve.main(run_dir=str(run), out=str(out_measured), epoch_seconds=50, **settings)  # minutes: epoch x 50 s
    assert [line.split(",")[:2] for line in out_measured.read_text().splitlines()[1:]] == [
        ["1", "0.833"],
        ["3", "2.500"],
    ]
    for bad, message in (({"log": str(run / "pretrain.log")}, "pass one of them"), ({}, "must be a positive")):
        with pytest.raises(ValueError, match=message):
            curve.main(run_dir=str(run), out=str(tmp_path / "x.csv"), epoch_seconds=0 if not bad else 50, **bad)
    assert not (tmp_path / "x.csv").exists()
