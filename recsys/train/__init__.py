"""The training loop, evaluation, checkpoints and the artifact export around a sharded model."""
