"""Configs of the depth experiment (``--config=experiments/depth/configs/<name>.py``)."""
