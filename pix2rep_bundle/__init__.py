"""Pix2Rep: dense self-supervised pretraining for few-shot medical image segmentation (MONAI bundle)."""

__version__ = "0.14.0"  # the bundle version, as in configs/metadata.json
