#!/usr/bin/env bash
# Stop the one-node cluster that ci/slurm/up.sh started: cancel every job first (killing slurmd under
# a running job leaves a slurmstepd that ignores SIGTERM), then end only the daemons listed in
# $SCALING_SLURM_DIR/started, by PID, after checking each PID still is that daemon. Idempotent.
set -uo pipefail

BASE=${SCALING_SLURM_DIR:-/tmp/scaling-slurm}
export SLURM_CONF=$BASE/slurm.conf
log() { echo "slurm down: $*" >&2; }

if [ ! -s "$BASE/started" ]; then
  log "nothing to stop (no daemons recorded in $BASE/started)"
  exit 0
fi
alive() { [ -n "${2:-}" ] && [ -r "/proc/$2/comm" ] && [ "$(cat "/proc/$2/comm" 2>/dev/null)" = "$1" ]; }

pid=$(awk '$1 == "slurmctld" {print $2}' "$BASE/started")
if [ -f "$SLURM_CONF" ] && alive slurmctld "$pid"; then
  jobs=$(timeout 10 squeue -h -o %A 2>/dev/null | sort -u)
  if [ -n "$jobs" ]; then
    log "cancelling jobs: $(echo $jobs)"
    # shellcheck disable=SC2086
    timeout 10 scancel $jobs || true
    for _ in $(seq 150); do
      [ -z "$(timeout 10 squeue -h -o %A 2>/dev/null)" ] && break
      sleep 0.2
    done
  fi
fi

for name in slurmd slurmctld munged; do
  pid=$(awk -v n="$name" '$1 == n {print $2}' "$BASE/started")
  [ -n "$pid" ] || continue
  if alive "$name" "$pid"; then
    kill -TERM "$pid"
    for _ in $(seq 100); do alive "$name" "$pid" || break; sleep 0.1; done
    if alive "$name" "$pid"; then log "$name ($pid) ignored SIGTERM; sending SIGKILL"; kill -KILL "$pid"; fi
    log "stopped $name (pid $pid)"
  fi
  awk -v n="$name" '$1 != n' "$BASE/started" > "$BASE/started.tmp" && mv "$BASE/started.tmp" "$BASE/started"
done
