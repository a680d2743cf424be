"""What the fork server of a node's ranks imports once (`job.preload_ranks`, launcher.entry.agent).

A rank spends ~5 s of CPU importing torch, torchmetrics and what they pull in (torchvision,
torch._dynamo, scipy, matplotlib) before it does anything: at 4 ranks a node on few cores, every
attempt's start and every restart waits for it. torchrun's agent starts its ranks from one fork
server (Python's multiprocessing "forkserver": a fresh single-threaded interpreter that forks each
child) that imported these once; a rank then imports only Lightning, launch and the job's code.

Nothing here may start a Python thread or touch a device (a fork copies only the calling thread,
and CUDA cannot be used in a child forked after it was initialised): importing these does neither
(tests/test_preload.py; the idle BLAS pools numpy and scipy start are native and stop around a
fork, as in every DataLoader worker's fork). The server ignores the signals that stop a run
(SLURM's scancel signals every process of the job): only the agent may end it; each rank puts
back the dispositions the server inherited (launcher.runtime.forked) before it installs its own
handlers.
"""

from __future__ import annotations

import gc
import importlib
import signal

STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2)
INHERITED = {signum: signal.getsignal(signum) for signum in STOP_SIGNALS}
for _signum in STOP_SIGNALS:
    signal.signal(_signum, signal.SIG_IGN)

# torch._dynamo: Lightning imports it (1.3 s); torchmetrics: torchvision, scipy, matplotlib if installed
PRELOADED = ("numpy", "torch", "torch._dynamo", "torch.distributed", "torchmetrics")
for _name in PRELOADED:
    try:
        importlib.import_module(_name)
    except Exception:  # noqa: BLE001 - a rank imports it again and reports what is wrong there
        pass

# Everything imported so far lives as long as the server and its ranks: kept out of the collector
# (CPython's advice before a fork), so that no collection in a rank walks it or writes to its
# pages (which a fork shares until written), and the server's own exit skips it (1.1 s -> 0.2 s).
gc.freeze()
