#!/usr/bin/env bash
# A real four-node SLURM cluster on this machine, for the `slurm` tests.
#   tests/slurm/cluster.sh up     install slurm-wlm + munge if missing, start munged, slurmctld and
#                                 four slurmd (n1..n4), wait until every node is idle. Partition
#                                 debug (the default) has n1 and n2; partition wide has all four
#   tests/slurm/cluster.sh down   stop the daemons
#   tests/slurm/cluster.sh status sinfo
# Needs root on Debian 12. State, spool, pid and log files live in $LAUNCH_SLURM_DIR
# (default /tmp/launch-slurm); the config is written to /etc/slurm/slurm.conf so every SLURM
# client (and launch) finds it without extra environment.
set -euo pipefail

DIR=${LAUNCH_SLURM_DIR:-/tmp/launch-slurm}
CONF=/etc/slurm/slurm.conf
HOST=$(hostname)
CPUS_PER_NODE=${LAUNCH_SLURM_CPUS:-2}
# SLURM holds a requeued job for cred_expire + 1 s (its BeginTime) unless the job's owner moves it:
# SLURM's default, 120, as on a real cluster (launch's end hook shortens the hold to 2 s;
# cluster.shorten_requeue_hold = false keeps it, which bench/requeue_latency.py measures).
CRED_EXPIRE=${LAUNCH_SLURM_CRED_EXPIRE:-120}
NODES="n1 n2 n3 n4"  # partition debug: n1, n2 (most tests); partition wide: all four (world size 4)

log() { echo "[cluster.sh] $*" >&2; }

install() {
    if command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v munged >/dev/null; then
        return
    fi
    log "installing slurm-wlm and munge (apt)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq slurm-wlm munge >/dev/null
}

write_conf() {
    mkdir -p "$DIR/state" "$DIR/spool" /etc/slurm
    cat >"$CONF" <<CONF
ClusterName=launchtest
SlurmctldHost=$HOST(127.0.0.1)
SlurmUser=root
AuthType=auth/munge
AuthInfo=cred_expire=$CRED_EXPIRE
SlurmctldPort=6817
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool/%n
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd-%n.pid
SlurmctldLogFile=$DIR/slurmctld.log
SlurmdLogFile=$DIR/slurmd-%n.log
SlurmdParameters=config_overrides
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
JobRequeue=1
ReturnToService=2
KillWait=5
MinJobAge=3600
SchedulerParameters=bf_interval=1,sched_interval=2
NodeName=n1 NodeHostname=$HOST NodeAddr=127.0.0.1 Port=6821 CPUs=$CPUS_PER_NODE RealMemory=4000 State=UNKNOWN
NodeName=n2 NodeHostname=$HOST NodeAddr=127.0.0.1 Port=6822 CPUs=$CPUS_PER_NODE RealMemory=4000 State=UNKNOWN
NodeName=n3 NodeHostname=$HOST NodeAddr=127.0.0.1 Port=6823 CPUs=$CPUS_PER_NODE RealMemory=4000 State=UNKNOWN
NodeName=n4 NodeHostname=$HOST NodeAddr=127.0.0.1 Port=6824 CPUs=$CPUS_PER_NODE RealMemory=4000 State=UNKNOWN
PartitionName=debug Nodes=n1,n2 Default=YES MaxTime=02:00:00 State=UP
PartitionName=wide Nodes=n1,n2,n3,n4 MaxTime=02:00:00 State=UP
CONF
    grep -qE '^127\.0\.0\.1[[:space:]].*\bn4\b' /etc/hosts || echo "127.0.0.1 n1 n2 n3 n4" >>/etc/hosts
}

start_munge() {
    if munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then return; fi
    [ -s /etc/munge/munge.key ] || { dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key 2>/dev/null; }
    chown munge:munge /etc/munge/munge.key && chmod 400 /etc/munge/munge.key
    mkdir -p /run/munge /var/log/munge /var/lib/munge
    chown munge:munge /run/munge /var/log/munge /var/lib/munge
    runuser -u munge -- /usr/sbin/munged
    for _ in $(seq 50); do munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && return; sleep 0.1; done
    log "munged did not come up"; exit 1
}

up() {
    install
    write_conf
    start_munge
    down_daemons
    rm -rf "$DIR/state" "$DIR/spool" && mkdir -p "$DIR/state" "$DIR/spool"  # a clean cluster: no recovered jobs
    slurmctld -c
    for node in $NODES; do slurmd -N "$node"; done
    for _ in $(seq 120); do
        states=$(sinfo -h -N -o '%N %T' 2>/dev/null | sort -u || true)
        if [ "$(echo "$states" | grep -c ' idle$' || true)" = "$(echo $NODES | wc -w)" ]; then
            log "up: $(echo $states)"
            return
        fi
        sleep 0.5
    done
    log "nodes did not become idle: $states"
    tail -n 20 "$DIR"/*.log >&2 || true
    exit 1
}

down_daemons() {
    # No job survives into the next cluster. Only a running controller is asked: without one each
    # scancel retries its connection for 18 s.
    if pgrep -x slurmctld >/dev/null; then
        scancel --full --signal=KILL --user=root 2>/dev/null || true
        scancel --user=root 2>/dev/null || true
    fi
    for f in "$DIR"/slurmd-n*.pid "$DIR"/slurmctld.pid; do
        [ -f "$f" ] && kill "$(cat "$f")" 2>/dev/null || true
    done
    pkill -x slurmd 2>/dev/null || true
    pkill -x slurmctld 2>/dev/null || true
    for _ in $(seq 50); do
        pgrep -x slurmd >/dev/null || pgrep -x slurmctld >/dev/null || break
        sleep 0.1
    done
    pkill -9 -x slurmd 2>/dev/null || true
    pkill -9 -x slurmctld 2>/dev/null || true
    pkill -9 -x slurmstepd 2>/dev/null || true
}

case "${1:-}" in
    up) up ;;
    down) down_daemons; log "down" ;;
    status) sinfo ;;
    *) echo "usage: $0 up|down|status" >&2; exit 2 ;;
esac
