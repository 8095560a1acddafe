#!/usr/bin/env bash
# A single-node SLURM cluster on this machine, for CI and for trying the slurm executor by hand.
#
#   scripts/slurm-local.sh up     install slurm-wlm and munge if missing (Debian/Ubuntu, as root),
#                                 write slurm.conf for this machine, start munged, slurmctld and
#                                 slurmd, and wait until `sinfo` shows the node idle
#   scripts/slurm-local.sh down   stop the three daemons
#
# No cgroups and no accounting: processes are tracked by /proc (proctrack/linuxproc), so it works
# in containers; `sacct` is not available and reidbench does not need it.
set -euo pipefail

CONF_DIR=/etc/slurm
PARTITION=${SLURM_LOCAL_PARTITION:-debug}

say() { echo "slurm-local: $*"; }

install() {
    if command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v munged >/dev/null; then
        return
    fi
    [ "$(id -u)" = 0 ] || { say "slurm-wlm and munge are missing; run this script as root to install them"; exit 1; }
    say "installing slurm-wlm and munge"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq slurm-wlm munge >/dev/null
}

write_conf() {
    local host cpus mem_mb
    host=$(hostname -s)
    cpus=$(nproc --all)
    # Leave 1 GiB to the system; slurmd refuses a node that claims more memory than it has.
    mem_mb=$(( $(awk '/MemTotal/ {print int($2 / 1024)}' /proc/meminfo) - 1024 ))
    mkdir -p "$CONF_DIR" /var/spool/slurmctld /var/spool/slurmd /var/log/slurm /run/slurm
    cat > "$CONF_DIR/slurm.conf" <<CONF
# Written by reidbench scripts/slurm-local.sh: one node, this machine.
ClusterName=reidbench
SlurmctldHost=$host
SlurmUser=root
AuthType=auth/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SchedulerType=sched/backfill
# Look at the queue often: requeued jobs and array tasks start within seconds.
SchedulerParameters=bf_interval=1,sched_interval=2
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=$(( mem_mb / cpus ))
ReturnToService=2
KillWait=5
# A requeued job waits this long before it may start again (default 120 s): short, for tests.
AuthInfo=cred_expire=10
MinJobAge=600
MaxArraySize=1001
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurm/slurmctld.pid
SlurmdPidFile=/run/slurm/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
PartitionName=$PARTITION Nodes=$host Default=YES MaxTime=INFINITE State=UP
CONF
}

start_munge() {
    if pidof munged >/dev/null; then return; fi
    [ -s /etc/munge/munge.key ] || mungekey --create --keyfile /etc/munge/munge.key
    chown munge:munge /etc/munge/munge.key && chmod 400 /etc/munge/munge.key
    mkdir -p /run/munge /var/log/munge /var/lib/munge
    chown munge:munge /run/munge /var/log/munge /var/lib/munge
    runuser -u munge -- /usr/sbin/munged
}

up() {
    local start=$SECONDS
    install
    write_conf
    start_munge
    pidof slurmctld >/dev/null || slurmctld
    pidof slurmd >/dev/null || slurmd
    for _ in $(seq 120); do
        if sinfo -h -N -o "%T" 2>/dev/null | grep -qx idle; then
            say "node $(hostname -s) idle in partition $PARTITION ($(nproc --all) CPUs) after $(( SECONDS - start )) s"
            return
        fi
        # A node left down or drained by an earlier run comes back.
        scontrol update nodename="$(hostname -s)" state=resume >/dev/null 2>&1 || true
        sleep 0.5
    done
    say "the node did not become idle in 60 s:"; sinfo -N -l || true
    tail -n 20 /var/log/slurm/slurmctld.log /var/log/slurm/slurmd.log || true
    exit 1
}

down() {
    for daemon in slurmd slurmctld munged; do
        local pid
        pid=$(pidof "$daemon" || true)
        [ -n "$pid" ] && kill $pid && say "stopped $daemon"
    done
    return 0
}

case "${1:-}" in
    up) up ;;
    down) down ;;
    *) echo "usage: $0 up|down" >&2; exit 2 ;;
esac
