#!/usr/bin/env bash
# A SLURM cluster on this machine, for CI and for trying the slurm executor by hand.
#
#   scripts/slurm-local.sh up     install slurm-wlm and munge if missing (Debian/Ubuntu, as root),
#                                 write slurm.conf for this machine, start munged, slurmctld and
#                                 one slurmd per node, and wait until `sinfo` shows the nodes idle
#   scripts/slurm-local.sh down   stop the daemons
#
# Two nodes, both this machine: `<host>` and `<host>-2`, each its own slurmd (`slurmd -N name`) with
# its own port, spool folder, pid and log file (Debian builds slurmd with multiple-slurmd support).
# Partition `debug` (the default) holds `<host>` only, as the single-node cluster always did;
# partition `multinode` holds both and takes only jobs of 2 nodes, so a job across nodes (e.g.
# `[resources] nodes = 2`, `--partition multinode`) runs one slurmd per node. Running `up` again
# changes nothing while the daemons run with this configuration; after an update that changes it,
# `up` waits (up to a minute) for running jobs to end and restarts the daemons within seconds.
#
# No cgroups and no accounting: processes are tracked by /proc (proctrack/linuxproc), so it works
# in containers; `sacct` is not available and reidbench does not need it.
set -euo pipefail

CONF_DIR=/etc/slurm
PARTITION=${SLURM_LOCAL_PARTITION:-debug}
MULTI_PARTITION=multinode
HOST=$(hostname -s)
NODES=("$HOST" "$HOST-2")
PORTS=(6818 6819)

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

# Writes the configuration to $1.
write_conf() {
    local host=$HOST cpus mem_mb
    cpus=$(nproc --all)
    # Leave 1 GiB to the system; slurmd refuses a node that claims more memory than it has.
    mem_mb=$(( $(awk '/MemTotal/ {print int($2 / 1024)}' /proc/meminfo) - 1024 ))
    mkdir -p "$CONF_DIR" /var/spool/slurmctld /var/log/slurm /run/slurm
    for node in "${NODES[@]}"; do mkdir -p "/var/spool/slurmd/$node"; done
    cat > "$1" <<CONF
# Written by reidbench scripts/slurm-local.sh: two nodes, both this machine (see the script).
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
# %n: each node's slurmd has its own spool folder, pid file and log.
SlurmdSpoolDir=/var/spool/slurmd/%n
SlurmctldPidFile=/run/slurm/slurmctld.pid
SlurmdPidFile=/run/slurm/slurmd-%n.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd-%n.log
NodeName=${NODES[0]} NodeHostname=$host NodeAddr=127.0.0.1 Port=${PORTS[0]} CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
NodeName=${NODES[1]} NodeHostname=$host NodeAddr=127.0.0.1 Port=${PORTS[1]} CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
PartitionName=$PARTITION Nodes=${NODES[0]} Default=YES MaxTime=INFINITE State=UP
# Jobs of two nodes only: the first node of every job is $host, whose name resolves (MASTER_ADDR).
PartitionName=$MULTI_PARTITION Nodes=${NODES[0]},${NODES[1]} MinNodes=2 MaxTime=INFINITE State=UP
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

# The pid of the slurmd serving node $1, if it runs.
slurmd_pid() {
    local pid
    pid=$(cat "/run/slurm/slurmd-$1.pid" 2>/dev/null || true)
    [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null && echo "$pid"
    return 0
}

# Stop the given pids and wait until they are gone.
stop_pids() {
    [ $# -gt 0 ] || return 0
    kill "$@" 2>/dev/null || true
    for _ in $(seq 100); do
        local alive=0
        for pid in "$@"; do kill -0 "$pid" 2>/dev/null && alive=1; done
        [ $alive = 0 ] && return 0
        sleep 0.1
    done
}

# The daemons run with an older configuration: restart them with the new one, between jobs.
restart_daemons() {
    for _ in $(seq 60); do
        [ -z "$(squeue -h -t running 2>/dev/null)" ] && break
        sleep 1
    done
    say "configuration changed: restarting slurmctld and slurmd"
    local pids
    # slurmd of the single-node configuration (no per-node pid file), and every node's.
    pids=$(cat /run/slurm/slurmd.pid 2>/dev/null || true)
    for node in "${NODES[@]}"; do pids="$pids $(slurmd_pid "$node")"; done
    pids="$pids $(cat /run/slurm/slurmctld.pid 2>/dev/null || true)"
    # shellcheck disable=SC2086
    stop_pids $pids
    rm -f /run/slurm/slurmd.pid
}

up() {
    local start=$SECONDS new="$CONF_DIR/slurm.conf.new"
    install
    write_conf "$new"
    if cmp -s "$new" "$CONF_DIR/slurm.conf"; then
        rm -f "$new"
    else
        mv "$new" "$CONF_DIR/slurm.conf"
        pidof slurmctld >/dev/null && restart_daemons
    fi
    start_munge
    pidof slurmctld >/dev/null || slurmctld
    for node in "${NODES[@]}"; do
        [ -n "$(slurmd_pid "$node")" ] || slurmd -N "$node"
    done
    for _ in $(seq 120); do
        if [ "$(sinfo -h -N -o "%N %T" 2>/dev/null | sort -u | grep -c " idle$\| mixed$\| allocated$")" -ge ${#NODES[@]} ]; then
            say "nodes ${NODES[*]} up: partition $PARTITION (${NODES[0]}) and $MULTI_PARTITION (both; 2-node jobs)," \
                "$(nproc --all) CPUs each, after $(( SECONDS - start )) s"
            return
        fi
        # A node left down or drained by an earlier run comes back.
        for node in "${NODES[@]}"; do scontrol update nodename="$node" state=resume >/dev/null 2>&1 || true; done
        sleep 0.5
    done
    say "the nodes did not become idle in 60 s:"; sinfo -N -l || true
    tail -n 20 /var/log/slurm/slurmctld.log /var/log/slurm/slurmd-*.log || true
    exit 1
}

down() {
    local pids=""
    for node in "${NODES[@]}"; do pids="$pids $(slurmd_pid "$node")"; done
    # shellcheck disable=SC2086
    [ -n "${pids// /}" ] && stop_pids $pids && say "stopped slurmd (${NODES[*]})"
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
