#!/usr/bin/env bash
# RANK_SIZE training processes on this host (default 8), one per device, from an Ascend-style rank table.
#
#   bash run_8p.sh --training_file_pattern=... --model_dir=... [more ssd_main flags]
#
# Every argument goes to ssd_main.py unchanged. Each rank r additionally gets
#   --rank_table_file=<table> --rank_id=<r> (and --strategy=multi_worker when the table has more than one rank)
# before the user's arguments, so a user --strategy still wins. --rank_id must not be passed.
#
# Environment:
#   RANK_SIZE         ranks started on this host (default 8)
#   RANK_START        rank id of the first rank started here (default 0): on a multi-host table, run this script
#                     on every host with RANK_START = the first rank id that the table assigns to that host
#   RANK_TABLE_FILE   rank table (JSON, group_list or server_list format); a --rank_table_file=PATH argument wins.
#                     Neither given: a table for RANK_SIZE devices of this host (server_id 0.0.0.0 -> 127.0.0.1)
#                     is written to $LOG_DIR/rank_table_<RANK_SIZE>p.json
#   LOG_DIR           per-rank logs: $LOG_DIR/D<rank>/train.log and .../pid (default: ./training beside this script)
#   ACCELERATOR       auto (default) | gpu | npu | cpu: how each rank is pinned to the table's device_id:
#                     gpu -> CUDA_VISIBLE_DEVICES, npu -> ASCEND_DEVICE_ID, cpu -> not pinned (every rank sees the
#                     whole CPU). auto: gpu if `nvidia-smi -L` lists a GPU, npu if /dev/davinci0 exists, else cpu.
#                     Every rank also gets RANK_ID, RANK_SIZE (ranks in the table) and DEVICE_ID in its environment
#   RUN_TIMEOUT       seconds; when set and exceeded, every rank is stopped and the script exits 124
#   POLL_SECONDS      how often the ranks are checked (default 1)
#   TAIL_LINES        lines of a failed rank's log printed (default 40)
#   PYTHON            interpreter (default: python of the environment set up by scripts/ensure_env.sh)
#   TF_CONFIG         ignored by the ranks (unset for them): the rank table defines the cluster
#
#   FAIL_GRACE        after a rank failed, seconds the others get to exit by themselves (they then log why,
#                     e.g. "a collective operation with the other workers failed") before they are stopped (15)
#
# Exit status: 0 when every rank exits 0. When a rank fails, the log tail of every failed rank is printed (the
# first failure first), the ranks still running are stopped (SIGTERM, then SIGKILL after 10 s) and the script
# exits with the status of the first failure (128+N: killed by signal N; ssd_main exits 2 on a usage error, 3
# when the loss diverged, 4 when a collective with the other workers failed).
# Ctrl-C / SIGTERM stop every rank too: no rank outlives the script.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")" && pwd)"
# Relative paths (in flags, RANK_TABLE_FILE, LOG_DIR) are the caller's: every rank runs in the caller's directory.
. "$ROOT/scripts/ensure_env.sh"

RANK_SIZE="${RANK_SIZE:-8}"
RANK_START="${RANK_START:-0}"
LOG_DIR="${LOG_DIR:-$ROOT/training}"
POLL_SECONDS="${POLL_SECONDS:-1}"
PY="${PYTHON:-python}"
ACCELERATOR="${ACCELERATOR:-auto}"

die() { echo "run_8p.sh: $*" >&2; exit 2; }
[[ "$RANK_SIZE" =~ ^[1-9][0-9]*$ ]] || die "RANK_SIZE must be a positive integer, got '$RANK_SIZE'"
[[ "$RANK_START" =~ ^[0-9]+$ ]] || die "RANK_START must be a non-negative integer, got '$RANK_START'"
[ -z "${RUN_TIMEOUT:-}" ] || [[ "$RUN_TIMEOUT" =~ ^[0-9]+$ ]] || die "RUN_TIMEOUT must be whole seconds, got '$RUN_TIMEOUT'"
[[ "${FAIL_GRACE:-15}" =~ ^[0-9]+$ ]] || die "FAIL_GRACE must be whole seconds, got '$FAIL_GRACE'"

table="${RANK_TABLE_FILE:-}"
for arg in "$@"; do
  case "$arg" in
    --rank_table_file=*) table="${arg#--rank_table_file=}" ;;
    --rank_table_file) die "write --rank_table_file=PATH (one argument)" ;;
    --rank_id|--rank_id=*) die "--rank_id is set per rank by this script; do not pass it" ;;
    --worker_hosts|--worker_hosts=*|--task_index|--task_index=*)
      die "$arg conflicts with the rank table (worker hosts win over it in ssd_main); use run_1p.sh or ssd_main.py" ;;
  esac
done
mkdir -p "$LOG_DIR"
if [ -z "$table" ]; then
  table="$LOG_DIR/rank_table_${RANK_SIZE}p.json"
  "$PY" -c 'import sys; from ssd_tf.distribute.cluster import write_local_rank_table as w; w(sys.argv[1], int(sys.argv[2]))' \
    "$table" "$RANK_SIZE"
  echo "run_8p.sh: wrote a rank table for $RANK_SIZE local devices: $table"
fi
case "$table" in /*) ;; *) table="$PWD/$table" ;; esac

# "<rank_id> <device_id> <table size>" for the ranks started here; validates the table (errors name the file).
plan="$("$PY" - "$table" "$RANK_START" "$RANK_SIZE" <<'EOF'
import sys
from ssd_tf.distribute.cluster import ClusterConfigError, load_rank_table
path, start, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
try:
    devices = load_rank_table(path)
except ClusterConfigError as e:
    sys.exit(f"run_8p.sh: {e}")
if start + size > len(devices):
    sys.exit(f"run_8p.sh: RANK_START={start} + RANK_SIZE={size} ranks, but rank table {path} lists only "
             f"{len(devices)} ranks")
for d in devices[start:start + size]:
    print(d.rank_id, d.device_id, len(devices))
EOF
)" || exit 2

if [ "$ACCELERATOR" = auto ]; then
  # grep reads all of nvidia-smi's list (grep -q may leave early, and pipefail would count nvidia-smi's SIGPIPE)
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L 2>/dev/null | grep '^GPU' >/dev/null; then ACCELERATOR=gpu
  elif [ -e /dev/davinci0 ]; then ACCELERATOR=npu
  else ACCELERATOR=cpu; fi
fi
case "$ACCELERATOR" in gpu|npu|cpu) ;; *) die "ACCELERATOR must be auto, gpu, npu or cpu, got '$ACCELERATOR'" ;; esac

declare -a RANKS=() PIDS=()
cleanup() {
  local alive=() pid
  trap - INT TERM
  for pid in "${PIDS[@]}"; do
    if kill -0 "$pid" 2>/dev/null; then
      alive+=("$pid"); kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
    fi
  done
  [ ${#alive[@]} -eq 0 ] && return 0
  for _ in $(seq 1 20); do  # up to 10 s for a clean exit
    local any=0
    for pid in "${alive[@]}"; do kill -0 "$pid" 2>/dev/null && any=1; done
    [ $any -eq 0 ] && break
    sleep 0.5
  done
  for pid in "${alive[@]}"; do kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT
trap 'echo "run_8p.sh: interrupted, stopping all ranks" >&2; exit 130' INT
trap 'echo "run_8p.sh: terminated, stopping all ranks" >&2; exit 143' TERM

unset TF_CONFIG
while read -r rank device total; do
  extra=(--rank_table_file="$table" --rank_id="$rank")
  [ "$total" -gt 1 ] && extra+=(--strategy=multi_worker)
  dir="$LOG_DIR/D$rank"
  mkdir -p "$dir"
  (
    export RANK_ID="$rank" RANK_SIZE="$total" DEVICE_ID="$device"
    case "$ACCELERATOR" in
      gpu) export CUDA_VISIBLE_DEVICES="$device" ;;
      npu) export ASCEND_DEVICE_ID="$device" ;;
    esac
    # setsid: each rank is its own process group, so stopping it also stops anything it started.
    exec setsid -w "$PY" "$ROOT/ssd_main.py" "${extra[@]}" "$@"
  ) >"$dir/train.log" 2>&1 &
  RANKS+=("$rank"); PIDS+=("$!")
  echo "$!" >"$dir/pid"
  echo "run_8p.sh: rank $rank (device $device, $ACCELERATOR) pid $! -> $dir/train.log"
done <<<"$plan"

start=$SECONDS
remaining=${#PIDS[@]}
failed=()        # "rank:pid:status" in the order the failures were seen
declare -A DONE=()
reap() {  # collect every rank that has exited since the last call
  local i pid rc reactions=()
  for i in "${!PIDS[@]}"; do
    pid="${PIDS[$i]}"
    [ -n "${DONE[$pid]:-}" ] && continue
    kill -0 "$pid" 2>/dev/null && continue
    rc=0; wait "$pid" || rc=$?
    DONE[$pid]=1; remaining=$((remaining - 1))
    if [ "$rc" -eq 4 ]; then reactions+=("${RANKS[$i]}:$pid:$rc")  # a collective failed: it reacted to another rank
    elif [ "$rc" -ne 0 ]; then failed+=("${RANKS[$i]}:$pid:$rc")
    else echo "run_8p.sh: rank ${RANKS[$i]} finished"; fi
  done
  # Ranks seen exiting in the same poll: the one that failed by itself comes before those that reacted to it
  # (exit 4), whatever their rank order.
  [ ${#reactions[@]} -eq 0 ] || failed+=("${reactions[@]}")
}
while [ "$remaining" -gt 0 ]; do
  reap
  if [ ${#failed[@]} -gt 0 ]; then
    # Give the other ranks FAIL_GRACE seconds to notice and exit with their own error message.
    grace_end=$((SECONDS + ${FAIL_GRACE:-15}))
    while [ "$remaining" -gt 0 ] && [ "$SECONDS" -lt "$grace_end" ]; do sleep 0.5; reap; done
    for f in "${failed[@]}"; do
      IFS=: read -r rank pid rc <<<"$f"
      log="$LOG_DIR/D$rank/train.log"
      {
        echo "run_8p.sh: rank $rank (pid $pid) failed with exit status $rc$([ "$rc" -gt 128 ] && echo " (signal $((rc - 128)))")"
        echo "----- last ${TAIL_LINES:-40} lines of $log -----"
        tail -n "${TAIL_LINES:-40}" "$log" || true
        echo "----- end of rank $rank log -----"
      } >&2
    done
    IFS=: read -r rank _ rc <<<"${failed[0]}"
    echo "run_8p.sh: rank $rank failed first; stopping the $remaining rank(s) still running" >&2
    exit "$rc"
  fi
  if [ -n "${RUN_TIMEOUT:-}" ] && [ $((SECONDS - start)) -ge "$RUN_TIMEOUT" ]; then
    echo "run_8p.sh: RUN_TIMEOUT=${RUN_TIMEOUT}s exceeded with $remaining rank(s) running; stopping them" >&2
    exit 124
  fi
  [ "$remaining" -gt 0 ] && sleep "$POLL_SECONDS"
done
echo "run_8p.sh: all $RANK_SIZE rank(s) finished; logs in $LOG_DIR/D<rank>/train.log"
