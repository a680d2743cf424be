#!/usr/bin/env bash
# launch: job digits, run RUN, local backend
# 1 node(s) x 4 process(es), 4 GPU(s) per node (nccl)
# user code: imported from $LAUNCH_RUN_DIR/code, the snapshot taken at submit (launch resume --code current replaces it)
cd /work
env LAUNCH_BACKEND=local LAUNCH_MODE=torchrun LAUNCH_PRELOAD_RANKS=auto LAUNCH_RUN_DIR=/runs/digits/RUN MALLOC_MMAP_THRESHOLD_=33554432 MALLOC_TRIM_THRESHOLD_=1073741824 NCCL_DEBUG=WARN OMP_NUM_THREADS=1 PYTHONUNBUFFERED=1 python -m launcher.entry.agent --nnodes 1 --nproc-per-node 4 --rdzv-backend c10d --rdzv-endpoint 127.0.0.1:29500 --rdzv-id RUN --max-restarts 0 -m launcher.runtime /runs/digits/RUN
