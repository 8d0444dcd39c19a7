#!/usr/bin/env bash
# Bring up a throwaway Slurm cluster on 127.0.0.1: munged, slurmctld and two slurmd (n1, n2).
#   usage: slurm/testcluster/up.sh DIR        (DIR holds config, state, spool, logs; it must be new or empty)
# Prints `export SLURM_CONF=DIR/slurm.conf`; every client command (sbatch, squeue, ...) needs it.
# Needs root (slurmd runs jobs as their user) and Debian's slurm-wlm + munge packages.
set -euo pipefail
dir=$(realpath -m "${1:?usage: up.sh DIR}")
mkdir -p "$dir"/{state,log,run} "$dir"/spool/{n1,n2}
port_base=${MKF_SLURM_PORT_BASE:-17000}
# the machine's cores are split between the two nodes: a 2-core machine is a cluster of 2 x 1 CPU, not 2 x 2
cpus=$(( $(nproc) / 2 )); [ "$cpus" -ge 1 ] || cpus=1
# MKF_SLURM_NODE_CPUS: that many CPUs per node instead, even beyond the machine's cores (e.g. 2 nodes x 2 tasks for
# a 4-rank cell on a 2-core machine): slurmd is told to trust the configured count (SlurmdParameters=config_overrides)
overrides=0
if [ -n "${MKF_SLURM_NODE_CPUS:-}" ]; then cpus=$MKF_SLURM_NODE_CPUS; overrides=1; fi
mem_mb=${MKF_SLURM_NODE_MEM_MB:-4000}

# munge with its own socket and key, so it never touches a system munged
dd if=/dev/urandom bs=1 count=1024 of="$dir/munge.key" status=none
chown munge:munge "$dir/munge.key" "$dir/run" && chmod 400 "$dir/munge.key"
chmod 711 "$dir"
sudo_munge() { if command -v runuser >/dev/null; then runuser -u munge -- "$@"; else su -s /bin/sh munge -c "$*"; fi; }
sudo_munge /usr/sbin/munged --key-file="$dir/munge.key" --socket="$dir/run/munge.sock" \
  --pid-file="$dir/run/munged.pid" --log-file="$dir/run/munged.log" --seed-file="$dir/run/munged.seed" --force

cat > "$dir/slurm.conf" <<CONF
ClusterName=mkftest
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort=$((port_base + 817))
SlurmUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$dir/run/munge.sock
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool/%n
SlurmctldPidFile=$dir/run/slurmctld.pid
SlurmdPidFile=$dir/run/slurmd.%n.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=5,bf_interval=5
MpiDefault=none
ReturnToService=2
JobRequeue=1
# Slurm's default MaxArraySize (1001), as on most clusters: a stage of more cells is split into several arrays
MaxJobCount=50000
# a real preemption: jobs of partition "high" requeue jobs of partition "low" (SIGTERM, KillWait, SIGKILL)
PreemptType=preempt/partition_prio
PreemptMode=REQUEUE
MinJobAge=600
KillWait=30
InactiveLimit=0
SlurmctldTimeout=30
SlurmdTimeout=30
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
NodeName=n[1-2] NodeHostname=localhost NodeAddr=127.0.0.1 Port=$((port_base + 1))-$((port_base + 2)) CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
PartitionName=debug Nodes=n[1-2] Default=YES MaxTime=INFINITE State=UP PriorityTier=1 PreemptMode=OFF
PartitionName=low Nodes=n[1-2] MaxTime=INFINITE State=UP PriorityTier=1 PreemptMode=REQUEUE
PartitionName=high Nodes=n[1-2] MaxTime=INFINITE State=UP PriorityTier=10 PreemptMode=OFF
CONF
[ "$overrides" = 0 ] || echo "SlurmdParameters=config_overrides" >> "$dir/slurm.conf"
export SLURM_CONF="$dir/slurm.conf"
/usr/sbin/slurmctld -f "$SLURM_CONF" -i
for n in n1 n2; do /usr/sbin/slurmd -f "$SLURM_CONF" -N "$n"; done
for _ in $(seq 60); do
  if [ "$(sinfo -h -o '%t' 2>/dev/null | sort -u | tr '\n' ' ')" = "idle " ]; then
    echo "export SLURM_CONF=$SLURM_CONF"; exit 0
  fi
  sleep 0.5
done
echo "slurm test cluster did not come up; see $dir/log" >&2
sinfo >&2 || true
exit 1
