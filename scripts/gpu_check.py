"""The GPU check, one command for the day a CUDA machine is at hand (under 10 minutes on an H100/H200-class GPU):

    python scripts/gpu_check.py [--output_dir /tmp/pix2rep_gpu_check]

1. pretraining throughput at 192 x 192, batch 64, paper-scale network (``scripts/benchmark.py``): plain, fast, and
   fast + ``torch.compile``, each through the config's own trainer and a hand-written loop, with achieved TFLOP/s
   and peak GPU memory;
2. one epoch of paper-profile pretraining on the phantom through ``python -m monai.bundle run pretrain`` with the
   fast switches (its own log: pairs/s per epoch, validation loss), timed.

On a machine without CUDA it stops at once with exit code 2 and says so. Figures are printed, nothing is asserted.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import fire
import torch

BUNDLE = Path(__file__).resolve().parents[1]


def main(output_dir: str = "/tmp/pix2rep_gpu_check", steps: int = 20, warmup: int = 3, epoch: bool = True) -> None:
    """Run the GPU check; ``--epoch false`` skips the one-epoch pretraining."""
    if not torch.cuda.is_available():
        print(
            "gpu_check: no CUDA device is available to torch "
            f"(torch {torch.__version__}, CUDA build: {torch.version.cuda or 'none'}); run it on a GPU machine "
            "with a CUDA build of torch (README, 'Installing PyTorch for a GPU')",
            file=sys.stderr,
        )
        raise SystemExit(2)
    import benchmark

    print(
        f"gpu_check: {torch.cuda.get_device_name(0)}, torch {torch.__version__}, CUDA {torch.version.cuda}", flush=True
    )
    common = {
        "device": "cuda",
        "image_size": 192,
        "batch_size": 64,
        "profile": "paper",
        "steps": steps,
        "warmup": warmup,
        "bundle_root": str(BUNDLE),
    }
    print("== plain and fast (192 x 192, batch 64, paper network)", flush=True)
    benchmark.main(**common)
    print("== fast + compile", flush=True)
    benchmark.main(**common, paths="fast", compile=True)
    if not epoch:
        return
    print("== one epoch of paper-profile pretraining on the phantom (fast switches)", flush=True)
    run_dir = os.path.join(output_dir, "pretrain_paper_1_epoch")
    command = [
        sys.executable,
        "-m",
        "monai.bundle",
        "run",
        "pretrain",
        "--config_file",
        "configs/pretrain.yaml",
        "--profile",
        "paper",
        "--epochs",
        "1",
        "--amp",
        "true",
        "--augment_on_device",
        "true",
        "--channels_last",
        "true",
        "--output_dir",
        run_dir,
        "--overwrite",
        "true",
    ]
    print(" ".join(command), flush=True)
    start = time.perf_counter()
    done = subprocess.run(command, cwd=BUNDLE)
    print(
        f"one epoch: exit code {done.returncode}, {time.perf_counter() - start:.0f} s wall (phantom generation and "
        "preparation included on the first run)",
        flush=True,
    )
    if done.returncode != 0:
        raise SystemExit(done.returncode)


if __name__ == "__main__":
    fire.Fire(main)
