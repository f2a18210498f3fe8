"""Segmentation configs: ``--config=experiments/segmentation/configs/<name>.py``."""
