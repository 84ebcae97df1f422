"""The one record of a run and the one comparison of settings (pix2rep_bundle/run_record.py), and the helpers the data
modules share: building a cache once (data.jobs.build_once), the ACDC names (data.records), the usual permissions of
what the atomic writers make."""

from __future__ import annotations

import json
import os
import stat

import pytest

from pix2rep_bundle.data.jobs import build_once
from pix2rep_bundle.data.records import frame_file, frame_stem, subject_name
from pix2rep_bundle.errors import DataError
from pix2rep_bundle.io import atomic_directory, write_json_atomic
from pix2rep_bundle.run_record import (
    RUN_RECORD,
    changed_settings,
    differing_settings,
    read_record,
    recorded_settings,
    refuse_changes,
    write_run_record,
)


def test_a_written_record_reads_back_with_its_settings(tmp_path):
    path = write_run_record(tmp_path, {"seed": 3, "device": tmp_path}, extra={"kind": "inference"})
    record = read_record(tmp_path / RUN_RECORD)
    assert path == str(tmp_path / RUN_RECORD) and record["kind"] == "inference"
    assert record["settings"] == {"seed": 3, "device": str(tmp_path)}  # plain JSON values
    assert recorded_settings(tmp_path) == record["settings"]
    assert {"started", "command", "versions", "git_commit", "host"} <= set(record)


@pytest.mark.parametrize("content", ["{not json", "[1, 2]"])
def test_a_bad_record_is_none_or_with_strict_an_error_naming_the_file(tmp_path, content):
    path = tmp_path / RUN_RECORD
    path.write_text(content)
    assert read_record(path) is None and recorded_settings(tmp_path) is None
    with pytest.raises(DataError, match=RUN_RECORD):
        read_record(path, strict=True)
    assert read_record(tmp_path / "absent.json", strict=True) is None


def test_changes_are_named_with_both_values_and_speed_settings_may_change():
    assert changed_settings({"k": 1, "a": 2}, {"k": 5, "b": 2}) == [
        "--a: 2 -> '(not set)'",
        "--b: '(not set)' -> 2",
        "--k: 1 -> 5",
    ]
    assert changed_settings({"k": 1}, {"k": 5}, "train {}", same=lambda name: name == "k") == []
    assert differing_settings({"epochs": 3, "amp": False}, {"epochs": 4, "amp": True}) == ["--epochs: 3 -> 4"]
    # a boolean and its command-line spelling are the same setting, nested too; other differences still count
    recorded = {"overwrite": "false", "view_settings": {"zoom_offset": "false", "translate_fraction": 0.15}}
    same = {"overwrite": False, "view_settings": {"zoom_offset": False, "translate_fraction": 0.15}}
    assert differing_settings(recorded, same) == []
    other = {"overwrite": False, "view_settings": {"zoom_offset": True, "translate_fraction": 0.15}}
    assert differing_settings(recorded, other) == [
        "--view_settings: {'zoom_offset': 'false', 'translate_fraction': 0.15} -> "
        + "{'zoom_offset': True, 'translate_fraction': 0.15}"
    ]
    # a training recorded before --dice_over_batch existed took the Dice slice by slice: resumable as false only
    assert differing_settings({"epochs": 3}, {"epochs": 3, "dice_over_batch": "false"}) == []
    assert differing_settings({"epochs": 3}, {"epochs": 3, "dice_over_batch": True}) == [
        "--dice_over_batch: False -> True"
    ]
    refuse_changes("here", "nothing", [], "no remedy needed")  # no difference: no error
    with pytest.raises(DataError, match=r"here: other settings \(--k: 1 -> 5; --a: 2 -> 3\): rerun"):
        refuse_changes("here", "other settings", ["--k: 1 -> 5", "--a: 2 -> 3"], "rerun")


def test_build_once_builds_a_missing_cache_and_keeps_a_matching_one(tmp_path):
    folder, calls = tmp_path / "cache", []

    def build():
        calls.append("build")
        folder.mkdir()

    assert build_once(folder, folder.is_dir, build, lambda: calls.append("check")) is True
    assert calls == ["check", "build"] and (tmp_path / ".cache.lock").is_file()
    assert build_once(folder, folder.is_dir, build, lambda: calls.append("check")) is False
    assert calls == ["check", "build"]  # matched: neither checked nor built again
    answers = iter([False, True])  # built by a concurrent caller while this one waited for the lock
    assert build_once(tmp_path / "other", lambda: next(answers), build, lambda: calls.append("check")) is False
    assert calls == ["check", "build", "check"]
    with pytest.raises(DataError, match="refused"):
        build_once(tmp_path / "third", lambda: False, build, lambda: (_ for _ in ()).throw(DataError("x", "refused")))


def test_one_name_for_a_subject_and_a_frame(tmp_path):
    assert subject_name(7) == subject_name("007") == "patient007"
    assert frame_stem("patient007", 1) == "patient007_frame01"
    assert frame_file(tmp_path, "patient007", 12, "_gt") == tmp_path / "patient007_frame12_gt.nii.gz"


def test_what_the_atomic_writers_make_has_the_usual_permissions(tmp_path):
    umask = os.umask(0o022)
    try:
        with atomic_directory(tmp_path / "out") as tmp:
            write_json_atomic(tmp / "marker.json", {"a": 1})
        mode = stat.S_IMODE((tmp_path / "out").stat().st_mode)
        assert mode == 0o755 and stat.S_IMODE((tmp_path / "out" / "marker.json").stat().st_mode) == 0o644
        assert json.loads((tmp_path / "out" / "marker.json").read_text()) == {"a": 1}
    finally:
        os.umask(umask)


def test_the_phantom_and_the_prepared_data_get_the_usual_permissions(tmp_path):
    from pix2rep_bundle.data.phantom import MARKER, write_phantom
    from pix2rep_bundle.data.preparation import prepare_dataset

    umask = os.umask(0o027)
    try:
        phantom = write_phantom(tmp_path / "phantom", num_subjects=3, seed=0)
        datalist = prepare_dataset(phantom, tmp_path / "prepared", spacing=(4.0, 4.0), image_size=(32, 32))
    finally:
        os.umask(umask)
    folders = [phantom, datalist.parent, datalist.parent / "volumes"]
    assert [stat.S_IMODE(p.stat().st_mode) for p in folders] == [0o750] * 3
    assert [stat.S_IMODE(p.stat().st_mode) for p in (phantom / MARKER, datalist)] == [0o640] * 2
