"""What runs inside every rank of a job: `python -m launcher.runtime RUN_DIR` (torchrun or srun)."""
