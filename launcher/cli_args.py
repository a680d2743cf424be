"""`launch`'s arguments: one subparser per command. `args.command` names the
`cmd_*` function of launcher/cli.py that runs it, so this module imports nothing of launch."""

from __future__ import annotations

import argparse


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="launch", description="Run PyTorch Lightning jobs locally or on SLURM.")
    parser.add_argument("--runs-dir", help="where run directories live (default: ./runs, or the profile's runs_dir)")
    parser.add_argument("--cluster-file", help="cluster profiles (default: $LAUNCH_CLUSTER_FILE, ./cluster.toml)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def job_args(p: argparse.ArgumentParser, smoke: bool = False) -> None:
        p.add_argument("job", help="job file (TOML), or a Lightning script (.py; its own arguments after --)")
        if not smoke:
            p.add_argument("--cluster", help="profile in cluster.toml (default: local)")
            p.add_argument("--nodes", type=int, help="nodes (local: simulated nodes on this machine)")
        p.add_argument("--gpus", type=int, help="GPUs per node (0: CPU processes)")
        p.add_argument("--procs", type=int, help="processes per node for CPU runs (default 2)")
        p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override any job key, e.g. trainer.max_epochs=3")
        p.add_argument("--runs-dir", default=argparse.SUPPRESS, help="where run directories live")
        p.add_argument("--cluster-file", default=argparse.SUPPRESS, help="cluster profiles (default: ./cluster.toml)")

    p = sub.add_parser("submit", help="start a run (returns at once unless --follow)")
    job_args(p)
    p.add_argument("--follow", action="store_true", help="stream the run's output until it ends; exit 0 only if it completed")
    p.add_argument("--dry-run", action="store_true", help="validate and print what would run; start nothing")
    p.add_argument("--here", action="store_true",
                   help="inside salloc or an interactive job: run as srun steps of this allocation (SLURM profile)")
    p.add_argument("--after", action="append", metavar="RUN[:ok|:any]",
                   help="start only after RUN completed (:ok, the default) or ended in any way (:any); repeatable")

    p = sub.add_parser("render", help="print exactly what submit would run (or what a run directory ran)")
    job_args(p)

    p = sub.add_parser("smoke", help="a few batches of train/val/test with local torchrun")
    job_args(p, smoke=True)
    p.set_defaults(procs=None)

    p = sub.add_parser("verify", help="certify that a job resumes bit for bit (preempted, killed) or say what breaks it")
    job_args(p)
    p.add_argument("--preemptions", type=int, default=2, help="mid-epoch preemptions of the preempted run (default 2)")
    p.add_argument("--epochs", type=int, default=2, help="epochs of each run (default 2)")
    p.add_argument("--batches", type=int, default=8, help="training batches an epoch (default 8)")
    p.add_argument("--every", type=int, default=3, help="periodic checkpoint every N steps, for the killed run (default 3)")
    p.add_argument("--seed", type=int, default=0, help="draws the stop and kill steps (default 0)")

    p = sub.add_parser("tune", help="find a learning rate and/or batch size (one device); writes a tuned job file")
    job_args(p)
    p.add_argument("--lr", action="store_true", help="the learning-rate finder only (default: both)")
    p.add_argument("--batch-size", action="store_true", help="the batch-size finder only (default: both)")
    p.add_argument("--max-trials", type=int, default=6, help="batch-size doublings to try (default 6)")
    p.add_argument("--out", help="also write the tuned job file here")

    p = sub.add_parser("sweep", help="one run per point of a grid or random search, then a table of results")
    job_args(p)
    p.add_argument("--grid", action="append", metavar="KEY=V1,V2", help="values to try for KEY (repeat for a grid)")
    p.add_argument("--random", action="append", metavar="KEY=LOW:HIGH[:log]", help="draw KEY uniformly (or log-uniformly)")
    p.add_argument("--count", type=int, help="random points to draw (per grid point)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random draws")
    p.add_argument("--metric", help="rank by this final metric (default: checkpoint.monitor, else val_loss)")
    p.add_argument("--mode", choices=("min", "max"), help="better is lower or higher (default: checkpoint.mode)")
    p.add_argument("--no-array", action="store_true", help="SLURM: one job per point instead of one job array")

    p = sub.add_parser("runs", help="list runs")
    p.add_argument("--runs-dir", default=argparse.SUPPRESS)

    p = sub.add_parser("ui", help="a local web page over the runs directory (attempts, phases, metrics, errors)")
    p.add_argument("--runs-dir", default=argparse.SUPPRESS)
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: reach it by an SSH tunnel)")
    p.add_argument("--port", type=int, default=8765, help="port (default 8765)")
    p.add_argument("--token", help="a secret every request must carry (required to bind other than loopback)")

    p = sub.add_parser("report", help="a run's page as one self-contained HTML file (opens offline)")
    p.add_argument("run", help="run directory, or run id under the runs dir")
    p.add_argument("--runs-dir", default=argparse.SUPPRESS)
    p.add_argument("--out", help="the file to write (default: report.html in the run directory)")

    for name, text in (("status", "a run's state and progress"),
                       ("logs", "a run's output"),
                       ("cancel", "stop a run (it saves a checkpoint first)"),
                       ("preempt", "send the preemption signal now, as the cluster would"),
                       ("resume", "continue a failed or cancelled run from its newest checkpoint"),
                       ("predict", "predictions of a run's checkpoint, written to the run directory"),
                       ("export", "one single-file checkpoint ({'state_dict': ...}, plain keys) of a run, any strategy")):
        p = sub.add_parser(name, help=text)
        p.add_argument("run", help="run directory, or run id under the runs dir")
        p.add_argument("--runs-dir", default=argparse.SUPPRESS)
        if name == "status":
            p.add_argument("--json", action="store_true", help="machine-readable")
        if name == "logs":
            p.add_argument("--rank", type=int, help="that rank's full log (default: the run's console)")
        if name in ("logs", "resume"):
            p.add_argument("--follow", action="store_true", help="keep printing until the run ends")
        if name == "resume":
            p.add_argument("--nodes", type=int, help="resume on this many nodes (default: the run's)")
            p.add_argument("--procs", type=int, help="CPU processes per node (default: the run's)")
            p.add_argument("--gpus", type=int, help="GPUs per node, for a GPU run (default: the run's)")
            p.add_argument("--code", choices=("snapshot", "current"), default="snapshot",
                           help="snapshot (default): the code as submitted; current: snapshot the submit directory's "
                                "code now and train with it from here on (recorded in events.jsonl)")
        if name in ("predict", "export"):
            p.add_argument("--ckpt", default="best", help="best (default: checkpoint.monitor's best), last, or a path")
        if name == "export":
            p.add_argument("--out", required=True, help="the file to write")
    return parser
