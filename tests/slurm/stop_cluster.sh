#!/usr/bin/env bash
# Stop the single-node SLURM cluster started by tests/slurm/start_cluster.sh (slurmd, slurmctld, munged),
# each by the pid in its pid file. Leaves the packages, the configuration and the job state in place.
set -uo pipefail

[[ $EUID -eq 0 ]] || { echo "stop_cluster.sh: must run as root" >&2; exit 1; }

alive() {  # alive PID: running, and not a zombie waiting to be reaped
    local _pid _comm state
    read -r _pid _comm state _ <"/proc/$1/stat" 2>/dev/null && [[ $state != Z ]]
}

stop_by_pidfile() {  # stop_by_pidfile NAME FILE
    local pid
    if [[ ! -s $2 ]] || ! alive "$(cat "$2")"; then
        echo "$1 is not running"
        return 0
    fi
    pid=$(cat "$2")
    kill "$pid"
    for _ in $(seq 15); do
        alive "$pid" || { echo "stopped $1 (pid $pid)"; return 0; }
        sleep 1
    done
    kill -9 "$pid" 2>/dev/null && echo "killed $1 (pid $pid) after 15 s"
}

stop_by_pidfile slurmd /run/slurmd.pid
stop_by_pidfile slurmctld /run/slurmctld.pid
stop_by_pidfile munged /run/munge/munged.pid
