#!/usr/bin/env bash
# A single-node Slurm cluster on this machine (Debian's slurm-wlm and munge, as root), for tests/test_slurm.py:
#   bash .ci/slurm_cluster.sh start   # configure if needed, start munged, slurmctld, slurmd; wait until sinfo is idle
#   bash .ci/slurm_cluster.sh stop    # stop the daemons by the pids in their pid files
set -euo pipefail
host=$(hostname -s)
pids=/run/pdm-bench-slurm

start() {
  mkdir -p /etc/slurm /var/spool/slurmctld /var/spool/slurmd /run/munge "$pids" /var/log/slurm
  chown munge:munge /run/munge
  cat > /etc/slurm/slurm.conf <<CONF
ClusterName=local
SlurmctldHost=$host
SlurmUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=$pids/slurmctld.pid
SlurmdPidFile=$pids/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
ReturnToService=2
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
NodeName=$host CPUs=$(nproc) RealMemory=20000 State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
CONF
  if [ ! -s /run/munge/munged.pid ] || ! kill -0 "$(cat /run/munge/munged.pid)" 2>/dev/null; then
    su -s /bin/sh munge -c "/usr/sbin/munged --pid-file=/run/munge/munged.pid"
  fi
  for daemon in slurmctld slurmd; do
    if [ ! -s "$pids/$daemon.pid" ] || ! kill -0 "$(cat "$pids/$daemon.pid")" 2>/dev/null; then
      "/usr/sbin/$daemon"
    fi
  done
  for _ in $(seq 60); do
    if sinfo -h -o %t 2>/dev/null | grep -qE '^(idle|mix|alloc)'; then
      echo "slurm: node $host up"; return 0
    fi
    sleep 1
  done
  echo "slurm: the node did not come up (see /var/log/slurm/)" >&2; return 1
}

stop() {
  for file in "$pids/slurmd.pid" "$pids/slurmctld.pid" /run/munge/munged.pid; do
    if [ -s "$file" ]; then kill "$(cat "$file")" 2>/dev/null || true; fi
  done
}

"${1:-start}"
