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


@pytest.mark.parametrize("name", RUNNABLE)
def test_each_config_starts_with_the_common_block_verbatim(name):
    common = shared_block((CONFIGS / "common.yaml").read_text())
    text = (CONFIGS / name).read_text().splitlines()
    start = text.index(common[0])
    assert text[start : start + len(common)] == common, f"configs/{name} drifted from configs/common.yaml"


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
