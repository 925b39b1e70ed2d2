#!/usr/bin/env bash
# A real multi-node Slurm cluster on this one machine, for tests and for trying
# the HPC backends without a supercomputer.
#
# It runs Debian's `slurm-wlm` (Slurm 22.05) and `munge` as root: one munged of
# its own (own key and socket), one slurmctld and one `slurmd -N nX` per node.
# All nodes have NodeAddr=127.0.0.1 and ports of their own, so the cluster can
# coexist with another Slurm on the same host. Every state, spool, log, pid and
# config file lives under one work directory.
#
# Usage: scripts/slurm-cluster.sh {start|stop|status|env} [options]
#
#   start    start munged, slurmctld and the slurmds; wait until every node is
#            idle. Does nothing (and succeeds) when the cluster is already up.
#   stop     cancel the cluster's jobs, then stop the daemons it started (by their
#            pid files). Does nothing when it is not running.
#   status   print the daemons, `sinfo` and `squeue`; exit 0 when up, 1 when not.
#   env      print `export SLURM_CONF=<work dir>/slurm.conf` for clients:
#            eval "$(scripts/slurm-cluster.sh env)"; sbatch --wrap hostname
#
# Options (environment variable, default):
#   --dir DIR          RHAPSODY_SLURM_DIR        /tmp/rhapsody-slurm
#   --nodes N          RHAPSODY_SLURM_NODES      2        (nodes n1..nN)
#   --cpus N           RHAPSODY_SLURM_CPUS       2        (CPUs per node)
#   --memory MB        RHAPSODY_SLURM_MEMORY     2000     (RealMemory per node)
#   --ctld-port P      RHAPSODY_SLURM_CTLD_PORT  16817    (SlurmctldPort)
#   --node-port P      RHAPSODY_SLURM_NODE_PORT  17001    (node i listens on P+i-1)
#   --timeout S        RHAPSODY_SLURM_TIMEOUT    60       (seconds to wait for idle nodes)
#   --cpu-list LIST    RHAPSODY_SLURM_CPU_LIST   (all)    (CPUs the daemons run on)
#       e.g. 1 or 2-3: munged, slurmctld and the slurmds run under `taskset -c LIST`,
#       so every batch job and job step (a pilot's agent, each srun) runs there too,
#       and the other CPUs stay free for what runs outside the cluster: a login
#       node and its compute nodes on one machine (bench/slurm.py uses it).
#   --enforce-part-limits ALL|ANY|NO
#                      RHAPSODY_SLURM_ENFORCE_PART_LIMITS  ALL
#       ALL: sbatch refuses at once a job larger than its partition ("Requested node
#       configuration is not available"), as many sites do; NO (Slurm's default):
#       such a job is accepted and stays PENDING forever with reason PartitionConfig.
#
# Partitions: `debug` (default, no time limit) and `short` (30 minutes).
set -euo pipefail

die() { echo "slurm-cluster: $*" >&2; exit 1; }
say() { echo "slurm-cluster: $*"; }

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; }

CMD="${1:-}"
[ -n "$CMD" ] || { usage >&2; exit 2; }
shift

DIR="${RHAPSODY_SLURM_DIR:-/tmp/rhapsody-slurm}"
NODES="${RHAPSODY_SLURM_NODES:-2}"
CPUS="${RHAPSODY_SLURM_CPUS:-2}"
MEMORY="${RHAPSODY_SLURM_MEMORY:-2000}"
CTLD_PORT="${RHAPSODY_SLURM_CTLD_PORT:-16817}"
NODE_PORT="${RHAPSODY_SLURM_NODE_PORT:-17001}"
TIMEOUT="${RHAPSODY_SLURM_TIMEOUT:-60}"
ENFORCE="${RHAPSODY_SLURM_ENFORCE_PART_LIMITS:-ALL}"
CPU_LIST="${RHAPSODY_SLURM_CPU_LIST:-}"

while [ $# -gt 0 ]; do
  case "$1" in
    --dir) DIR="$2"; shift 2 ;;
    --nodes) NODES="$2"; shift 2 ;;
    --cpus) CPUS="$2"; shift 2 ;;
    --memory) MEMORY="$2"; shift 2 ;;
    --ctld-port) CTLD_PORT="$2"; shift 2 ;;
    --node-port) NODE_PORT="$2"; shift 2 ;;
    --timeout) TIMEOUT="$2"; shift 2 ;;
    --enforce-part-limits) ENFORCE="$2"; shift 2 ;;
    --cpu-list) CPU_LIST="$2"; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) die "unknown option '$1' (see --help)" ;;
  esac
done

for v in NODES CPUS MEMORY CTLD_PORT NODE_PORT TIMEOUT; do
  [[ "${!v}" =~ ^[0-9]+$ ]] && [ "${!v}" -gt 0 ] || die "$v must be a positive integer, got '${!v}'"
done
case "$ENFORCE" in ALL|ANY|NO) ;; *) die "--enforce-part-limits must be ALL, ANY or NO, got '$ENFORCE'" ;; esac
case "$DIR" in /*) ;; *) DIR="$(pwd)/$DIR" ;; esac
# The daemons' CPU affinity, inherited by every job and step they start.
PIN=()
if [ -n "$CPU_LIST" ]; then
  [[ "$CPU_LIST" =~ ^[0-9]+([-,][0-9]+)*$ ]] \
    || die "--cpu-list must be a CPU list such as 1 or 0,2 or 1-3, got '$CPU_LIST'"
  taskset -c "$CPU_LIST" true 2>/dev/null \
    || die "--cpu-list '$CPU_LIST' names no usable CPU here (this machine has CPUs $(taskset -cp $$ | sed 's/.*: //'))"
  PIN=(taskset -c "$CPU_LIST")
fi
DIR="${DIR%/}"

CONF="$DIR/slurm.conf"
MUNGE_DIR="$DIR/munge"
MUNGE_SOCKET="$MUNGE_DIR/munge.socket"
MUNGE_PID="$MUNGE_DIR/munged.pid"
CTLD_PID="$DIR/run/slurmctld.pid"
LOG_DIR="$DIR/log"
export SLURM_CONF="$CONF"

node_names() { local i; for ((i = 1; i <= NODES; i++)); do echo "n$i"; done; }

# Pid from a pid file if that process is alive, else nothing.
live_pid() {
  local f="$1" pid
  [ -s "$f" ] || return 1
  pid="$(tr -dc '0-9' <"$f")"
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null && echo "$pid"
}

# The node names the running cluster was started with (from its config).
conf_nodes() {
  [ -f "$CONF" ] && sed -n 's/^NodeName=\([^ ]*\) .*/\1/p' "$CONF"
}

port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

check_system() {
  [ "$(id -u)" = 0 ] || die "must run as root (the daemons run as root; munged as user munge)"
  local missing="" b
  for b in munged slurmctld slurmd sbatch srun squeue sinfo scontrol scancel; do
    command -v "$b" >/dev/null 2>&1 || missing="$missing $b"
  done
  [ -z "$missing" ] || die "missing:$missing -- install the Debian packages: apt-get install slurm-wlm munge"
  getent passwd munge >/dev/null || die "no 'munge' user (is the munge package installed?)"
}

write_conf() {
  local host i file="$1"
  host="$(hostname -s)"
  {
    echo "# Written by scripts/slurm-cluster.sh: a ${NODES}-node Slurm on this machine."
    echo "# Daemons on CPUs: ${CPU_LIST:-all}"
    echo "ClusterName=rhapsody"
    echo "SlurmctldHost=${host}(127.0.0.1)"
    echo "SlurmctldPort=${CTLD_PORT}"
    echo "SlurmUser=root"
    echo "SlurmdUser=root"
    echo "AuthType=auth/munge"
    echo "CredType=cred/munge"
    echo "AuthInfo=socket=${MUNGE_SOCKET}"
    echo "StateSaveLocation=${DIR}/state"
    echo "SlurmdSpoolDir=${DIR}/spool/%n"
    echo "SlurmctldPidFile=${CTLD_PID}"
    echo "SlurmdPidFile=${DIR}/run/slurmd-%n.pid"
    echo "SlurmctldLogFile=${LOG_DIR}/slurmctld.log"
    echo "SlurmdLogFile=${LOG_DIR}/slurmd-%n.log"
    echo "SlurmctldDebug=info"
    echo "SlurmdDebug=info"
    echo "ProctrackType=proctrack/linuxproc"
    echo "TaskPlugin=task/none"
    echo "MpiDefault=none"
    echo "SchedulerType=sched/backfill"
    echo "SelectType=select/cons_tres"
    echo "SelectTypeParameters=CR_Core"
    echo "AccountingStorageType=accounting_storage/none"
    echo "JobAcctGatherType=jobacct_gather/none"
    echo "JobCompType=jobcomp/none"
    echo "ReturnToService=2"
    echo "EnforcePartLimits=${ENFORCE}"
    echo "SlurmctldTimeout=30"
    echo "SlurmdTimeout=30"
    echo "InactiveLimit=0"
    echo "KillWait=5"
    echo "MinJobAge=60"
    echo "Waittime=0"
    echo "MailProg=/bin/true"
    for ((i = 1; i <= NODES; i++)); do
      echo "NodeName=n${i} NodeHostname=${host} NodeAddr=127.0.0.1 Port=$((NODE_PORT + i - 1)) CPUs=${CPUS} RealMemory=${MEMORY} State=UNKNOWN"
    done
    echo "PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP"
    echo "PartitionName=short Nodes=ALL MaxTime=00:30:00 State=UP"
  } >"$file"
}

start_munge() {
  if live_pid "$MUNGE_PID" >/dev/null && [ -S "$MUNGE_SOCKET" ]; then
    return 0
  fi
  mkdir -p "$MUNGE_DIR"
  chown munge:munge "$MUNGE_DIR"
  chmod 0755 "$MUNGE_DIR"
  if [ ! -s "$MUNGE_DIR/munge.key" ]; then
    runuser -u munge -- mungekey --create --keyfile="$MUNGE_DIR/munge.key" 2>/dev/null \
      || { dd if=/dev/urandom of="$MUNGE_DIR/munge.key" bs=1024 count=1 status=none \
           && chown munge:munge "$MUNGE_DIR/munge.key"; }
    chmod 0400 "$MUNGE_DIR/munge.key"
  fi
  rm -f "$MUNGE_SOCKET" "$MUNGE_SOCKET.lock" "$MUNGE_PID"
  runuser -u munge -- "${PIN[@]}" munged --socket="$MUNGE_SOCKET" --key-file="$MUNGE_DIR/munge.key" \
    --pid-file="$MUNGE_PID" --log-file="$MUNGE_DIR/munged.log" \
    --seed-file="$MUNGE_DIR/munged.seed" \
    || die "munged did not start; $(tail -n 5 "$MUNGE_DIR/munged.log" 2>/dev/null)"
  local i
  for ((i = 0; i < 50; i++)); do
    [ -S "$MUNGE_SOCKET" ] && break
    sleep 0.1
  done
  munge --socket="$MUNGE_SOCKET" -n | unmunge --socket="$MUNGE_SOCKET" >/dev/null \
    || die "munge does not work on $MUNGE_SOCKET; see $MUNGE_DIR/munged.log"
}

# 0 when slurmctld and every slurmd named in the config are alive.
daemons_up() {
  local n
  live_pid "$CTLD_PID" >/dev/null || return 1
  for n in $(conf_nodes); do
    live_pid "$DIR/run/slurmd-$n.pid" >/dev/null || return 1
  done
  return 0
}

# 0 when every configured node answers as idle, mixed or allocated.
nodes_ready() {
  local states
  states="$(sinfo -h -N -o '%N %t' 2>/dev/null | sort -u)" || return 1
  [ -n "$states" ] || return 1
  local n
  for n in $(conf_nodes); do
    grep -Eq "^$n (idle|mix|alloc)$" <<<"$states" || return 1
  done
}

log_tails() {
  local f
  for f in "$LOG_DIR"/slurmctld.log "$LOG_DIR"/slurmd-*.log "$MUNGE_DIR/munged.log"; do
    [ -f "$f" ] || continue
    echo "---- tail $f" >&2
    tail -n 15 "$f" >&2
  done
  echo "---- sinfo" >&2
  sinfo -N -l 2>&1 | head -20 >&2 || true
}

cmd_start() {
  check_system
  mkdir -p "$DIR"
  chmod 0755 "$DIR"
  runuser -u munge -- test -x "$DIR" \
    || die "user munge cannot enter $DIR (a parent directory is not world-executable); pick another --dir"
  local want="$DIR/.slurm.conf.new"
  write_conf "$want"
  if daemons_up; then
    if ! cmp -s "$want" "$CONF"; then
      rm -f "$want"
      die "a cluster with other settings is running from $DIR; stop it first ($0 stop --dir $DIR)"
    fi
    rm -f "$want"
    if nodes_ready; then
      say "already up ($(conf_nodes | wc -l) nodes, SLURM_CONF=$CONF)"
      return 0
    fi
  else
    # Something is missing: stop what is left, then start everything afresh.
    if live_pid "$CTLD_PID" >/dev/null || ls "$DIR"/run/slurmd-*.pid >/dev/null 2>&1; then
      say "cluster partly up; restarting it"
      stop_daemons
    fi
    local p
    for p in "$CTLD_PORT" $(seq "$NODE_PORT" $((NODE_PORT + NODES - 1))); do
      port_in_use "$p" && die "port $p on 127.0.0.1 is in use (another Slurm?); pick other ports with --ctld-port/--node-port"
    done
    mv "$want" "$CONF"
    mkdir -p "$DIR/state" "$DIR/run" "$LOG_DIR"
    local n
    for n in $(node_names); do mkdir -p "$DIR/spool/$n"; done
    start_munge
    "${PIN[@]}" slurmctld -f "$CONF" -c -i || { log_tails; die "slurmctld did not start"; }
    for n in $(node_names); do
      "${PIN[@]}" slurmd -f "$CONF" -N "$n" || { log_tails; die "slurmd -N $n did not start"; }
    done
  fi
  local t0=$SECONDS
  until nodes_ready; do
    if ((SECONDS - t0 >= TIMEOUT)); then
      log_tails
      die "nodes not idle within ${TIMEOUT}s"
    fi
    # Nodes left DOWN by an earlier run come back on their own (ReturnToService=2),
    # but a node marked down by hand would not.
    sleep 0.5
  done
  say "up: $(conf_nodes | wc -l) nodes x ${CPUS} CPUs (daemons on CPUs ${CPU_LIST:-all}), partitions debug (default) and short, SLURM_CONF=$CONF"
}

# Stop slurmds and slurmctld by their pid files (TERM, then KILL after 10 s).
stop_daemons() {
  local f pid pids=""
  for f in "$DIR"/run/slurmd-*.pid "$CTLD_PID"; do
    [ -e "$f" ] || continue
    if pid="$(live_pid "$f")"; then
      kill -TERM "$pid" 2>/dev/null || true
      pids="$pids $pid"
    fi
  done
  local i
  for ((i = 0; i < 100; i++)); do
    local alive=""
    for pid in $pids; do kill -0 "$pid" 2>/dev/null && alive="$alive $pid"; done
    [ -z "$alive" ] && break
    sleep 0.1
  done
  for pid in $pids; do kill -KILL "$pid" 2>/dev/null || true; done
  rm -f "$DIR"/run/slurmd-*.pid "$CTLD_PID"
}

cmd_stop() {
  [ -d "$DIR" ] || { say "not running (no $DIR)"; return 0; }
  if live_pid "$CTLD_PID" >/dev/null && [ -f "$CONF" ]; then
    local jobs i
    jobs="$(squeue -h -o '%i' 2>/dev/null || true)"
    if [ -n "$jobs" ]; then
      say "cancelling jobs: $(echo $jobs)"
      # shellcheck disable=SC2086
      scancel $jobs 2>/dev/null || true
      for ((i = 0; i < 60; i++)); do
        [ -z "$(squeue -h -o '%i' 2>/dev/null)" ] && break
        sleep 0.5
      done
    fi
  fi
  stop_daemons
  local pid
  if pid="$(live_pid "$MUNGE_PID")"; then
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 50; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$MUNGE_PID"
  say "stopped ($DIR)"
}

cmd_status() {
  local up=0 f pid
  echo "work dir: $DIR"
  echo "SLURM_CONF=$CONF"
  if pid="$(live_pid "$MUNGE_PID")"; then echo "munged:    pid $pid"; else echo "munged:    down"; fi
  if pid="$(live_pid "$CTLD_PID")"; then
    echo "slurmctld: pid $pid, on CPUs $(taskset -cp "$pid" 2>/dev/null | sed 's/.*: //')"
  else echo "slurmctld: down"; up=1; fi
  local n
  for n in $(conf_nodes); do
    f="$DIR/run/slurmd-$n.pid"
    if pid="$(live_pid "$f")"; then echo "slurmd $n: pid $pid"; else echo "slurmd $n: down"; up=1; fi
  done
  [ -f "$CONF" ] || up=1
  if [ "$up" = 0 ]; then
    sinfo 2>&1 || true
    squeue 2>&1 || true
    nodes_ready || up=1
  fi
  return "$up"
}

case "$CMD" in
  start) cmd_start ;;
  stop) cmd_stop ;;
  status) cmd_status ;;
  env) echo "export SLURM_CONF=$CONF" ;;
  -h|--help|help) usage ;;
  *) usage >&2; exit 2 ;;
esac
