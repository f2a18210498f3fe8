"""Multi-task configs: ``--config=experiments/multitask/configs/<name>.py``."""
