#!/usr/bin/env bash
# Start a single-node SLURM cluster on this host for `pytest -m slurm` (tests/test_slurm.py).
#
#   sudo bash tests/slurm/start_cluster.sh     # idempotent: a fast no-op when the cluster already answers
#   sudo bash tests/slurm/stop_cluster.sh
#
# Installs Debian's slurm-wlm and munge when missing, creates a munge key when absent, writes
# /etc/slurm/slurm.conf for this host (one node, partition $KML_SLURM_PARTITION, default `debug`) with
# cgroup-free plugins so it also works inside containers and VMs without systemd, starts munged,
# slurmctld and slurmd as daemons, and waits until the node is idle and `srun -N1 true` runs.
# On failure it prints one line to stderr (pointing at the daemon logs) and exits non-zero.
set -uo pipefail

PARTITION=${KML_SLURM_PARTITION:-debug}
WAIT_S=${KML_SLURM_START_TIMEOUT:-90}
CONF=/etc/slurm/slurm.conf
STATE_DIR=/var/spool/slurmctld
SPOOL_DIR=/var/spool/slurmd
LOG_DIR=/var/log/slurm
MUNGE_KEY=/etc/munge/munge.key
MARKER="# Written by kml tests/slurm/start_cluster.sh"

die() {
    echo "start_cluster.sh: $*" >&2
    exit 1
}

wait_for() {  # wait_for SECONDS COMMAND...: retry COMMAND every second until it succeeds
    local deadline=$((SECONDS + $1))
    shift
    until "$@"; do
        ((SECONDS < deadline)) || return 1
        sleep 1
    done
}

node_state() {  # compact state of the partition's node: idle, mix, alloc, down*, drain, ...
    timeout 10 sinfo -h -p "$PARTITION" -o %t 2>/dev/null | head -n1
}

ctld_up() { timeout 10 scontrol ping 2>/dev/null | grep -q "is UP"; }

cluster_ready() {
    command -v sinfo >/dev/null 2>&1 && ctld_up && [[ $(node_state) =~ ^(idle|mix|alloc)$ ]]
}

render_conf() {  # print this host's slurm.conf (needs slurmd, for `slurmd -C`)
    local host node_line cpus real_mem topology
    host=$(hostname -s)
    node_line=$(slurmd -C 2>/dev/null | head -n1)  # NodeName=... CPUs=... Boards=... RealMemory=...
    cpus=$(grep -o 'CPUs=[0-9]*' <<<"$node_line" | cut -d= -f2)
    real_mem=$(grep -o 'RealMemory=[0-9]*' <<<"$node_line" | cut -d= -f2)
    topology=$(grep -o 'Boards=[0-9]* SocketsPerBoard=[0-9]* CoresPerSocket=[0-9]* ThreadsPerCore=[0-9]*' \
        <<<"$node_line")
    if [[ -z $cpus || -z $real_mem ]]; then
        echo "'slurmd -C' did not report this host's CPUs and memory: ${node_line:-no output}"
        return 1
    fi
    cat <<EOF
$MARKER on $host: a single-node test cluster.
# start_cluster.sh rewrites it (and restarts the daemons) whenever its content would change.
ClusterName=kml
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# A requeued job waits cred_expire seconds (default 120) before it may start again: keep it short.
AuthInfo=cred_expire=10
StateSaveLocation=$STATE_DIR
SlurmdSpoolDir=$SPOOL_DIR
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=$LOG_DIR/slurmctld.log
SlurmdLogFile=$LOG_DIR/slurmd.log
# No cgroups: these work in containers and VMs without systemd or a delegated cgroup tree.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
# No slurmdbd: every job end (each requeue included) is appended to this file instead.
JobCompType=jobcomp/filetxt
JobCompLoc=$LOG_DIR/jobcomp.log
MpiDefault=none
MailProg=/bin/true
SchedulerType=sched/backfill
# Look at pending jobs every few seconds (defaults 60 and 30), so a requeued job restarts promptly.
SchedulerParameters=sched_interval=5,bf_interval=5
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
# Jobs that ask for no memory get 1 GB a CPU rather than the whole node.
DefMemPerCPU=1024
ReturnToService=2
MinJobAge=30
KillWait=5
InactiveLimit=0
SlurmdTimeout=60
# A little less memory than present, so the node is never drained for "Low RealMemory".
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus $topology RealMemory=$((real_mem * 9 / 10)) State=UNKNOWN
PartitionName=$PARTITION Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
}

alive() {  # alive PID: running, and not a zombie waiting to be reaped
    local _pid _comm state
    read -r _pid _comm state _ 2>/dev/null <"/proc/$1/stat" && [[ $state != Z ]]  # 2> first: it must cover the < that fails
}
daemon_running() { [[ -s $1 ]] && alive "$(cat "$1")"; }

ours_current() {  # the running cluster is someone else's, or ours with this configuration and both daemons
    [[ -f $CONF ]] || return 1
    grep -q "^$MARKER" "$CONF" || return 0
    # sinfo alone would still say idle for a minute after slurmd died
    command -v slurmd >/dev/null && cmp -s <(render_conf) "$CONF" &&
        daemon_running /run/slurmctld.pid && daemon_running /run/slurmd.pid
}

if cluster_ready && ours_current; then
    echo "slurm cluster already up: partition $PARTITION, node $(node_state)"
    exit 0
fi

if [[ -f $CONF ]] && ! grep -q "^$MARKER" "$CONF" && command -v scontrol >/dev/null && ctld_up; then
    die "a SLURM cluster not started by this script runs here without a usable partition '$PARTITION'" \
        "(set KML_SLURM_PARTITION to one of its partitions)"
fi
[[ $EUID -eq 0 ]] || die "must run as root to install and start slurm (try: sudo bash $0)"

# --- packages --------------------------------------------------------------------------------------
if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v srun >/dev/null ||
    ! command -v munged >/dev/null; then
    echo "installing slurm-wlm and munge (apt-get)"
    apt_log=$(mktemp /tmp/kml-slurm-apt.XXXXXX)
    { apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        slurm-wlm munge; } >"$apt_log" 2>&1 ||
        die "apt-get install slurm-wlm munge failed: $(tail -n1 "$apt_log") (full log: $apt_log)"
fi

# --- munge -----------------------------------------------------------------------------------------
if [[ ! -s $MUNGE_KEY ]]; then
    mkdir -p "$(dirname "$MUNGE_KEY")"
    if command -v mungekey >/dev/null; then
        mungekey --create --keyfile="$MUNGE_KEY" || die "could not create $MUNGE_KEY with mungekey"
    else
        dd if=/dev/urandom of="$MUNGE_KEY" bs=1024 count=1 status=none || die "could not create $MUNGE_KEY"
    fi
    { chown munge:munge "$MUNGE_KEY" && chmod 400 "$MUNGE_KEY"; } || die "could not hand $MUNGE_KEY to user munge"
fi
munge_works() { munge -n 2>/dev/null | unmunge >/dev/null 2>&1; }
if ! munge_works; then
    mkdir -p /run/munge /var/log/munge /var/lib/munge
    chown munge:munge /run/munge /var/log/munge /var/lib/munge
    chmod 0755 /run/munge
    runuser -u munge -- /usr/sbin/munged >/dev/null 2>&1 ||
        die "munged did not start (see /var/log/munge/munged.log)"
    wait_for 15 munge_works ||
        die "munged runs but its credentials do not validate (see /var/log/munge/munged.log)"
fi

# --- slurm.conf ------------------------------------------------------------------------------------
stop_by_pidfile() {  # stop_by_pidfile FILE: end the daemon whose pid FILE holds, and wait for it
    local pid
    [[ -s $1 ]] || return 0
    pid=$(cat "$1")
    kill "$pid" 2>/dev/null || return 0
    wait_for 15 eval "! alive $pid" || kill -9 "$pid" 2>/dev/null
}

new_conf=$(mktemp)
render_conf >"$new_conf" || die "$(cat "$new_conf")"
if [[ -f $CONF ]] && cmp -s "$new_conf" "$CONF"; then
    rm -f "$new_conf"
else
    if [[ -f $CONF ]] && ! grep -q "^$MARKER" "$CONF"; then
        cp "$CONF" "$CONF.before-kml" && echo "kept the previous $CONF as $CONF.before-kml"
    fi
    mkdir -p "$(dirname "$CONF")"
    { install -m 0644 "$new_conf" "$CONF" && rm -f "$new_conf"; } || die "could not write $CONF"
    # Daemons started with another configuration must read this one from scratch.
    stop_by_pidfile /run/slurmd.pid
    stop_by_pidfile /run/slurmctld.pid
fi

# --- daemons ---------------------------------------------------------------------------------------
mkdir -p "$STATE_DIR" "$SPOOL_DIR" "$LOG_DIR"
if ! daemon_running /run/slurmctld.pid; then
    # -i: start even when the saved state is unreadable (e.g. left by another slurm version)
    slurmctld -i >>"$LOG_DIR/slurmctld.start.log" 2>&1 ||
        die "slurmctld did not start (see $LOG_DIR/slurmctld.log and $LOG_DIR/slurmctld.start.log)"
fi
wait_for "$WAIT_S" ctld_up || die "slurmctld does not answer 'scontrol ping' (see $LOG_DIR/slurmctld.log)"
if ! daemon_running /run/slurmd.pid; then
    slurmd >>"$LOG_DIR/slurmd.start.log" 2>&1 ||
        die "slurmd did not start (see $LOG_DIR/slurmd.log and $LOG_DIR/slurmd.start.log)"
fi

host=$(hostname -s)
node_usable() {
    local state
    state=$(node_state)
    # A node left down or drained by an earlier run (e.g. "Node unexpectedly rebooted") is put back.
    if [[ $state =~ ^(down|drain|drng|fail) ]]; then
        scontrol update NodeName="$host" State=RESUME >/dev/null 2>&1
    fi
    [[ $state =~ ^(idle|mix|alloc)$ ]]
}
wait_for "$WAIT_S" node_usable ||
    die "node $host is '$(node_state)', not idle, after ${WAIT_S}s (see $LOG_DIR/slurmd.log, $LOG_DIR/slurmctld.log)"
timeout 60 srun -N1 -p "$PARTITION" -t 1 true >/dev/null 2>&1 ||
    die "the cluster answers but 'srun -N1 true' failed (see $LOG_DIR/slurmd.log)"
echo "slurm cluster up: partition $PARTITION, node $host ($(nproc) CPUs)"
