#!/bin/bash
# launch: job digits, run RUN, profile gpu8-apptainer, torchrun mode
# 2 node(s) x 8 rank(s), 8 GPU(s) per node (nccl)
# user code: imported from $LAUNCH_RUN_DIR/code, the snapshot taken at submit (launch resume --code current replaces it)
#SBATCH --job-name=digits
#SBATCH --partition=gpu
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=8
#SBATCH --signal=USR1@120
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output=/shared/runs/mnist/RUN/submitit/%j_0_log.out

cd /home/me/project
export LAUNCH_BACKEND=slurm
export LAUNCH_MODE=torchrun
export LAUNCH_PRELOAD_RANKS=auto
export LAUNCH_RUN_DIR=/shared/runs/mnist/RUN
export MALLOC_MMAP_THRESHOLD_=33554432
export MALLOC_TRIM_THRESHOLD_=1073741824
export OMP_NUM_THREADS=1
export PYTHONUNBUFFERED=1
export SUBMITIT_EXECUTOR=slurm
# the rendezvous host: the first node of this allocation
LAUNCH_RDZV_HOST=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
export LAUNCH_RDZV_ENDPOINT="$LAUNCH_RDZV_HOST:$(( 29400 + (SLURM_JOB_ID + 97 * ${SLURM_RESTART_COUNT:-0}) % 1000 ))"
# each node's task runs: python -m launcher.entry.agent --nnodes 2 --nproc-per-node 8 --rdzv-backend c10d --rdzv-endpoint '$LAUNCH_RDZV_ENDPOINT' --rdzv-id RUN --rdzv-conf is_host=<1 on the first node, else 0> --max-restarts 0 -m launcher.runtime /shared/runs/mnist/RUN
# the ranks run in a container (apptainer); the hooks around srun run on the host

/home/me/venv/bin/python -m launcher.entry.slurm_hooks started /shared/runs/mnist/RUN
while :; do
    srun --unbuffered --kill-on-bad-exit=1 --output /shared/runs/mnist/RUN/submitit/%j_%t_log.out --nodes=2 --cpus-per-task=8 --ntasks-per-node 1 apptainer exec --nv --bind /home/me/project:/home/me/project,/shared/runs/mnist/RUN:/shared/runs/mnist/RUN,/datasets:/data:ro,/scratch /images/train.sif python -u -m submitit.core._submit /shared/runs/mnist/RUN/submitit &
    srun_pid=$!
    # stops the step if a rank makes no progress for job.stall_timeout_s (120 s)
    /home/me/venv/bin/python -m launcher.entry.watch /shared/runs/mnist/RUN "$srun_pid"
    wait "$srun_pid"
    rc=$?
    # records the attempt's end (and requeues a preempted job); exits 3 to restart the run
    # as a new step of this allocation (job.restart_on, every node still answering)
    /home/me/venv/bin/python -m launcher.entry.slurm_hooks ended /shared/runs/mnist/RUN "$rc"
    [ $? -eq 3 ] || break
    /home/me/venv/bin/python -m launcher.entry.slurm_hooks started /shared/runs/mnist/RUN
done
exit "$rc"
