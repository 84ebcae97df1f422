"""Pix2Rep: dense self-supervised pretraining for few-shot medical image segmentation (MONAI bundle)."""

__version__ = "0.2.0"
