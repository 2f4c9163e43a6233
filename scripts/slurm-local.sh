#!/usr/bin/env bash
# A single-node Slurm on this machine for Booth's Slurm tests (test/slurm/): installs Debian's
# slurm-wlm and munge when missing, writes a throwaway slurm.conf (accounting off, no cgroups,
# short KillWait, requeue allowed, 16 CPU slots, no GPUs), and starts munged, slurmctld and
# slurmd as root with their state under $BOOTH_SLURM_DIR (default /tmp/booth-slurm).
#
#   scripts/slurm-local.sh start    install if needed, start (a no-op when already up)
#   scripts/slurm-local.sh stop     stop the daemons this script started, remove its state
#   scripts/slurm-local.sh status   print whether it is up (exit 0) or not (exit 1)
#
# Clients (sbatch, squeue, …) read /etc/slurm/slurm.conf, so the script writes it there, but only
# when that file is missing or was written by this script: it never touches a real cluster's
# configuration. Needs root (package install, daemons). Not for production use.
set -euo pipefail

DIR="${BOOTH_SLURM_DIR:-/tmp/booth-slurm}"
CONF=/etc/slurm/slurm.conf
MARK="# written by booth scripts/slurm-local.sh"
HOST="$(hostname -s)"

log() { printf 'slurm-local: %s\n' "$*" >&2; }
die() { log "$*"; exit 1; }

pid_alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

up() {
  pid_alive "$DIR/slurmctld.pid" && pid_alive "$DIR/slurmd.pid" && scontrol ping >/dev/null 2>&1
}

node_ready() {
  # The node must be idle/mixed/allocated (not down/drained/unknown) for jobs to start.
  local state
  state="$(sinfo -h -n "$HOST" -o '%T' 2>/dev/null | head -n1)"
  case "$state" in idle* | mixed* | allocated* | completing*) return 0 ;; *) return 1 ;; esac
}

install() {
  if command -v sbatch >/dev/null && command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v munged >/dev/null; then
    return
  fi
  [ "$(id -u)" = 0 ] || die "Slurm is not installed and this is not root: run as root, or install slurm-wlm and munge yourself"
  log "installing slurm-wlm and munge (apt-get)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq --no-install-recommends slurm-wlm munge >/dev/null
}

write_conf() {
  if [ -f "$CONF" ] && ! head -n1 "$CONF" | grep -qF "$MARK"; then
    die "$CONF exists and was not written by this script (a real cluster?); refusing to overwrite it"
  fi
  mkdir -p /etc/slurm "$DIR/state" "$DIR/spool"
  local mem
  mem="$(slurmd -C | sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p')"
  # Addresses are pinned to 127.0.0.1 so a container whose hostname does not resolve still works.
  # config_overrides: slurmd trusts the CPU count below instead of the hardware's, so a 2-core CI
  # machine still runs several one-CPU test jobs at once (the jobs mostly sleep).
  cat >"$CONF" <<EOF
$MARK
ClusterName=booth-local
SlurmctldHost=$HOST(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=cred_expire=10
CredType=cred/munge
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/slurmctld.log
SlurmdLogFile=$DIR/slurmd.log
SlurmdParameters=config_overrides
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SwitchType=switch/none
SchedulerType=sched/backfill
# Short scheduling passes: a requeued job becomes eligible after cred_expire and must not wait a minute.
SchedulerParameters=sched_interval=5,bf_interval=5
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
ReturnToService=2
MailProg=/bin/true
JobRequeue=1
KillWait=10
OverTimeLimit=0
InactiveLimit=0
MinJobAge=600
SlurmctldTimeout=30
SlurmdTimeout=60
NodeName=$HOST NodeAddr=127.0.0.1 CPUs=16 RealMemory=${mem:-4096} State=UNKNOWN
PartitionName=debug Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
EOF
}

start_munge() {
  if munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then return; fi
  mkdir -p /run/munge /var/log/munge /var/lib/munge
  [ -s /etc/munge/munge.key ] || { dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key 2>/dev/null; }
  chown -R munge:munge /etc/munge /run/munge /var/log/munge /var/lib/munge
  chmod 0700 /etc/munge && chmod 0400 /etc/munge/munge.key && chmod 0755 /run/munge
  runuser -u munge -- /usr/sbin/munged
  touch "$DIR/started-munged"
  for _ in $(seq 50); do munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && return; sleep 0.1; done
  die "munged did not start (see /var/log/munge/munged.log)"
}

start() {
  install
  if up && node_ready; then log "already running ($DIR)"; return; fi
  write_conf
  start_munge
  pid_alive "$DIR/slurmctld.pid" || slurmctld -c
  pid_alive "$DIR/slurmd.pid" || slurmd
  for _ in $(seq 150); do
    if up && node_ready; then log "up: node $HOST, partition debug ($DIR)"; return; fi
    sleep 0.2
  done
  # A node left down by an earlier run comes back with an explicit resume.
  scontrol update nodename="$HOST" state=resume >/dev/null 2>&1 || true
  for _ in $(seq 50); do
    if up && node_ready; then log "up: node $HOST, partition debug ($DIR)"; return; fi
    sleep 0.2
  done
  sinfo >&2 || true
  tail -n 20 "$DIR/slurmctld.log" "$DIR/slurmd.log" >&2 || true
  die "Slurm did not become ready within 40 s (logs above)"
}

stop() {
  if [ -f "$CONF" ] && head -n1 "$CONF" | grep -qF "$MARK"; then
    scancel --full --signal=KILL --user=root >/dev/null 2>&1 || true
  fi
  for d in slurmd slurmctld; do
    if pid_alive "$DIR/$d.pid"; then
      local pid
      pid="$(cat "$DIR/$d.pid")"
      kill "$pid" 2>/dev/null || true
      for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      kill -9 "$pid" 2>/dev/null || true
    fi
  done
  # munged may serve other software on the machine: stop it only when this script started it.
  if [ -f "$DIR/started-munged" ] && pid_alive /run/munge/munged.pid; then
    kill "$(cat /run/munge/munged.pid)" 2>/dev/null || true
  fi
  rm -rf "$DIR"
  log "stopped"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status)
    if up && node_ready; then log "up ($DIR)"; sinfo; exit 0; fi
    log "not running"; exit 1 ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
