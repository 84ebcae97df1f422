"""The bundle as git ships it (``git archive HEAD``): the Model Zoo's verifier checks, the shipped weights, and the
habits of Zoo users (``monai.bundle.load``, inference straight after cloning).

The Zoo's ``ci/verify_bundle.py`` is not on a package registry, so its checks are re-implemented here with the same
MONAI functions it calls: the necessary and preferred files, version and changelog, ``verify_metadata`` (the schema
the Zoo downloads is ``docs/metadata_schema.json``), ``verify_net_in_out`` and ``ckpt_export`` of
``models/model.pt`` (its ``min`` mode is the first three; ``full`` adds the last two). docs/README.md, "Model Zoo",
says how to run the Zoo's own script on a checkout of model-zoo.
"""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
import tarfile
import warnings
from pathlib import Path

import pytest
import torch
from helpers import REPO, parsed_config

BUNDLE_NAME = "pix2rep_cardiac_mri_segmentation"
MAX_WEIGHTS_MB = 25


@pytest.fixture(scope="module")
def archived(tmp_path_factory) -> Path:
    """The committed bundle (``git archive HEAD``), unpacked at ``<tmp>/models/<bundle name>`` as in a model-zoo
    checkout."""
    if not (REPO / ".git").exists() or shutil.which("git") is None:
        pytest.skip("needs the bundle's git repository")
    archive = subprocess.run(["git", "archive", "--format=tar", "HEAD"], cwd=REPO, capture_output=True, check=True)
    bundle = tmp_path_factory.mktemp("zoo") / "models" / BUNDLE_NAME
    bundle.mkdir(parents=True)
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(bundle, filter="data")
    return bundle


def monai_bundle(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """``python -m monai.bundle <args>`` in ``cwd`` (which, as in the Zoo's CI, puts the bundle's package first)."""
    return subprocess.run(
        [sys.executable, "-m", "monai.bundle", *args], cwd=cwd, capture_output=True, text=True, timeout=600
    )


def test_the_zoo_verifier_min_checks_pass_on_the_archive(archived):
    for name in ("configs/metadata.json", "LICENSE", "models/model.pt"):  # necessary and preferred files
        assert (archived / name).is_file(), f"{name} is not in git archive HEAD"
    assert any((archived / "configs" / f"inference.{s}").is_file() for s in ("json", "yaml", "yml"))
    metadata = json.loads((archived / "configs" / "metadata.json").read_text())
    assert metadata["version"] in metadata["changelog"], "the version needs its changelog entry"
    done = monai_bundle(
        ["verify_metadata", "--meta_file", "configs/metadata.json", "--filepath", "docs/metadata_schema.json"], archived
    )
    assert done.returncode == 0 and "metadata is verified with no error" in done.stdout + done.stderr, done.stderr


def test_the_zoo_verifier_full_checks_pass_on_the_archive(archived, tmp_path):
    """verify_net_in_out and ckpt_export with the default (compact) network, as the Zoo's CPU and GPU CI run them:
    the network does not depend on the device."""
    common = ["--meta_file", "configs/metadata.json", "--config_file", "configs/inference.yaml"]
    common += ["--bundle_root", str(archived)]
    done = monai_bundle(["verify_net_in_out", "network_def", *common], archived)
    assert done.returncode == 0 and "verified with no error" in done.stdout + done.stderr, done.stderr[-3000:]
    ts = tmp_path / "verify_model.ts"
    done = monai_bundle(
        ["ckpt_export", "network_def", "--filepath", str(ts), "--ckpt_file", "models/model.pt", *common], archived
    )
    assert done.returncode == 0 and ts.is_file(), done.stderr[-3000:]
    scripted = torch.jit.load(str(ts))
    image = json.loads((archived / "configs" / "metadata.json").read_text())["network_data_format"]["inputs"]["image"]
    assert scripted(torch.rand(1, image["num_channels"], 128, 128)).shape == (1, 4, 128, 128)


def test_shipped_weights_are_small_and_load_into_the_default_networks(archived):
    from pix2rep_bundle.networks import read_backbone
    from pix2rep_bundle.segmentation import load_segmentation_weights
    from pix2rep_bundle.slice_context import input_channels

    model, backbone = archived / "models" / "model.pt", archived / "models" / "pretrain" / "pix2rep_backbone.pt"
    for path in (model, backbone):
        assert path.stat().st_size < MAX_WEIGHTS_MB * 2**20, f"{path.name}: over {MAX_WEIGHTS_MB} MB"
    parser = parsed_config(archived / "configs" / "inference.yaml", {"bundle_root": str(archived)})
    network = load_segmentation_weights(parser.get_parsed_content("network_def"), str(model), map_location="cpu")
    channels = input_channels(parser.get_parsed_content("slice_context"))  # the slice and its trained neighbours
    assert network(torch.rand(1, channels, 128, 128)).shape == (1, 4, 128, 128)
    assert read_backbone(backbone)["features"] == list(parser.get_parsed_content("features"))


def test_monai_bundle_load_gives_the_network_with_the_shipped_weights(archived):
    """MONAI's loader reads only ``configs/<workflow_type>.json``; the bundle's configs are YAML (MONAI Label would
    take a JSON twin first), so the network definition is passed in: the documented equivalent (docs/README.md)."""
    from monai.bundle import load

    parser = parsed_config(archived / "configs" / "inference.yaml")
    network = load(
        BUNDLE_NAME, bundle_dir=str(archived.parent), model=parser.get_parsed_content("network_def"), device="cpu"
    )
    shipped = torch.load(archived / "models" / "model.pt", weights_only=True)
    assert all(torch.equal(value, shipped[key]) for key, value in network.state_dict().items())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Cannot find the config file ... return state dict instead"
        plain = load(BUNDLE_NAME, bundle_dir=str(archived.parent), workflow_type="inference", device="cpu")
    assert isinstance(plain, dict) and set(plain) == set(shipped)  # without model=: MONAI returns the state dict


def test_inference_straight_after_cloning_segments_the_default_inputs_with_the_shipped_model(archived):
    """``python -m monai.bundle run --config_file configs/inference.yaml`` in the archive, with the default inputs
    (a smaller phantom, for time), then the outputs scored on their own grids: the shipped ACDC model segments the
    synthetic hearts (mean Dice 0.70 on the default 40-subject phantom)."""
    done = monai_bundle(["run", "--config_file", "configs/inference.yaml", "--phantom_subjects", "10"], archived)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "infer: 4 volume(s)" in done.stdout + done.stderr
    scored = subprocess.run(
        [sys.executable, "scripts/score_segmentations.py", "--phantom_subjects", "10"],
        cwd=archived,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert scored.returncode == 0, scored.stderr[-3000:]
    summary = json.loads((archived / "eval" / "native" / "summary.json").read_text())["overall"]
    assert summary["num_volumes"] == 4
    assert summary["dice_mean"]["mean"] > 0.5, summary["dice_mean"]


ZOO_SCHEMA = REPO.parent / "shared" / "zoo" / "meta_schema_20240725.json"  # the Zoo's own schema, where present


def test_one_version_in_the_metadata_the_package_and_its_install():
    from importlib.metadata import version

    import pix2rep_bundle

    metadata = json.loads((REPO / "configs" / "metadata.json").read_text())
    assert metadata["version"] == pix2rep_bundle.__version__, "configs/metadata.json and pix2rep_bundle.__version__"
    assert version("pix2rep-bundle") == pix2rep_bundle.__version__, "reinstall: pip install -e ."
    assert all("\n" not in entry and len(entry) <= 160 for entry in metadata["changelog"].values())


def test_metadata_names_the_weights_licence_and_the_data_they_come_from():
    metadata = json.loads((REPO / "configs" / "metadata.json").read_text())
    assert "CC BY-NC-SA 4.0" in metadata["license"] and "Apache-2.0" in metadata["license"]
    assert "ACDC" in metadata["data_source"] and "semi_70_10_20" in metadata["data_source"]
    assert all(name.startswith("acdc_test_") for name in metadata["eval_metrics"])
    assert "test subjects" in metadata["eval_metrics_description"]


def test_large_files_lists_every_model_file_over_1mb_with_its_md5():
    import hashlib

    import yaml

    listed = {entry["path"]: entry for entry in yaml.safe_load((REPO / "large_files.yml").read_text())["large_files"]}
    large = {
        path.relative_to(REPO).as_posix()
        for path in (REPO / "models").rglob("*")
        if path.is_file() and path.stat().st_size > 1024 * 1024
    }
    assert large <= set(listed), f"files over 1 MB missing from large_files.yml: {sorted(large - set(listed))}"
    for path, entry in listed.items():
        assert entry["hash_type"] == "md5" and set(entry) == {"path", "url", "hash_val", "hash_type"}
        digest = hashlib.md5((REPO / path).read_bytes()).hexdigest()
        assert entry["hash_val"] == digest, f"{path}: md5 {digest}, large_files.yml says {entry['hash_val']}"


@pytest.mark.skipif(not ZOO_SCHEMA.is_file(), reason="the Zoo's metadata schema is not beside the project")
def test_metadata_verifies_against_the_zoo_schema(tmp_path):
    done = monai_bundle(
        ["verify_metadata", "--meta_file", "configs/metadata.json", "--filepath", str(ZOO_SCHEMA)], REPO
    )
    assert done.returncode == 0 and "metadata is verified with no error" in done.stdout + done.stderr, done.stderr
