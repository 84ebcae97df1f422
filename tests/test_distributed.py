"""configs/multi_gpu_pretrain.yaml and multi_gpu_train.yaml: two CPU processes (gloo) run a few iterations with DDP;
afterwards both hold identical weights, and only rank 0 has written files."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from helpers import CONFIGS, REPO, tiny_settings

# a test-only layer over the two configs: one output folder per rank, and each rank's final weights
PER_RANK = """
output_dir: "$os.path.join('{root}', 'rank' + os.environ['RANK'])"
finalize:
  - "$torch.save(@network.module.state_dict(), os.path.join('{root}', 'weights_rank' + os.environ['RANK'] + '.pt'))"
  - "$@tensorboard_writer.close()"
  - "$dist.barrier()"
  - "$dist.destroy_process_group()"
"""


PRETRAIN_FILES = {"checkpoint.pt", "pix2rep_backbone.pt", "run_info.json", "tensorboard"}


@pytest.mark.parametrize(
    "name, run_id, expected, extra",
    [
        ("pretrain", "pretrain", PRETRAIN_FILES, {}),
        ("pretrain", "pretrain", PRETRAIN_FILES, {"augment_on_device": True, "gather_negatives": True}),
        ("train", "run", {"model.pt", "train_state", "run_info.json", "tensorboard"}, {}),
    ],
    ids=["pretrain", "pretrain_fast_path_gathered_negatives", "train"],
)
def test_two_gloo_processes_train_identical_weights_and_only_rank_0_writes(tmp_path, name, run_id, expected, extra):
    layer = tmp_path / "per_rank.yaml"
    layer.write_text(PER_RANK.format(root=tmp_path))
    configs = str([str(CONFIGS / f"{name}.yaml"), str(CONFIGS / f"multi_gpu_{name}.yaml"), str(layer)])
    args = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "monai.bundle",
        "run",
        run_id,
        "--config_file",
        configs,
    ]
    settings = tiny_settings(tmp_path / "bundle") | {"epochs": 1, "num_workers": 0} | extra
    if name == "train":  # pretraining's projection sizes are no settings of train.yaml: its command line refuses them
        settings = {k: v for k, v in settings.items() if not k.startswith("projection_")}
        settings |= {"mode": "scratch", "iterations_per_epoch": 3}
    for key, value in settings.items():
        args += [f"--{key}", str(value).replace(" ", "")]
    done = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    first, second = (torch.load(tmp_path / f"weights_rank{r}.pt", weights_only=True) for r in (0, 1))
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first), "DDP ranks diverged"
    checkpoint = tmp_path / "rank0" / ("checkpoint.pt" if name == "pretrain" else "train_state/checkpoint.pt")
    saved = torch.load(checkpoint, weights_only=True)["network"]
    assert all(torch.equal(saved[f"module.{k}"], v) for k, v in first.items()), "rank 0 saved the final weights"
    assert expected <= {p.name for p in (tmp_path / "rank0").iterdir()}
    rank1 = tmp_path / "rank1"
    assert not rank1.exists() or list(rank1.iterdir()) == [], "only rank 0 writes files"
    if name == "pretrain":
        assert "on 2 processes" in done.stdout + done.stderr
