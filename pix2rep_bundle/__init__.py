"""Pix2Rep: dense self-supervised pretraining for few-shot medical image segmentation (MONAI bundle)."""

__version__ = "0.12.1"  # the bundle version, as in configs/metadata.json
