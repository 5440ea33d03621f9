"""The training loop on accelerate: setup, step plans, the loss, frozen-state caches, checkpoints and run folders."""
