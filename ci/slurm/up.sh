#!/usr/bin/env bash
# Start a one-node SLURM cluster on localhost for the SLURM-marked tests (Debian 12, as root).
#
#     eval "$(ci/slurm/up.sh)"      # installs slurm + munge if missing, starts the daemons, and
#                                   # prints `export SLURM_CONF=...` (the only thing on stdout)
#     ci/slurm/down.sh              # stops exactly the daemons this script started, by PID
#
# Idempotent: a daemon that already answers is left alone (and not recorded, so down.sh leaves it
# alone too). Everything lives in $SCALING_SLURM_DIR (default /tmp/scaling-slurm): slurm.conf, state,
# spool, logs, and `started` (name and PID of each daemon this script started). Recipe and pitfalls:
# docs/slurm-on-localhost.md (no accounting: results come back without slurmdbd).
set -euo pipefail

BASE=${SCALING_SLURM_DIR:-/tmp/scaling-slurm}
CONF=$BASE/slurm.conf
log() { echo "slurm up: $*" >&2; }
die() { log "error: $*"; exit 1; }

[ "$(id -u)" = 0 ] || die "needs root (it installs packages and runs slurmctld/slurmd as root)"

if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null \
    || ! command -v sinfo >/dev/null || ! command -v munged >/dev/null; then
  command -v apt-get >/dev/null || die "slurm is not installed and apt-get is not available"
  log "installing slurmctld slurmd slurm-client munge"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2
  apt-get install -y -qq --no-install-recommends slurmctld slurmd slurm-client munge >&2
fi

mkdir -p "$BASE"/state "$BASE"/spool "$BASE"/logs
touch "$BASE/started"

alive() {  # alive NAME PID: the process exists and is the daemon we expect (guards PID reuse)
  [ -n "${2:-}" ] && [ -r "/proc/$2/comm" ] && [ "$(cat "/proc/$2/comm" 2>/dev/null)" = "$1" ]
}
pid_of() { [ -s "$1" ] && tr -d ' \n' < "$1" || true; }
record() { grep -v "^$1 " "$BASE/started" > "$BASE/started.tmp" || true
           echo "$1 $2" >> "$BASE/started.tmp"; mv "$BASE/started.tmp" "$BASE/started"; }

# --- slurm.conf: the node line from `slurmd -C`, RealMemory lowered to 90% (above the real value the
# node goes INVAL and jobs pend forever). cred_expire (default 120 s) is also how long a requeued job
# waits before it may start again, and scheduling every second (default 30–60 s) starts it then:
# both keep the requeue tests short.
hw=$(slurmd -C | head -n 1)
mem=$(sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' <<< "$hw")
hw=$(sed -e 's/^NodeName=[^ ]* //' -e "s/RealMemory=[0-9]*/RealMemory=$((mem * 9 / 10))/" <<< "$hw")
cat > "$CONF.tmp" <<CONF
ClusterName=ci
SlurmctldHost=localhost
SlurmUser=root
AuthType=auth/munge
AuthInfo=cred_expire=10
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SchedulerType=sched/backfill
SchedulerParameters=bf_interval=1,sched_interval=1
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
MailProg=/bin/true
StateSaveLocation=$BASE/state
SlurmdSpoolDir=$BASE/spool
SlurmctldPidFile=$BASE/slurmctld.pid
SlurmdPidFile=$BASE/slurmd.pid
SlurmctldLogFile=$BASE/logs/slurmctld.log
SlurmdLogFile=$BASE/logs/slurmd.log
NodeName=localhost NodeAddr=127.0.0.1 $hw State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
CONF
mv "$CONF.tmp" "$CONF"
export SLURM_CONF=$CONF

# --- munge: start munged only if no munged answers already.
install -d -o munge -g munge -m 0755 /run/munge
if ! (munge -n | unmunge) >/dev/null 2>&1; then
  [ -s /etc/munge/munge.key ] || { mungekey --create >&2 && chown munge:munge /etc/munge/munge.key; }
  runuser -u munge -- /usr/sbin/munged
  for _ in $(seq 50); do (munge -n | unmunge) >/dev/null 2>&1 && break; sleep 0.1; done
  record munged "$(pid_of /run/munge/munged.pid)"
  log "started munged (pid $(pid_of /run/munge/munged.pid))"
fi

# --- slurmctld, slurmd: each forks and writes its pid file.
if alive slurmctld "$(pid_of "$BASE/slurmctld.pid")"; then
  log "slurmctld already running"
else
  /usr/sbin/slurmctld
  for _ in $(seq 50); do alive slurmctld "$(pid_of "$BASE/slurmctld.pid")" && break; sleep 0.1; done
  alive slurmctld "$(pid_of "$BASE/slurmctld.pid")" || die "slurmctld did not start; see $BASE/logs/slurmctld.log"
  record slurmctld "$(pid_of "$BASE/slurmctld.pid")"
  log "started slurmctld (pid $(pid_of "$BASE/slurmctld.pid"))"
fi
if alive slurmd "$(pid_of "$BASE/slurmd.pid")"; then
  log "slurmd already running"
else
  /usr/sbin/slurmd -N localhost
  for _ in $(seq 50); do alive slurmd "$(pid_of "$BASE/slurmd.pid")" && break; sleep 0.1; done
  alive slurmd "$(pid_of "$BASE/slurmd.pid")" || die "slurmd did not start; see $BASE/logs/slurmd.log"
  record slurmd "$(pid_of "$BASE/slurmd.pid")"
  log "started slurmd (pid $(pid_of "$BASE/slurmd.pid"))"
fi

# --- wait (bounded) for the node to accept jobs; resume it if an unclean stop left it down.
state=
for i in $(seq 150); do
  state=$(timeout 5 sinfo -h -n localhost -o %T 2>/dev/null | head -n 1 || true)
  case "$state" in
    idle*|mixed*|allocated*) break ;;
    down*|drain*|fail*) [ $((i % 10)) = 1 ] && scontrol update NodeName=localhost State=RESUME >&2 || true ;;
  esac
  sleep 0.2
done
case "$state" in
  idle*|mixed*|allocated*) log "node localhost is $state" ;;
  *) die "node localhost is '${state:-unreachable}' after 30 s; see $BASE/logs/" ;;
esac
echo "export SLURM_CONF=$CONF"
