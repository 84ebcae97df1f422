"""The bundle's configs agree with each other, parse, and its metadata passes MONAI's check offline."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
from helpers import CONFIGS, REPO, TINY_FEATURES, parsed_config

RUNNABLE = ["pretrain.yaml", "train.yaml", "evaluate.yaml", "inference.yaml"]


def shared_block(text: str) -> list[str]:
    """The lines of configs/common.yaml's settings (comments at its top left out)."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("bundle_root:"))
    return lines[start:]


def top_level_ids(text: str) -> list[str]:
    """The top-level ids of a YAML config, in order, repeats kept (YAML keeps the last of a repeated key silently)."""
    return re.findall(r"^([A-Za-z_+][\w#+]*):", text, re.M)


@pytest.mark.parametrize("name", RUNNABLE)
def test_each_config_holds_the_common_block_verbatim_and_once(name):
    """Each runnable config runs alone, so it holds configs/common.yaml's block (the settings every config shares and
    the BundleSettings built from them) line for line, and defines none of its ids a second time."""
    common = shared_block((CONFIGS / "common.yaml").read_text())
    text = (CONFIGS / name).read_text()
    lines = text.splitlines()
    start = lines.index(common[0])
    assert lines[start : start + len(common)] == common, f"configs/{name} drifted from configs/common.yaml"
    ids = top_level_ids(text)
    for key in top_level_ids("\n".join(common)):
        assert ids.count(key) == 1, f"configs/{name} defines {key} again after the common block"


def dollar_expressions(node, path=""):
    """``(id, expression)`` of every ``$`` expression in a parsed config."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield from dollar_expressions(value, f"{path}#{key}" if path else str(key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from dollar_expressions(value, f"{path}#{index}")
    elif isinstance(node, str) and node.startswith("$"):
        yield path, node


@pytest.mark.parametrize("name", sorted(p.name for p in CONFIGS.glob("*.yaml")))
def test_every_expression_of_the_configs_is_short(name):
    """A ``$`` expression of at most 100 characters: longer logic belongs in the package (e.g. BundleSettings), and
    a long call takes its arguments from a mapping of references (``$start_run(**@run_start)``)."""
    import yaml

    config = yaml.safe_load((CONFIGS / name).read_text())
    expressions = list(dollar_expressions(config))
    assert expressions, f"configs/{name}: no expression found (the walk is broken)"
    long = [f"{key} ({len(value)} characters)" for key, value in expressions if len(value) > 100]
    assert not long, f"configs/{name}: expressions over 100 characters: {long}"


@pytest.mark.parametrize("name", RUNNABLE)
def test_each_config_parses_and_imports_one_name_per_line(name):
    config = parsed_config(name)
    for line in config["imports"]:
        # MONAI 1.6.1 binds only the first name of `$from x import a, b`
        assert "," not in line, f"configs/{name}: one import per line, got {line!r}"
    config.update({"profile": "compact"})
    assert config.get_parsed_content("features") == [16, 16, 32, 64, 128, 32]
    assert str(config.get_parsed_content("device")) in ("cpu", "cuda")


def test_model_zoo_properties_of_the_training_config():
    config = parsed_config("train.yaml")
    for key in [
        "bundle_root",
        "device",
        "dataset_dir",
        "train#trainer",
        "train#trainer#max_epochs",
        "train#dataset",
        "train#dataset#data",
        "train#inferer",
        "validate#dataset#data",
        "network_def",
        "network",
        "run",
        "initialize",
    ]:
        assert key in config, key


def test_metadata_passes_verify_metadata_offline():
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "monai.bundle",
            "verify_metadata",
            "--meta_file",
            "configs/metadata.json",
            "--filepath",
            "docs/metadata_schema.json",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "metadata is verified with no error" in result.stdout + result.stderr


def test_readme_opens_with_the_two_set_up_commands_and_ci_runs_the_second():
    readme = (REPO / "README.md").read_text()
    block = re.search(r"```bash\n(.*?)```", readme, re.S).group(1)
    commands = [line for line in block.splitlines() if line and not line.startswith("#")]
    assert len(commands) == 2
    assert commands[0].endswith("python -m monai.bundle run pretrain --config_file configs/pretrain.yaml")
    assert "pip install" in commands[0] and "torch" not in commands[0]  # torch comes pinned from pyproject
    assert commands[1] in (REPO / ".ci" / "run").read_text()
    assert "torch==2.13.0" in (REPO / "pyproject.toml").read_text()


@pytest.mark.parametrize(
    "name, kind",
    [("pretrain.yaml", "train"), ("train.yaml", "train"), ("inference.yaml", "infer"), ("evaluate.yaml", "infer")],
)
def test_required_properties_of_monai_workflows_are_present(tmp_path, name, kind):
    import torch
    from monai.bundle import ConfigWorkflow
    from monai.networks.nets import BasicUNet

    features = TINY_FEATURES
    ckpt = tmp_path / "model.pt"
    torch.save(BasicUNet(spatial_dims=2, in_channels=1, out_channels=4, features=features).state_dict(), ckpt)
    workflow = ConfigWorkflow(
        config_file=str(CONFIGS / name),
        workflow_type=kind,
        meta_file=str(CONFIGS / "metadata.json"),
        bundle_root=str(tmp_path),
        profile="compact",
        phantom_subjects=10,
        image_size=[48, 48],
        spacing=[4.0, 4.0],
        features=features,
        mode="scratch",
        ckpt_path=str(ckpt),
        projection_hidden=8,
        projection_dim=8,
        batch_size=4,
    )
    workflow.initialize()
    assert workflow.check_properties() == [], f"configs/{name} lacks required {kind} properties"


def test_monai_label_keys_of_the_inference_config():
    config = parsed_config("inference.yaml")
    for key in ["bundle_root", "device", "network_def", "preprocessing", "inferer", "postprocessing"]:
        assert key in config, key


# ---------------------------------------------------------------- the shared settings (pix2rep_bundle/bundle_settings.py)


def test_bundle_settings_name_the_data_folders_by_the_bundle_rules():
    from pix2rep_bundle.bundle_settings import BundleSettings

    default = BundleSettings(bundle_root=".", phantom_subjects=20, data_seed=0)
    assert default.phantom_dir == default.dataset_dir == "./cache/phantom_n20_seed0"
    assert default.prepared_dir == "./cache/prepared/phantom_n20_seed0"
    assert default.pretrained_ckpt == "./models/pretrain/pix2rep_backbone.pt"
    acdc = BundleSettings(bundle_root="/b", dataset_dir="/data/ACDC/training/", subject_split="chaitanya2020")
    assert (acdc.dataset_dir, acdc.prepared_dir) == ("/data/ACDC/training/", "/b/cache/prepared/training_chaitanya2020")
    listed = BundleSettings(bundle_root="/b", phantom_subjects=5, data_seed=3, datalist="/x/my.list.json")
    assert listed.dataset_dir == "/b/cache/phantom_n5_seed3"  # recorded as before; the datalist is the source
    assert listed.prepared_dir == "/b/cache/prepared/my.list"
    given = BundleSettings(phantom_dir="/p", prepared_dir="/q", pretrained_dir="/r")
    assert (given.dataset_dir, given.prepared_dir, given.pretrained_ckpt) == ("/p", "/q", "/r/pix2rep_backbone.pt")


def test_profile_value_is_a_copy_and_an_unknown_profile_lists_the_known_ones():
    from pix2rep_bundle.bundle_settings import PROFILES, profile_value

    size = profile_value("compact", "image_size")
    size[0] = 1
    assert PROFILES["compact"]["image_size"] == [128, 128]
    with pytest.raises(ValueError, match=r"unknown profile 'large': choose one of \['compact', 'paper'\]"):
        profile_value("large", "features")


@pytest.mark.parametrize("name", RUNNABLE)
def test_the_shared_overrides_reach_the_settings_object(tmp_path, name):
    """Each shared setting stays an id of every config (check_overrides accepts it) and reaches BundleSettings."""
    from pix2rep_bundle.overrides import unknown_id

    overrides = {
        "bundle_root": str(tmp_path),
        "profile": "paper",
        "image_size": [64, 64],
        "phantom_subjects": 4,
        "data_seed": 2,
        "dataset_dir": str(tmp_path / "scans"),
        "subject_split": "semi_70_10_20",
        "pretrained_dir": str(tmp_path / "backbones"),
    }
    config = parsed_config(name, overrides)
    raw = config.get()
    for key in [*overrides, "device", "seed", "spacing", "features", "datalist", "phantom_dir", "prepared_dir"]:
        assert unknown_id(raw, key) is None, f"configs/{name}: --{key} is no longer a setting"
    settings = config.get_parsed_content("settings")
    assert (settings.image_size, settings.spacing) == ([64, 64], [1.5, 1.5])  # given, and the paper profile's
    assert config.get_parsed_content("features") == [128, 256, 512, 1024, 2048, 1024]
    assert settings.phantom_dir == str(tmp_path / "cache" / "phantom_n4_seed2")
    assert settings.prepared_dir == str(tmp_path / "cache" / "prepared" / "scans_semi_70_10_20")
    assert config.get_parsed_content("pretrained_ckpt") == str(tmp_path / "backbones" / "pix2rep_backbone.pt")
