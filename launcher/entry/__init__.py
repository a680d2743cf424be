"""The processes launch itself starts on the machines that run a job (torch-free until a rank starts).

- `supervisor`: a local run's detached supervisor (runs the torchrun agents, restarts after a
  preemption, records the outcome).
- `slurm_hooks`: called by the batch script around srun (records start and end).
- `slurm_task`: what submitit runs in every SLURM task (a rank, or a node's torchrun agent).
- `agent`: a node's torchrun agent (torchrun's own main; a failed rank's ChildFailedError traceback
  becomes one line).
"""
