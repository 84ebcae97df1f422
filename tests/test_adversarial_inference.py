"""Inference and atomic outputs under hostile or careless use: no write escapes its folder (name parts, symbolic
links), one run per output folder with a record of what it wrote, no mixing of two runs' outputs, blank or
malformed inputs named, single slices refused before any work, and atomic writers that leave nothing behind (stale
temporaries swept, a full disk named)."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from helpers import CONFIGS, REPO, TINY_FEATURES, find_in_chain, load_script, parsed_config
from torch import nn

from pix2rep_bundle import io as bundle_io
from pix2rep_bundle.errors import DataError
from pix2rep_bundle.inference import check_postfix, inference_data, output_paths
from pix2rep_bundle.io import DiskWriteError, torch_save_atomic, write_json_atomic, write_text_atomic
from pix2rep_bundle.outputs import MARKER, claim_output_dir
from pix2rep_bundle.run_guard import LOCK_NAME, check_inference_folder, finish_inference_run, start_inference_run
from pix2rep_bundle.run_state import RUN_RECORD

TINY = {"profile": "compact", "image_size": [48, 48], "spacing": [4.0, 4.0], "features": TINY_FEATURES}


class LabelFromIntensity(nn.Module):
    """A 'network' that reads the label back from a normalised image; ``calls`` counts its forward passes."""

    def __init__(self, shift: int = 0):
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(()))
        self.shift, self.calls = shift, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        centres = torch.arange(4, dtype=x.dtype, device=x.device).view(1, 4, 1, 1)
        return torch.roll(-((3 * x - centres) ** 2) * 20, self.shift, dims=1) + self.dummy


def infer(overrides: dict, network: nn.Module | None = None) -> nn.Module:
    """configs/inference.yaml in process (``initialize``, ``run``) with a given network; the network."""
    network = network or LabelFromIntensity()
    parser = parsed_config("inference.yaml", TINY | {"ckpt_path": "unused"} | overrides)
    parser["network"] = network
    parser.parse()
    parser.get_parsed_content("initialize")
    parser.get_parsed_content("run")
    return network


def scan(path: Path, slices: int = 2, seed: int = 0) -> Path:
    """A small 3D scan with a label map beside it (``<name>_gt.nii.gz``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    labels = np.random.default_rng(seed).integers(0, 4, (20, 18, slices)).astype(np.uint8)
    affine = np.diag([2.0, 2.0, 8.0, 1.0])
    nib.save(nib.Nifti1Image((labels * 100.0 + 50.0).astype(np.float32), affine), str(path))
    nib.save(nib.Nifti1Image(labels, affine), str(path).replace(".nii.gz", "_gt.nii.gz"))
    return path


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def dead_pid() -> int:
    """The id of a process that has ended."""
    done = subprocess.Popen([sys.executable, "-c", "pass"])
    done.wait()
    return done.pid


# ---------------------------------------------------------------- 1: no output escapes output_dir


@pytest.mark.parametrize(
    "postfix",
    ["x/../../mydata/report", "../report", "a/b", "a\\b", "", ".hidden", "a..b", "seg\x00", " seg", None, "s" * 65],
)
def test_a_postfix_that_is_not_a_plain_name_part_is_refused_before_any_work(tmp_path, postfix):
    image = scan(tmp_path / "in" / "case.nii.gz")
    victim = tmp_path / "mydata" / "report.nii.gz"
    victim.parent.mkdir()
    victim.write_bytes(b"the user's own report")
    network = LabelFromIntensity()
    with pytest.raises(Exception) as info:
        infer({"inputs": str(image), "output_dir": str(tmp_path / "segs"), "output_postfix": postfix}, network)
    assert find_in_chain(info.value, DataError, "--output_postfix")
    assert victim.read_bytes() == b"the user's own report"
    assert network.calls == 0 and not (tmp_path / "segs").exists()


def test_plain_postfixes_pass():
    assert [check_postfix(p) for p in ("seg", "pix2rep-v0.9", "seg_2", "a+b", 7)] == [
        "seg",
        "pix2rep-v0.9",
        "seg_2",
        "a+b",
        "7",
    ]


def test_an_output_reached_through_a_symbolic_link_out_of_output_dir_is_refused(tmp_path):
    inputs = [scan(tmp_path / "in" / "subjA" / "sa.nii.gz"), scan(tmp_path / "in" / "subjB" / "sa.nii.gz")]
    entries = [{"image": str(p)} for p in inputs]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    out = tmp_path / "out"
    out.mkdir()
    (out / "subjA").symlink_to(elsewhere, target_is_directory=True)  # a subfolder that leads out
    with pytest.raises(DataError, match=r"subjA.*sa_seg.nii.gz: resolves to .*elsewhere.*outside --output_dir"):
        output_paths(entries, out)
    (out / "subjA").unlink()
    (out / "subjB").mkdir()
    (out / "subjB" / "sa_seg.nii.gz").symlink_to(elsewhere / "precious.nii.gz")  # the output file itself
    with pytest.raises(DataError, match="subjB.*sa_seg.nii.gz: resolves to .*precious.nii.gz"):
        output_paths(entries, out)
    network = LabelFromIntensity()
    with pytest.raises(Exception) as info:
        infer({"inputs": str(tmp_path / "in"), "output_dir": str(out), "overwrite": True}, network)
    assert find_in_chain(info.value, DataError, "outside --output_dir")
    assert network.calls == 0 and list(elsewhere.iterdir()) == []
    (out / "subjB" / "sa_seg.nii.gz").unlink()
    (out / "subjB").rmdir()
    (out / "subjB").write_text("a file where a folder of outputs goes")
    with pytest.raises(DataError, match="subjB: a file is in the way of the folder of sa_seg.nii.gz"):
        output_paths(entries, out)
    # an output folder that is itself a link is fine: the outputs lie inside what it resolves to
    (tmp_path / "link").symlink_to(elsewhere, target_is_directory=True)
    assert set(output_paths(entries, tmp_path / "link").values()) == {
        str(tmp_path / "link" / s / "sa_seg.nii.gz") for s in ("subjA", "subjB")
    }


# ---------------------------------------------------------------- 3: one run per folder, and its record


def test_a_second_inference_into_a_folder_in_use_is_refused_naming_the_first(tmp_path):
    image = scan(tmp_path / "in" / "case.nii.gz")
    out = tmp_path / "segs"
    infer({"inputs": str(image), "output_dir": str(out)})
    first = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (out / LOCK_NAME).write_text(json.dumps({"pid": first.pid, "host": socket.gethostname()}))
        before = snapshot(out)
        network = LabelFromIntensity()
        with pytest.raises(Exception) as info:
            infer({"inputs": str(image), "output_dir": str(out), "overwrite": True}, network)
        assert find_in_chain(info.value, DataError, f"another run \\(process {first.pid} on .*\\) is writing")
        assert network.calls == 0 and snapshot(out) == before
    finally:
        first.kill()
        first.wait()


def test_the_run_record_says_running_then_finished_with_the_outputs_and_the_checkpoint(tmp_path):
    images = [scan(tmp_path / "in" / "a.nii.gz"), scan(tmp_path / "in" / "b.nii.gz", seed=1)]
    entries = [{"image": str(p)} for p in images]
    ckpt = tmp_path / "model.pt"
    ckpt.write_bytes(b"weights")
    out = tmp_path / "segs"
    path = start_inference_run(entries, out, "seg", ckpt, {"features": TINY_FEATURES})
    record = json.loads(Path(path).read_text())
    assert record["kind"] == "inference" and record["status"] == "running" and record["pid"] == os.getpid()
    checkpoint = record["checkpoint"]
    assert (checkpoint["path"], checkpoint["found"], checkpoint["size"]) == (str(ckpt), True, 7)
    assert checkpoint["md5"] == hashlib.md5(b"weights").hexdigest() and checkpoint["mtime"] == ckpt.stat().st_mtime
    assert record["inputs"] == [str(p) for p in images] and record["output_postfix"] == "seg"
    assert record["planned_outputs"] == ["a_seg.nii.gz", "b_seg.nii.gz"]
    assert record["settings"]["features"] == TINY_FEATURES and (out / LOCK_NAME).is_file()

    infer({"inputs": str(tmp_path / "in"), "output_dir": str(out), "overwrite": True})
    record = json.loads((out / RUN_RECORD).read_text())
    assert record["status"] == "finished" and record["outputs"] == ["a_seg.nii.gz", "b_seg.nii.gz"]
    assert record["checkpoint"]["found"] is False  # the network was given directly
    assert not (out / LOCK_NAME).exists()
    assert check_inference_folder(out)["status"] == "finished"


# ---------------------------------------------------------------- 7: two runs' outputs never mix


def test_a_rerun_needs_overwrite_and_then_removes_the_earlier_runs_outputs_first(tmp_path):
    a = scan(tmp_path / "in" / "a.nii.gz")
    scan(tmp_path / "in" / "b.nii.gz", seed=1)
    out = tmp_path / "segs"
    infer({"inputs": str(tmp_path / "in"), "output_dir": str(out)})
    (out / "notes.txt").write_text("the user's notes")
    before = snapshot(out)
    with pytest.raises(Exception) as info:
        infer({"inputs": str(a), "output_dir": str(out)}, LabelFromIntensity(shift=1))
    assert find_in_chain(info.value, DataError, "holds the segmentations of an earlier run.*--overwrite true")
    assert snapshot(out) == before
    infer({"inputs": str(a), "output_dir": str(out), "overwrite": True}, LabelFromIntensity(shift=1))
    assert not (out / "b_seg.nii.gz").exists()  # the earlier model's output is gone, not left beside the new one
    assert (out / "notes.txt").read_text() == "the user's notes"  # what the bundle did not write stays
    assert check_inference_folder(out)["outputs"] == ["a_seg.nii.gz"]


def test_overwrite_removes_only_the_recorded_segmentations_and_the_folders_it_empties(tmp_path):
    a, b = scan(tmp_path / "in" / "subjA" / "sa.nii.gz"), scan(tmp_path / "in" / "subjB" / "sa.nii.gz")
    entries, out = [{"image": str(a)}, {"image": str(b)}], tmp_path / "segs"
    start_inference_run(entries, out, "seg", "unused")
    for path in map(Path, output_paths(entries, out).values()):
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(b"a segmentation")
    finish_inference_run(out)
    (out / "subjB" / "mine.txt").write_text("the user's")
    victim = tmp_path / "victim.nii.gz"
    victim.write_bytes(b"not the bundle's")
    record = json.loads((out / RUN_RECORD).read_text())  # a record edited to list what the bundle did not write
    record["outputs"] += [MARKER, RUN_RECORD, "../victim.nii.gz", str(victim)]
    write_json_atomic(out / RUN_RECORD, record)
    start_inference_run([{"image": str(a)}], out, "seg", "unused", overwrite=True)
    assert not (out / "subjA").exists()  # its only file removed, then the emptied folder
    assert sorted(p.name for p in (out / "subjB").iterdir()) == ["mine.txt"]
    assert victim.read_bytes() == b"not the bundle's" and (out / MARKER).is_file()


def test_scoring_refuses_a_folder_without_a_finished_record_or_with_other_files(tmp_path):
    a, b = scan(tmp_path / "in" / "a.nii.gz"), scan(tmp_path / "in" / "b.nii.gz", seed=1)
    out, report = tmp_path / "segs", tmp_path / "report"
    inputs = [{"image": str(p), "label": str(p).replace(".nii.gz", "_gt.nii.gz")} for p in (a, b)]
    settings = TINY | {
        "bundle_root": str(tmp_path),
        "inputs": inputs,
        "output_dir": str(out),
        "report_dir": str(report),
    }
    score = load_script("score_segmentations").main
    infer({"inputs": inputs, "output_dir": str(out)})
    assert score(**settings)["overall"]["num_volumes"] == 2
    scored = snapshot(report)

    def refused(pattern: str) -> None:
        with pytest.raises(DataError, match=pattern):
            score(**settings, overwrite=True)

    (out / "stray_seg.nii.gz").write_bytes((out / "a_seg.nii.gz").read_bytes())  # another run's file mixed in
    refused("segs: holds segmentations the recorded run did not write \\(stray_seg.nii.gz\\)")
    (out / "stray_seg.nii.gz").unlink()
    record = json.loads((out / RUN_RECORD).read_text())
    write_json_atomic(out / RUN_RECORD, record | {"status": "running"})  # a rerun killed midway
    refused(f"{RUN_RECORD}: the inference run is 'running', not finished")
    (out / RUN_RECORD).unlink()
    refused(f"{RUN_RECORD}: not found")
    # a killed rerun: started over the earlier outputs, one volume written, never finished
    start_inference_run([{"image": str(a)}], out, "seg", "unused", overwrite=True)
    refused("'running', not finished")
    assert snapshot(report) == scored  # each refusal came before anything was written


# ---------------------------------------------------------------- 8, 12: blank and malformed inputs


@pytest.mark.parametrize("inputs", ["", "   ", None, []])
def test_blank_or_empty_inputs_are_refused_naming_the_setting(tmp_path, inputs, monkeypatch):
    scan(tmp_path / "cwd" / "somebody.nii.gz")  # what a blank path would have meant: the working folder
    monkeypatch.chdir(tmp_path / "cwd")
    network = LabelFromIntensity()
    with pytest.raises(Exception) as info:
        infer({"inputs": inputs, "output_dir": str(tmp_path / "segs")}, network)
    assert find_in_chain(info.value, DataError, "^--inputs: (empty|the input list is empty)")
    assert network.calls == 0 and not (tmp_path / "segs").exists()


def test_blank_inputs_on_the_command_line_stop_with_a_non_zero_exit(tmp_path):
    from monai.networks.nets import BasicUNet

    ckpt = tmp_path / "model.pt"
    torch.save(BasicUNet(spatial_dims=2, in_channels=1, out_channels=4, features=TINY_FEATURES).state_dict(), ckpt)
    scan(tmp_path / "cwd" / "somebody.nii.gz")
    overrides = [f"--{k}={json.dumps(v)}" for k, v in TINY.items()]
    done = subprocess.run(
        [sys.executable, "-m", "monai.bundle", "run", "--config_file", str(CONFIGS / "inference.yaml"), "--inputs", ""]
        + ["--ckpt_path", str(ckpt), "--output_dir", str(tmp_path / "segs"), "--bundle_root", str(REPO), *overrides],
        capture_output=True,
        text=True,
        cwd=tmp_path / "cwd",
        env=os.environ | {"PYTHONPATH": str(REPO)},
    )
    assert done.returncode != 0
    assert "--inputs: empty" in done.stderr
    assert not (tmp_path / "segs").exists()


@pytest.mark.parametrize(
    "listed, problem",
    [
        ([1, None], "input entry 0 is 1 \\(int\\), not a path"),
        (["a.nii.gz", None], "input entry 1 is None \\(NoneType\\), not a path"),
        ([{"image": 3}], '"image" of input entry 0 is 3 \\(int\\), not a path'),
        ([{"label": "x.nii.gz"}], 'input entry 0 has no "image"'),
        (["a.nii.gz", ""], "input entry 1 is an empty path"),
        ([["a.nii.gz"]], "input entry 0 is \\['a.nii.gz'\\] \\(list\\), not a path"),
    ],
)
def test_input_lists_with_entries_that_are_not_paths_name_the_entry(tmp_path, listed, problem):
    (tmp_path / "list.json").write_text(json.dumps(listed))
    with pytest.raises(DataError, match="list.json: " + problem):
        inference_data(str(tmp_path / "list.json"))
    with pytest.raises(DataError, match="--inputs: " + problem):
        inference_data(listed)


@pytest.mark.parametrize("inputs", [0, True, {"image": "a.nii.gz"}])
def test_inputs_of_another_type_are_refused_naming_the_setting(inputs):
    with pytest.raises(DataError, match="^--inputs: expected a folder, a NIfTI file, a JSON list or a list"):
        inference_data(inputs)


def test_a_single_slice_volume_is_refused_before_inference_naming_the_file(tmp_path):
    good = scan(tmp_path / "in" / "good.nii.gz")
    flat = scan(tmp_path / "in" / "flat.nii.gz", slices=1)
    network = LabelFromIntensity()
    with pytest.raises(Exception) as info:
        infer({"inputs": [str(good), str(flat)], "output_dir": str(tmp_path / "segs")}, network)
    assert find_in_chain(info.value, DataError, re.escape(str(flat)) + ": a single slice")
    assert network.calls == 0 and not (tmp_path / "segs").exists()  # not even the good volume was segmented


# ---------------------------------------------------------------- 17: atomic writers leave nothing behind


def test_temporaries_carry_the_pid_and_stale_ones_are_swept_never_a_live_ones(tmp_path):
    with bundle_io.atomic_path(tmp_path / "a" / "x.nii.gz", suffix=".nii.gz") as tmp:
        assert re.fullmatch(rf"\.x\.nii\.gz\.{os.getpid()}\.\w+\.tmp\.nii\.gz", tmp.name)
        assert bundle_io.TEMPORARY_NAME.match(tmp.name)
    folder = tmp_path / "run"
    folder.mkdir()
    gone = dead_pid()
    stale = [folder / f".model.pt.{gone}.abcd1234.tmp", folder / f".seg.nii.gz.{gone}.x1.tmp.nii.gz"]
    for path in stale:
        path.write_bytes(b"half a file")
    (folder / f".prepared.{gone}.k2j3h4g5.tmp").mkdir()  # a folder of atomic_directory
    live = folder / f".other.json.{os.getppid()}.zzzz9999.tmp"  # a running process's write in progress
    live.write_bytes(b"being written")
    user = folder / ".my.notes.tmp"
    user.write_bytes(b"not ours")
    write_json_atomic(folder / "record.json", {"a": 1})
    assert sorted(p.name for p in folder.iterdir()) == sorted([live.name, user.name, "record.json"])
    # the start of a run sweeps its folder too
    other = tmp_path / "segs"
    other.mkdir()
    (other / f".a_seg.nii.gz.{gone}.abcdefgh.tmp.nii.gz").write_bytes(b"half")
    claim_output_dir(other, "segmentations", overwrite=True)
    assert not [p for p in other.iterdir() if p.name.endswith(".nii.gz")]


def test_a_full_disk_during_a_checkpoint_save_is_named_and_leaves_the_old_file(tmp_path, monkeypatch):
    target = tmp_path / "model.pt"
    target.write_bytes(b"the previous checkpoint")

    def full_disk_save(obj, path, *args, **kwargs):
        Path(path).write_bytes(b"PK\x03\x04 half")
        raise RuntimeError("[enforce fail at inline_container.cc:820] . unexpected pos 5120 vs 5008")

    monkeypatch.setattr(torch, "save", full_disk_save)
    with pytest.raises(OSError, match=re.escape(str(target)) + ": could not be written .*disk may be full") as info:
        torch_save_atomic({"w": torch.zeros(2)}, target)
    assert isinstance(info.value, DiskWriteError) and info.value.errno == errno.ENOSPC
    assert target.read_bytes() == b"the previous checkpoint"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt"]  # the temporary removed


def test_any_atomic_writer_names_a_full_disk_and_other_errors_pass_unchanged(tmp_path, monkeypatch):
    def no_space(self, text, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_text", no_space)
    with pytest.raises(DiskWriteError, match="report.txt: could not be written .*disk may be full"):
        write_text_atomic(tmp_path / "report.txt", "text")
    monkeypatch.undo()
    with pytest.raises(RuntimeError, match="^a bug$"):
        with bundle_io.atomic_path(tmp_path / "other.txt"):
            raise RuntimeError("a bug")
    assert list(tmp_path.iterdir()) == []
    with bundle_io.atomic_path(tmp_path / "d" / "ok.txt") as tmp:
        tmp.write_text("ok")
    assert (tmp_path / "d" / "ok.txt").read_text() == "ok"
    assert [p.name for p in (tmp_path / "d").iterdir()] == ["ok.txt"]
