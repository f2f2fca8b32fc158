"""The one training loop, its losses, checkpoints and validation."""
