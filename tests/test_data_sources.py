"""Data sources other than the ACDC layout, derived from the phantom: a plain folder of NIfTI scans (renamed, nested,
no Info.cfg, no labels), frames stacked into 4D files, a datalist JSON with relative paths; subject-level seeded
splits; labels only where a config needs them; bad input refused by name with nothing written; pretraining from a
plain folder through configs/pretrain.yaml."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from helpers import CONFIGS, find_in_chain, parsed_config, tiny_settings
from monai.bundle import ConfigWorkflow

from pix2rep_bundle.data.datasets import labeled_entries, load_datalist, validation_entries
from pix2rep_bundle.data.phantom import write_phantom
from pix2rep_bundle.data.preparation import prepare_dataset
from pix2rep_bundle.data.sources import scan_source, source_kind
from pix2rep_bundle.data.splits import source_splits
from pix2rep_bundle.errors import DataError

SPACING, SIZE = (4.0, 4.0), (48, 48)
POOLS = ("pretrain", "labeled", "validation", "test")


@pytest.fixture(scope="module")
def phantom(tmp_path_factory) -> Path:
    """Six phantom subjects in the ACDC layout (ED and ES frames with labels)."""
    return write_phantom(tmp_path_factory.mktemp("phantom") / "acdc", num_subjects=6, seed=0)


def frames(phantom: Path) -> dict[str, list[tuple[Path, Path]]]:
    """(image, label) of the ED and ES frames of every phantom subject."""
    out = {}
    for folder in sorted(phantom.glob("patient*")):
        images = sorted(p for p in folder.glob("*_frame??.nii.gz"))
        out[folder.name] = [(p, p.with_name(p.name.replace(".nii.gz", "_gt.nii.gz"))) for p in images]
    return out


def plain_folder(phantom: Path, root: Path, labels: bool = False, count: int = 6) -> Path:
    """The frames of ``count`` phantom subjects renamed and nested (``site/<n>/visit_scans/<k>.nii.gz``), no Info.cfg,
    labels optional."""
    for n, (_, pairs) in enumerate(list(frames(phantom).items())[:count]):
        folder = root / ("site_a" if n % 2 else "site_b") / f"case {n}" / "visit_scans"
        folder.mkdir(parents=True)
        for k, (image, label) in enumerate(pairs):
            shutil.copy(image, folder / f"scan{k}.nii.gz")
            if labels:
                shutil.copy(label, folder / f"scan{k}_gt.nii.gz")
    (root / ".hidden").mkdir()
    shutil.copy(image, root / ".hidden" / "ignored.nii.gz")
    return root


def stack(paths: list[Path], out: Path) -> Path:
    """The 3D files stacked along a fourth axis (frames), with the first one's header."""
    first = nib.load(paths[0])
    data = np.stack([np.asarray(nib.load(p).dataobj) for p in paths], axis=-1)
    nib.save(nib.Nifti1Image(data, first.affine), out)
    return out


def cine_folder(phantom: Path, root: Path) -> Path:
    """One 4D file (ED and ES stacked) per subject, with a 4D label, side by side in one folder."""
    (root / "cines").mkdir(parents=True)
    for subject, pairs in frames(phantom).items():
        stack([image for image, _ in pairs], root / "cines" / f"{subject}_cine.nii.gz")
        stack([label for _, label in pairs], root / "cines" / f"{subject}_cine_gt.nii.gz")
    return root


def write_json(path: Path, content) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(content))
    return path


def datalist_json(phantom: Path, root: Path) -> Path:
    """A Decathlon datalist beside copies of the phantom's frames (relative paths): subjects 1-5 in training (labels
    for subjects 1-4 only, ED and ES grouped by a subject key), subject 6 as validation, no test."""
    entries = {"training": [], "validation": []}
    for n, (subject, pairs) in enumerate(frames(phantom).items(), start=1):
        for image, label in pairs:
            (root / "img").mkdir(parents=True, exist_ok=True)
            shutil.copy(image, root / "img" / image.name)
            entry = {"image": f"img/{image.name}", "subject": subject}
            if n <= 4 or n == 6:
                shutil.copy(label, root / "img" / label.name)
                entry["label"] = f"img/{label.name}"
            entries["validation" if n == 6 else "training"].append(entry)
    return write_json(root / "dataset.json", entries)


def prepare(source: Path, out: Path, **kwargs) -> dict:
    return json.loads(prepare_dataset(source, out, spacing=SPACING, image_size=SIZE, **kwargs).read_text())


def subjects_of(datalist: dict, pool: str) -> set[str]:
    return {e["subject"] for e in datalist[pool]}


def assert_disjoint(datalist: dict) -> None:
    """No subject in two of train / validation / test; pretraining only from train."""
    train, val, test = (set(datalist["splits"][k]) for k in ("train", "validation", "test"))
    assert not (train & val or train & test or val & test)
    assert subjects_of(datalist, "pretrain") <= train and subjects_of(datalist, "labeled") <= train
    assert subjects_of(datalist, "validation") <= val and subjects_of(datalist, "test") <= test


# ---------------------------------------------------------------------------------------------- plain folders


def test_a_plain_folder_prepares_without_labels_or_info_cfg(phantom, tmp_path, capsys):
    source = plain_folder(phantom, tmp_path / "scans")
    assert source_kind(source) == "folder" and source_kind(phantom) == "acdc"
    d = prepare(source, tmp_path / "out")
    assert "(plain folder of NIfTI volumes)" in capsys.readouterr().out
    assert d["source_kind"] == "folder" and len(d["groups"]) == 6 and set(d["groups"].values()) == {"unknown"}
    assert sorted(d["groups"])[0] == "site_a/case 1/visit_scans"  # a subject is the folder holding the 3D files
    assert_disjoint(d)
    assert all("label" not in e for p in POOLS for e in d[p])  # the pools keep unlabelled entries
    assert all(len([e for e in d["pretrain"] if e["subject"] == s]) == 2 for s in d["splits"]["train"])
    assert all((tmp_path / "out" / e["image"]).is_file() for p in POOLS for e in d[p])
    assert not any("ignored" in e["image"] for p in POOLS for e in d[p])  # hidden folders are skipped
    # training needs labels and says so, naming the entry and the config
    with pytest.raises(DataError, match=r"visit_scans.*train.yaml needs labels: labeled entry \(subject 'site_"):
        labeled_entries(tmp_path / "out" / "datalist.json", 1, 0)
    with pytest.raises(DataError, match="evaluate.yaml needs labels: test entry"):
        load_datalist(tmp_path / "out" / "datalist.json", "test", needs_labels="evaluate.yaml")


def test_4d_files_are_subjects_with_a_volume_per_frame(phantom, tmp_path):
    source = cine_folder(phantom, tmp_path / "cines_src")
    d = prepare(source, tmp_path / "out")
    assert sorted(d["groups"]) == [f"cines/patient00{n}_cine" for n in range(1, 7)]
    entries = [e for p in ("labeled", "validation", "test") for e in d[p]]
    assert len(entries) == 12 and all("label" in e and e["phase"] == "frame" for e in entries)
    assert {e["frame"] for e in entries} == {1, 2}
    # frame 2 of the 4D file is the ES frame of the phantom, prepared as the ACDC layout prepares it
    acdc = prepare(phantom, tmp_path / "acdc_out")
    es = next(e for e in entries if e["frame"] == 2)
    subject = es["subject"].split("/")[1].replace("_cine", "")
    twin = next(e for p in POOLS[1:] for e in acdc[p] if e["subject"] == subject and e["phase"] == "ES")
    for key in ("image", "label"):
        mine = np.asarray(nib.load(tmp_path / "out" / es[key]).dataobj)
        np.testing.assert_array_equal(mine, np.asarray(nib.load(tmp_path / "acdc_out" / twin[key]).dataobj))
    validation = validation_entries(tmp_path / "out" / "datalist.json", 1, 0)  # labels present: accepted
    assert validation and all(Path(e["label"]).is_file() for e in validation)


def test_splits_are_subject_level_and_seeded(phantom, tmp_path):
    source = plain_folder(phantom, tmp_path / "scans")
    scanned = scan_source(source)
    first = source_splits(scanned, "random", 0, 0.2, 0.2)
    assert first == source_splits(scan_source(source), "random", 0, 0.2, 0.2)
    others = [source_splits(scanned, "random", seed, 0.2, 0.2) for seed in range(1, 6)]
    assert any(o["test"] != first["test"] or o["validation"] != first["validation"] for o in others)
    for split in [first, *others]:
        assert sorted(split["train"] + split["validation"] + split["test"]) == sorted(
            s.subject for s in scanned.subjects
        )
    with pytest.raises(DataError, match="scans: split semi_70_10_20 .* needs the ACDC layout.*--subject_split random"):
        prepare(source, tmp_path / "out", split="semi_70_10_20")
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------------------------- datalist JSON


def test_a_datalist_json_with_relative_paths(phantom, tmp_path):
    path = datalist_json(phantom, tmp_path / "mine")
    assert source_kind(path) == "datalist"
    d = prepare(path, tmp_path / "out", seed=3)
    assert d["source_kind"] == "datalist" and d["source"] == str(path.resolve())
    assert d["splits"]["validation"] == ["patient006"]  # given: used as given
    assert len(d["splits"]["test"]) == 1 and d["splits"]["test"][0] in {f"patient00{n}" for n in range(1, 6)}
    assert_disjoint(d)
    assert {len([e for e in d["pretrain"] if e["subject"] == s]) for s in d["splits"]["train"]} == {2}
    labeled = d["labeled"]  # the labelled pool: training entries with a label (patient005 has none)
    assert labeled and all("label" in e for e in labeled) and "patient005" not in subjects_of(d, "labeled")
    if "patient005" in d["splits"]["train"]:
        assert "patient005" in subjects_of(d, "pretrain")
    assert all(Path(e["label"]).is_file() for e in validation_entries(tmp_path / "out" / "datalist.json", 1, 0))


def test_a_label_for_some_entries_only_is_refused_where_training_needs_it(phantom, tmp_path):
    path = datalist_json(phantom, tmp_path / "mine")
    content = json.loads(path.read_text())
    del content["validation"][0]["label"]  # patient006's ED frame loses its label, its ES frame keeps it
    d = prepare(write_json(path, content), tmp_path / "out")
    assert sum("label" in e for e in d["validation"]) == 1 and len(d["validation"]) == 2
    with pytest.raises(DataError, match=r"train.yaml needs labels: validation entry \(subject 'patient006', frame 1"):
        validation_entries(tmp_path / "out" / "datalist.json", 1, 0)
    assert load_datalist(tmp_path / "out" / "datalist.json", "validation")  # pretraining reads images only


# ---------------------------------------------------------------------------------------------- bad input


def _missing_entry(phantom: Path, root: Path) -> tuple[Path, str]:
    path = datalist_json(phantom, root)
    content = json.loads(path.read_text())
    content["training"][2]["image"] = "img/not_there.nii.gz"
    return write_json(path, content), r"not_there.nii.gz: image of training entry 3 of dataset.json not found"


def _twice_in_one_pool(phantom: Path, root: Path) -> tuple[Path, str]:
    path = datalist_json(phantom, root)
    content = json.loads(path.read_text())
    content["training"].append(dict(content["training"][0]))
    return write_json(path, content), r"patient001_frame01.nii.gz: listed twice in dataset.json: as image of training"


def _twice_across_pools(phantom: Path, root: Path) -> tuple[Path, str]:
    path = datalist_json(phantom, root)
    content = json.loads(path.read_text())
    content["test"] = [content["training"][0]["image"]]
    return write_json(path, content), r"listed twice in dataset.json: as image of training entry 1.*test entry 1"


def _mixed_3d_4d(phantom: Path, root: Path) -> tuple[Path, str]:
    source = plain_folder(phantom, root)
    folder = root / "site_b" / "case 0" / "visit_scans"
    stack(sorted(folder.glob("scan*.nii.gz")), folder / "cine.nii.gz")
    return source, r"case 0/visit_scans: holds 3D volumes \(scan0.nii.gz\) and 4D files \(cine.nii.gz\)"


def _empty_folder(phantom: Path, root: Path) -> tuple[Path, str]:
    (root / "nothing" / "here").mkdir(parents=True)
    return root, r"no NIfTI volumes \(.nii, .nii.gz\) in this folder or below"


def _not_decathlon(phantom: Path, root: Path) -> tuple[Path, str]:
    return write_json(root / "list.json", [{"image": "a.nii.gz"}]), "list.json: not a datalist in the Decathlon form"


def _no_image_key(phantom: Path, root: Path) -> tuple[Path, str]:
    return write_json(root / "list.json", {"training": [{"img": "a.nii.gz"}]}), "training entry 1 has no 'image' path"


def _null_label(phantom: Path, root: Path) -> tuple[Path, str]:
    path = write_json(root / "list.json", {"training": [{"image": "a.nii.gz", "label": None}]})
    return path, "list.json: training entry 1: 'label' is not a path"


BAD = {
    "missing_entry": _missing_entry,
    "twice_in_one_pool": _twice_in_one_pool,
    "twice_across_pools": _twice_across_pools,
    "mixed_3d_4d": _mixed_3d_4d,
    "empty_folder": _empty_folder,
    "not_decathlon": _not_decathlon,
    "no_image_key": _no_image_key,
    "null_label": _null_label,
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_sources_are_named_and_nothing_is_written(phantom, tmp_path, case):
    source, message = BAD[case](phantom, tmp_path / "src")
    out = tmp_path / "prepared" / "out"
    with pytest.raises(DataError, match=message):
        prepare(source, out)
    assert not out.exists() and (not out.parent.exists() or not any(out.parent.iterdir()))


# ---------------------------------------------------------------------------------------------- pretraining


def test_pretraining_runs_from_a_plain_folder_through_the_config(phantom, tmp_path):
    source = plain_folder(phantom, tmp_path / "my scans", count=3)  # one subject each to train, validate, test
    overrides = tiny_settings(tmp_path) | {"num_workers": 0, "epochs": 1, "dataset_dir": str(source)}
    workflow = ConfigWorkflow(
        config_file=str(CONFIGS / "pretrain.yaml"),
        workflow_type=None,
        run_id="pretrain",
        output_dir=str(tmp_path / "out"),
        **overrides,
    )
    workflow.initialize()
    workflow.run()
    assert (tmp_path / "out" / "pix2rep_backbone.pt").is_file()
    prepared = json.loads((tmp_path / "cache" / "prepared" / "my scans" / "datalist.json").read_text())
    assert prepared["source_kind"] == "folder" and prepared["pretrain"]


def test_a_datalist_given_to_a_config_replaces_dataset_dir(phantom, tmp_path):
    path = datalist_json(phantom, tmp_path / "mine")
    overrides = tiny_settings(tmp_path) | {"datalist": str(path)}
    workflow = ConfigWorkflow(config_file=str(CONFIGS / "train.yaml"), workflow_type=None, **overrides)
    prepared = Path(workflow.parser.get_parsed_content("prepared_datalist"))
    assert prepared == tmp_path / "cache" / "prepared" / "dataset" / "datalist.json"
    assert json.loads(prepared.read_text())["source"] == str(path.resolve())
    assert not (tmp_path / "cache" / "phantom_n10_seed0").exists()  # no phantom made


def test_a_missing_datalist_is_named(tmp_path):
    overrides = tiny_settings(tmp_path) | {"datalist": str(tmp_path / "nowhere.json")}
    workflow = ConfigWorkflow(config_file=str(CONFIGS / "pretrain.yaml"), workflow_type=None, **overrides)
    with pytest.raises(Exception) as info:
        workflow.parser.get_parsed_content("prepared_datalist")
    assert find_in_chain(info.value, DataError, "nowhere.json: datalist file not found")


def test_the_evaluate_config_names_a_test_entry_without_a_label(phantom, tmp_path):
    source = plain_folder(phantom, tmp_path / "scans", count=3)
    parser = parsed_config("evaluate.yaml", tiny_settings(tmp_path) | {"dataset_dir": str(source)})
    with pytest.raises(Exception) as info:
        parser.get_parsed_content("dataset#data")
    assert find_in_chain(info.value, DataError, r"evaluate.yaml needs labels: test entry \(subject 'site_")
