"""Tests of the synthetic cardiac cine MR phantom: determinism, anatomy, files, atomicity, preview."""

from __future__ import annotations

import json
import os
import re

import nibabel as nib
import numpy as np
import pytest
from helpers import load_script

from pix2rep_bundle.data import phantom
from pix2rep_bundle.data.phantom import writing  # noqa: F401  (phantom.writing below)
from pix2rep_bundle.data.phantom import (
    GROUPS,
    LABELS,
    MARKER,
    PhantomSubject,
    cycle_states,
    ensure_phantom,
    group_of,
    make_subject,
    read_info,
    write_phantom,
    write_subject,
)
from pix2rep_bundle.errors import DataError

draw_preview = load_script("phantom_preview").draw_preview  # the preview figure lives in scripts/

RV, MYO, LV = LABELS["RV"], LABELS["MYO"], LABELS["LV"]


@pytest.fixture(scope="module")
def subjects() -> list[PhantomSubject]:
    """Two subjects of every group."""
    return [make_subject(i, seed=0) for i in range(1, 2 * len(GROUPS) + 1)]


def _frames(s: PhantomSubject) -> list[int]:
    return [s.ed_frame, s.es_frame]


def _lv_volume(s: PhantomSubject, frame: int) -> float:
    return float((s.labels[frame] == LV).sum() * np.prod(s.spacing) / 1000.0)


def _wall_thickness(s: PhantomSubject, frame: int) -> float:
    """Mean (equivalent-circle) myocardial thickness in mm over the slices with an LV cavity in ED and ES."""
    lab = s.labels[frame]
    both = [(s.labels[f] == LV).any(axis=(0, 1)) for f in _frames(s)]
    out = []
    for z in np.flatnonzero(both[0] & both[1]):
        endo = (lab[..., z] == LV).sum()
        epi = endo + (lab[..., z] == MYO).sum()
        out.append((np.sqrt(epi / np.pi) - np.sqrt(endo / np.pi)) * s.spacing[0])
    return float(np.mean(out))


# ----------------------------------------------------------------------------------------------- determinism


def test_same_seed_and_id_give_identical_arrays():
    a, b = make_subject(3, seed=5), make_subject(3, seed=5)
    assert a.spacing == b.spacing and a.es_frame == b.es_frame and a.group == b.group
    for f in _frames(a):
        np.testing.assert_array_equal(a.images[f], b.images[f])
        np.testing.assert_array_equal(a.labels[f], b.labels[f])


def test_different_seed_gives_different_subject():
    a, b = make_subject(3, seed=0), make_subject(3, seed=1)
    assert a.images[a.ed_frame].shape != b.images[b.ed_frame].shape or not np.array_equal(
        a.images[a.ed_frame], b.images[b.ed_frame]
    )


def test_subject_same_alone_or_in_a_set(tmp_path):
    write_phantom(tmp_path / "set", num_subjects=3, seed=0)
    alone = make_subject(3, seed=0)
    folder = tmp_path / "set" / "patient003"
    for f in _frames(alone):
        img = np.asarray(nib.load(folder / f"patient003_frame{f:02d}.nii.gz").dataobj)
        gt = np.asarray(nib.load(folder / f"patient003_frame{f:02d}_gt.nii.gz").dataobj)
        np.testing.assert_array_equal(img.astype(np.float32), alone.images[f])
        np.testing.assert_array_equal(gt, alone.labels[f])


def test_groups_are_balanced():
    counts = dict.fromkeys(GROUPS, 0)
    for i in range(1, 101):
        counts[group_of(i)] += 1
    assert set(counts.values()) == {20}
    assert len({group_of(i) for i in range(1, 5)}) == 4


# ----------------------------------------------------------------------------------------------- anatomy


def test_acquisition_ranges(subjects):
    for s in subjects:
        nx, ny, nz = s.images[s.ed_frame].shape
        assert 160 <= nx <= 232 and 160 <= ny <= 232 and 6 <= nz <= 12
        assert 1.3 <= s.spacing[0] == s.spacing[1] <= 1.9 and 5.0 <= s.spacing[2] <= 10.0
        assert 1 <= s.ed_frame < s.es_frame <= s.num_frames


def test_label_sanity(subjects):
    for s in subjects:
        for f in _frames(s):
            lab = s.labels[f]
            assert lab.dtype == np.uint8 and set(np.unique(lab)) <= {0, 1, 2, 3}
            assert lab.shape == s.images[f].shape
            lv_area = (lab == LV).sum(axis=(0, 1))
            myo_area = (lab == MYO).sum(axis=(0, 1))
            present = lv_area > 0
            assert np.all(lv_area[present] < lv_area[present] + myo_area[present])
            assert np.all(myo_area[present] > 0)
            assert present.mean() >= 0.6, "LV in most slices"
            rv_per_slice = (lab == RV).any(axis=(0, 1))
            assert rv_per_slice[0] and not rv_per_slice[-1], "RV at the base, not at the apex"


def test_lv_shrinks_base_to_apex(subjects):
    for s in subjects:
        area = (s.labels[s.ed_frame] == LV).sum(axis=(0, 1))
        mid = len(area) // 2
        assert area[1] > area[-2] and area[mid] > area[-1]


def test_systole_shrinks_cavity_and_thickens_wall(subjects):
    for s in subjects:
        assert _lv_volume(s, s.es_frame) < _lv_volume(s, s.ed_frame)
        assert _wall_thickness(s, s.es_frame) > _wall_thickness(s, s.ed_frame)
        myo_ed = (s.labels[s.ed_frame] == MYO).sum()
        myo_es = (s.labels[s.es_frame] == MYO).sum()
        assert abs(myo_es - myo_ed) / myo_ed < 0.1, "myocardial mass roughly conserved"


def test_groups_shape_the_anatomy(subjects):
    by_group = {g: [s for s in subjects if s.group == g] for g in GROUPS}

    def mean(group, fn):
        return np.mean([fn(s) for s in by_group[group]])

    def lv_edv(s):
        return _lv_volume(s, s.ed_frame)

    def ef(s):
        return 1 - _lv_volume(s, s.es_frame) / lv_edv(s)

    def rv_edv(s):
        return (s.labels[s.ed_frame] == RV).sum() * np.prod(s.spacing) / 1000

    def thickness(s):
        return _wall_thickness(s, s.ed_frame)

    assert mean("DCM", lv_edv) > mean("HCM", lv_edv)
    assert mean("HCM", thickness) > mean("NOR", thickness) and mean("HCM", thickness) > mean("DCM", thickness)
    assert mean("DCM", ef) < mean("NOR", ef) < mean("HCM", ef)
    assert mean("MINF", ef) < mean("NOR", ef)
    assert mean("RV", rv_edv) > mean("NOR", rv_edv)


def test_image_sanity(subjects):
    for s in subjects:
        for f in _frames(s):
            img, lab = s.images[f], s.labels[f]
            assert img.dtype == np.float32 and np.isfinite(img).all() and img.min() >= 0
            assert np.array_equal(img, np.rint(img)), "integer intensities, as stored in int16"
            assert img[lab == LV].mean() > 1.5 * img[lab == MYO].mean()
            dark = np.percentile(img, 2)
            assert dark < 0.15 * img[lab == LV].mean(), "air and lungs near zero"


def test_cycle_states():
    s = cycle_states(30, 1, 12)
    assert s[0] == 0 and s[11] == 1 and np.all((s >= 0) & (s <= 1))
    assert np.all(np.diff(s[:12]) > 0)


def test_cine_matches_ed_es_frames():
    plain, cine = make_subject(2, seed=0), make_subject(2, seed=0, with_cine=True)
    assert cine.cine is not None and cine.cine.shape == (*plain.images[1].shape, plain.num_frames)
    for f in _frames(plain):
        np.testing.assert_array_equal(cine.cine[..., f - 1], plain.images[f])
        np.testing.assert_array_equal(cine.images[f], plain.images[f])


# ----------------------------------------------------------------------------------------------- files


def test_write_phantom_acdc_layout(tmp_path):
    out = write_phantom(tmp_path / "ph", num_subjects=3, seed=0)
    assert out == tmp_path / "ph"
    marker = json.loads((out / MARKER).read_text())
    assert marker["num_subjects"] == 3 and marker["seed"] == 0 and "package_version" in marker
    for i in (1, 2, 3):
        folder = out / f"patient{i:03d}"
        text = (folder / "Info.cfg").read_text()
        assert re.fullmatch(
            r"ED: \d+\nES: \d+\nGroup: (NOR|MINF|DCM|HCM|RV)\nHeight: \d+\.\d\nNbFrame: \d+\nWeight: \d+\.\d\n", text
        )
        info = read_info(folder / "Info.cfg")
        assert info["Group"] == group_of(i)
        for frame in (int(info["ED"]), int(info["ES"])):
            img = nib.load(folder / f"patient{i:03d}_frame{frame:02d}.nii.gz")
            gt = nib.load(folder / f"patient{i:03d}_frame{frame:02d}_gt.nii.gz")
            assert img.shape == gt.shape and gt.get_data_dtype() == np.uint8
            zooms = img.header.get_zooms()
            np.testing.assert_allclose(zooms, gt.header.get_zooms())
            np.testing.assert_allclose(np.diag(img.affine)[:3], zooms, rtol=1e-6)
        s = make_subject(i, seed=0)
        np.testing.assert_allclose(zooms, s.spacing, rtol=1e-6)
    assert not list(tmp_path.glob(".*"))  # no temporary folder left behind


def test_write_subject_with_cine(tmp_path):
    s = make_subject(1, seed=0, with_cine=True)
    folder = write_subject(s, tmp_path)
    cine = nib.load(folder / "patient001_4d.nii.gz")
    assert cine.shape == s.cine.shape
    np.testing.assert_allclose(cine.header.get_zooms()[:3], s.spacing, rtol=1e-6)


def test_parallel_equals_serial(tmp_path):
    write_phantom(tmp_path / "a", num_subjects=2, seed=1)
    write_phantom(tmp_path / "b", num_subjects=2, seed=1, num_workers=2)
    for name in ("patient001/patient001_frame01.nii.gz", "patient002/patient002_frame01_gt.nii.gz"):
        a = np.asarray(nib.load(tmp_path / "a" / name).dataobj)
        b = np.asarray(nib.load(tmp_path / "b" / name).dataobj)
        np.testing.assert_array_equal(a, b)


def test_ensure_phantom_noop_then_regenerates(tmp_path):
    out = tmp_path / "ph"
    assert ensure_phantom(out, num_subjects=2, seed=0) == out
    marker = out / MARKER
    mtime = marker.stat().st_mtime_ns
    ensure_phantom(out, num_subjects=2, seed=0)
    assert marker.stat().st_mtime_ns == mtime
    ensure_phantom(out, num_subjects=3, seed=0)
    assert json.loads(marker.read_text())["num_subjects"] == 3 and (out / "patient003").is_dir()
    ensure_phantom(out, num_subjects=3, seed=4)
    assert json.loads(marker.read_text())["seed"] == 4


def test_ensure_phantom_refuses_foreign_folder(tmp_path):
    out = tmp_path / "data"
    out.mkdir()
    (out / "mine.txt").write_text("keep")
    with pytest.raises(DataError):
        ensure_phantom(out, num_subjects=1)
    assert (out / "mine.txt").read_text() == "keep"


def test_failure_leaves_nothing_behind(tmp_path, monkeypatch):
    calls = []
    real = phantom.writing.write_subject

    def flaky(subject, out_dir):
        calls.append(subject.subject_id)
        if len(calls) == 2:
            raise RuntimeError("disk full")
        return real(subject, out_dir)

    monkeypatch.setattr(phantom.writing, "write_subject", flaky)  # the writer write_phantom calls
    with pytest.raises(RuntimeError):
        write_phantom(tmp_path / "ph", num_subjects=3, seed=0)
    assert not (tmp_path / "ph").exists()
    assert os.listdir(tmp_path) == []


# ----------------------------------------------------------------------------------------------- preview


def test_preview_from_subjects_and_folder(tmp_path, subjects):
    png = draw_preview(subjects[:2], tmp_path / "a.png", max_slices=3)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    write_phantom(tmp_path / "ph", num_subjects=2, seed=0)
    png = draw_preview(tmp_path / "ph", tmp_path / "b.png", max_slices=3)
    assert png.stat().st_size > 1000
