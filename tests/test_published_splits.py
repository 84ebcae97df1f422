"""Published ACDC splits: the lists hold no subject twice and keep test subjects apart; the preparation and the
few-shot selection follow them (a datalist built in memory; real ACDC when it is beside the project)."""

from __future__ import annotations

import json
import re
from itertools import combinations
from pathlib import Path

import pytest
from helpers import REPO, acdc_dir

from pix2rep_bundle.data import published_splits as ps
from pix2rep_bundle.data.acdc import SubjectRecord
from pix2rep_bundle.data.datasets import labeled_entries, validation_entries
from pix2rep_bundle.data.preparation import _datalist, _parameters, prepare_dataset
from pix2rep_bundle.data.splits import subject_splits
from pix2rep_bundle.errors import DataError

ALL = [f"{n:03d}" for n in range(1, 101)]


def test_no_list_holds_a_subject_twice_and_all_are_acdc_subjects():
    lists = [
        ps.CHAITANYA2020_TEST,
        ps.CHAITANYA2020_UNLABELED,
        ps.SEMI_70_10_20_TRAIN,
        ps.SEMI_70_10_20_VALIDATION,
        ps.SEMI_70_10_20_TEST,
    ]
    lists += [ids for by_k in ps.CHAITANYA2020_COMBINATIONS.values() for pair in by_k for ids in pair]
    for ids in lists:
        assert len(set(ids)) == len(ids), ids
        assert set(ids) <= set(ALL), ids


def test_semi_split_is_70_10_20_disjoint_and_covers_the_100_subjects():
    train, validation, test = (
        set(ps.SEMI_70_10_20_TRAIN),
        set(ps.SEMI_70_10_20_VALIDATION),
        set(ps.SEMI_70_10_20_TEST),
    )
    assert (len(train), len(validation), len(test)) == (70, 10, 20)
    for a, b in combinations([train, validation, test], 2):
        assert not a & b
    assert train | validation | test == set(ALL)


def test_chaitanya_split_keeps_test_subjects_out_of_every_other_list():
    test = set(ps.CHAITANYA2020_TEST)
    assert len(test) == 20 and len(ps.CHAITANYA2020_UNLABELED) == 52
    assert not test & set(ps.CHAITANYA2020_UNLABELED)
    assert {k: len(v) for k, v in ps.CHAITANYA2020_COMBINATIONS.items()} == {1: 5, 2: 5, 8: 3}
    for k, by_k in ps.CHAITANYA2020_COMBINATIONS.items():
        for labelled, validation in by_k:
            assert len(labelled) == k and len(validation) == 2
            assert not set(labelled) & set(validation) and not (set(labelled) | set(validation)) & test


def test_every_named_pool_is_disjoint_from_validation_and_test():
    for split in ("chaitanya2020", "semi_70_10_20"):
        pools = ps.named_pools(split)
        assert not set(pools["test"]) & (set(pools["train"]) | set(pools["validation"]) | set(pools["pretrain"]))
        assert not set(pools["train"]) & set(pools["validation"])


def test_unknown_split_and_combination_errors_name_the_choices():
    with pytest.raises(ValueError, match=r"unknown split 'acdc2017': choose one of \['random', 'chaitanya2020'"):
        ps.check_split("acdc2017")
    with pytest.raises(ValueError, match=r"K in \[1, 2, 8\]"):
        ps.fixed_combination("chaitanya2020", 3, 0)
    with pytest.raises(ValueError, match="--label_seed 0 to 2"):
        ps.fixed_combination("chaitanya2020", 8, 3)
    assert ps.fixed_combination("semi_70_10_20", 3, 7) is None
    assert ps.fixed_combination("chaitanya2020", 1, 2) == (["patient095"], ["patient011", "patient071"])


def fake_subjects(numbers) -> list[SubjectRecord]:
    return [
        SubjectRecord(subject=ps.subject_name(n), folder=Path("."), group="NOR", ed_frame=1, es_frame=12, num_frames=30)
        for n in numbers
    ]


def fake_datalist(tmp_path: Path, split: str) -> Path:
    """A datalist of 100 subjects (ED and ES entries, no images) assembled by the preparation's own code."""
    subjects = fake_subjects(ALL)
    splits = subject_splits(subjects, split, 0, 0.1, 0.2, tmp_path)
    labeled = {
        r.subject: [
            {
                "image": f"volumes/{r.subject}_frame{f:02d}.nii.gz",
                "subject": r.subject,
                "frame": f,
                "phase": phase,
                "group": r.group,
                "label": "x",
            }
            for phase, f in r.labeled_frames()
        ]
        for r in subjects
    }
    params = _parameters(tmp_path, (2.0, 2.0), (96, 96), 0, 0.1, 0.2, False, split)
    datalist = _datalist(params, "fingerprint", splits, subjects, labeled, {r.subject: [] for r in subjects})
    path = tmp_path / "datalist.json"
    path.write_text(json.dumps(datalist))
    return path


def subjects_of(entries) -> list[str]:
    return sorted({e["subject"] for e in entries})


def test_chaitanya_datalist_and_few_shot_selection_follow_the_published_combinations(tmp_path):
    path = fake_datalist(tmp_path, "chaitanya2020")
    datalist = json.loads(path.read_text())
    assert subjects_of(datalist["test"]) == [ps.subject_name(n) for n in ps.CHAITANYA2020_TEST]
    assert {e["phase"] for e in datalist["labeled"] + datalist["validation"] + datalist["test"]} == {"ED"}
    assert subjects_of(datalist["pretrain"]) == sorted(ps.subject_name(n) for n in ps.CHAITANYA2020_UNLABELED)
    assert {e["phase"] for e in datalist["pretrain"]} == {"ED", "ES"}  # unlabelled: both frames
    for k, by_k in ps.CHAITANYA2020_COMBINATIONS.items():
        for seed, (labelled, validation) in enumerate(by_k):
            assert subjects_of(labeled_entries(path, k, seed)) == sorted(ps.subject_name(n) for n in labelled)
            assert subjects_of(validation_entries(path, k, seed)) == sorted(ps.subject_name(n) for n in validation)


def test_semi_datalist_draws_k_subjects_from_the_70_and_validates_on_the_10(tmp_path, capsys):
    path = fake_datalist(tmp_path, "semi_70_10_20")
    train = {ps.subject_name(n) for n in ps.SEMI_70_10_20_TRAIN}
    for seed in range(3):
        chosen = subjects_of(labeled_entries(path, 3, seed))
        assert len(chosen) == 3 and set(chosen) <= train
        # the run's log names the subjects it labels
        assert f"labelled subjects (random, label_seed {seed}): {', '.join(chosen)}" in capsys.readouterr().out
    assert subjects_of(validation_entries(path, 3, 0)) == sorted(
        ps.subject_name(n) for n in ps.SEMI_70_10_20_VALIDATION
    )
    assert len(json.loads(path.read_text())["test"]) == 40  # ED and ES of the 20 test subjects


def test_a_named_split_on_a_folder_without_its_subjects_names_what_is_missing(tmp_path):
    with pytest.raises(DataError, match=r"split semi_70_10_20 needs ACDC subjects that are not here: patient001"):
        subject_splits(fake_subjects(ALL[1:]), "semi_70_10_20", 0, 0.1, 0.2, tmp_path)


def test_docs_list_every_subject_of_every_split():
    text = (REPO / "docs" / "acdc_splits.md").read_text()
    for name, ids in [
        ("test", ps.CHAITANYA2020_TEST),
        ("unlabelled", ps.CHAITANYA2020_UNLABELED),
        ("train", ps.SEMI_70_10_20_TRAIN),
        ("validation", ps.SEMI_70_10_20_VALIDATION),
        ("test", ps.SEMI_70_10_20_TEST),
    ]:
        assert ", ".join(ids) in text, name
    for k, by_k in ps.CHAITANYA2020_COMBINATIONS.items():
        for c, (labelled, validation) in enumerate(by_k, start=1):
            assert re.search(rf"\| {k} \| c{c} \| {', '.join(labelled)} \| {', '.join(validation)} \|", text), (k, c)


def test_real_acdc_prepares_with_the_published_split(tmp_path):
    acdc = acdc_dir()
    if not (acdc / "patient100").is_dir():
        pytest.skip(f"ACDC training data not found at {acdc} (set PIX2REP_ACDC_DIR)")
    path = prepare_dataset(
        acdc, tmp_path / "out", spacing=(4.0, 4.0), image_size=(48, 48), split="chaitanya2020", num_workers=2
    )
    datalist = json.loads(path.read_text())
    assert datalist["split"] == "chaitanya2020"
    assert subjects_of(datalist["test"]) == [ps.subject_name(n) for n in ps.CHAITANYA2020_TEST]
    assert len(datalist["test"]) == 20 and all(e["phase"] == "ED" for e in datalist["test"])
    assert subjects_of(labeled_entries(path, 2, 0)) == ["patient042", "patient062"]
