#!/usr/bin/env bash
# Tear down the cluster started by up.sh DIR: cancel its jobs, stop the daemons, leave DIR for post-mortems.
set -uo pipefail
dir=$(realpath -m "${1:?usage: down.sh DIR}")
export SLURM_CONF="$dir/slurm.conf"
scancel --quiet --full "--user=$(id -un)" 2>/dev/null
for pidfile in "$dir"/run/slurmd.*.pid "$dir"/run/slurmctld.pid "$dir"/run/munged.pid; do
  [ -f "$pidfile" ] && kill "$(cat "$pidfile")" 2>/dev/null
done
sleep 1
for pidfile in "$dir"/run/slurmd.*.pid "$dir"/run/slurmctld.pid "$dir"/run/munged.pid; do
  [ -f "$pidfile" ] && kill -9 "$(cat "$pidfile")" 2>/dev/null
done
exit 0
