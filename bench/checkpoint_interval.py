"""The periodic checkpoint's interval: a fixed 30 minutes vs `checkpoint.every_n_minutes = "auto"`.

    python bench/checkpoint_interval.py [--save-s 0.2,2,20] [--nodes 1,16,128,1024] [--node-mtbf-h 1000]
                                        [--restart-s 120]

For each save cost (what a save blocks training: launch's console and `launch status` give a run's
own) and node count, the expected goodput (the share of the allocation spent on training that is
kept) with a checkpoint every 30 minutes and with the auto interval (launcher/checkpoint_interval.py,
the code the ranks run): 1 - save/T - T/(2 MTBF) - restart/MTBF, MTBF = node MTBF / nodes. The
restart cost (requeue, start-up, restore) is the same for both. Prints the table and, last, the
ratio of goodputs at the largest configuration. Arithmetic only: no run is started.
"""

from __future__ import annotations

import argparse

from launcher.checkpoint_interval import AutoInterval, expected_loss


def goodput(every_s: float, save_s: float, mtbf_s: float, restart_s: float) -> float:
    return 1.0 - expected_loss(every_s, save_s, mtbf_s) - restart_s / mtbf_s


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--save-s", default="0.2,2,20")
    parser.add_argument("--nodes", default="1,16,128,1024")
    parser.add_argument("--node-mtbf-h", type=float, default=1000.0)
    parser.add_argument("--restart-s", type=float, default=120.0)
    args = parser.parse_args()
    print(f"node MTBF {args.node_mtbf_h:g} h, restart {args.restart_s:g} s")
    print(f"{'save s':>7} {'nodes':>6} {'run MTBF h':>10} {'auto min':>9} {'goodput 30 min':>15} {'goodput auto':>13}")
    ratio = 1.0
    for save in (float(s) for s in args.save_s.split(",")):
        for nodes in (int(n) for n in args.nodes.split(",")):
            auto = AutoInterval(args.node_mtbf_h, nodes)
            every = auto.seconds(save)
            fixed = goodput(1800.0, save, auto.mtbf_s, args.restart_s)
            chosen = goodput(every, save, auto.mtbf_s, args.restart_s)
            ratio = chosen / fixed
            print(f"{save:7.2f} {nodes:6d} {auto.mtbf_s / 3600:10.2f} {every / 60:9.1f} {fixed:15.4f} {chosen:13.4f}")
    print(f"goodput auto / 30 min at the last row: {ratio:.3f}")


if __name__ == "__main__":
    main()
