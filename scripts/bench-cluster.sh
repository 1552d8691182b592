#!/usr/bin/env bash
# scripts/bench-cluster.sh - a three-node scoutgw cluster on this machine (issue 7).
#
# Makes a filesystem with three quorum slots on two sparse device files and runs three
# `scoutgw serve` nodes (release build) on 127.0.0.1, 127.0.0.2 and 127.0.0.3 (same ports,
# one address each; quorum slot i on 127.0.0.(i+1)). Then measures:
#
#   1. failover: SCOUTGW_BENCH_FAILOVERS rounds of: wait until the three nodes agree on a
#      leader and are connected to it, kill -9 the leader, then try a small nfs-cp write
#      (a fresh file) through a random surviving node, again and again, until one succeeds;
#      failover time = kill -> that success (`date +%s.%N`). The written file is read back
#      through the other survivor and compared. The killed node is restarted (same config)
#      before the next round. Median and worst, and the ratio median / 5 s (the issue's aim:
#      below 1).
#   2. aggregate write throughput: 1, 2 and 3 nodes (slots 0..k-1) each writing its own
#      SCOUTGW_BENCH_MIB MiB file at the same time with nfs-cp, from random files in
#      /dev/shm (page cache); MB/s (10^6 bytes/s) = all bytes / (first start -> last end).
#      Also the scoutgw processes' CPU time (/proc/PID/stat) and how busy the machine was
#      (/proc/stat, all processes). Every file is read back through another node (slot i+1 mod 3) and its sha256
#      compared with the source's (any difference fails the script). SCOUTGW_BENCH_REPEAT
#      rounds of (1, 2, 3); medians; ratios against the 1-node median.
#   3. lock round trip: `cargo bench -p scoutgw-cluster --bench cluster_locks` (in one
#      process; it prints its own anchor and ratios), its lines copied into the summary.
#
# At the end the nodes are stopped with SIGTERM (staged: one follower, then the last two
# together, since the last quorum members' farewells are answered together; together: all
# three at once), exit statuses are collected, the devices are checked
# with `scoutgw fsck`, and the node logs are searched for panics, errors and warnings.
# The work dir (devices, configs, node state) is removed on exit; the logs, raw results
# and the summary stay in SCOUTGW_BENCH_OUT.
#
# usage: scripts/bench-cluster.sh
# knobs: SCOUTGW_BENCH_FAILOVERS=20 SCOUTGW_BENCH_MIB=512 SCOUTGW_BENCH_REPEAT=3
#        SCOUTGW_BENCH_DIR=./target/bench-cluster (work dir: $DIR/work, results: $DIR/results-<date>)
#        SCOUTGW_BENCH_OUT=$SCOUTGW_BENCH_DIR/results-<date>
#        SCOUTGW_BENCH_NFS_PORT=17049 SCOUTGW_BENCH_HTTP_PORT=17080 SCOUTGW_BENCH_QUORUM_PORT=17100
#        SCOUTGW_BENCH_LOCKS=1 (0: skip the cluster_locks bench)
#        SCOUTGW_BENCH_ATTEMPT_TIMEOUT=30 (s, one nfs-cp attempt during a failover)
#        SCOUTGW_BENCH_STOP=staged|together (how the nodes are stopped at the end, see above)
# needs: libnfs-utils (nfs-cp), curl, jq, bc
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)

FAILOVERS=${SCOUTGW_BENCH_FAILOVERS:-20}
MIB=${SCOUTGW_BENCH_MIB:-512}
REPEAT=${SCOUTGW_BENCH_REPEAT:-3}
BASE=${SCOUTGW_BENCH_DIR:-./target/bench-cluster}
NFS_PORT=${SCOUTGW_BENCH_NFS_PORT:-17049}
HTTP_PORT=${SCOUTGW_BENCH_HTTP_PORT:-17080}
QUORUM_PORT=${SCOUTGW_BENCH_QUORUM_PORT:-17100}
LOCKS=${SCOUTGW_BENCH_LOCKS:-1}
ATTEMPT_TIMEOUT=${SCOUTGW_BENCH_ATTEMPT_TIMEOUT:-30}
STOP=${SCOUTGW_BENCH_STOP:-staged}
NODES=3
AIM=5

die() { echo "bench-cluster: $*" >&2; exit 2; }
log() { echo "[$(date +%H:%M:%S)] $*" >&2; }
now() { date +%s.%N; }
for t in nfs-cp curl jq bc sha256sum timeout; do
  command -v "$t" > /dev/null || die "missing $t (apt: libnfs-utils curl jq bc)"
done
mkdir -p "$BASE"
BASE=$(cd "$BASE" && pwd)
WORK=$BASE/work
OUT=${SCOUTGW_BENCH_OUT:-$BASE/results-$(date +%Y%m%d-%H%M%S)}
mkdir -p "$OUT"
SHM=/dev/shm/bench-cluster-$$
SCOUTGW=$REPO/target/release/scoutgw
RES=$OUT/results.tsv   # kind  round  detail...
: > "$RES"
SUMMARY=$OUT/summary.txt

# --- nodes -----------------------------------------------------------------------------
declare -a PIDS=("" "" "")
ip_of() { echo "127.0.0.$(($1 + 1))"; }
nfs_url() { echo "nfs://$(ip_of "$1")//$2?version=3&nfsport=$NFS_PORT&mountport=$NFS_PORT"; }
api() { curl -sf --max-time 2 "http://$(ip_of "$1"):$HTTP_PORT/v1/cluster"; }

write_config() {   # slot
  local i=$1 ip
  ip=$(ip_of "$i")
  mkdir -p "$WORK/n$i"
  cat > "$WORK/n$i.toml" << EOF
[node]
meta_device = "$WORK/meta.dev"
data_device = "$WORK/data.dev"
state_dir = "$WORK/n$i"

[nfs]
bind = "$ip:$NFS_PORT"

[http]
bind = "$ip:$HTTP_PORT"

[cluster]
quorum_slot = $i
EOF
}
# Each node runs under a small subshell (JOBS) that logs its exit status; PIDS holds the
# scoutgw process itself, read from state_dir/scoutgw.pid once it serves.
declare -a JOBS=("" "" "")
SERVING=(0 0 0)
launch_node() {   # slot: start its process (same config every time), log appended to node<slot>.log
  local i=$1 lg=$OUT/node$1.log
  SERVING[i]=$(grep -c 'serving NFSv3' "$lg" 2> /dev/null || true)
  echo "=== $(date -Iseconds) start" >> "$lg"
  ( rc=0; NO_COLOR=1 "$SCOUTGW" serve --config "$WORK/n$i.toml" >> "$lg" 2>&1 || rc=$?
    echo "=== $(date -Iseconds) exit $rc" >> "$lg" ) 2> /dev/null &
  JOBS[i]=$!
  PIDS[i]=""
}
wait_serving() {   # slot: wait (120 s) for a new "serving NFSv3" line on its stdout
  local i=$1 lg=$OUT/node$1.log p
  for _ in $(seq 600); do
    if [ "$(grep -c 'serving NFSv3' "$lg" 2> /dev/null || true)" -gt "${SERVING[i]:-0}" ]; then
      p=$(cat "$WORK/n$i/scoutgw.pid")
      [ "$(awk '{print $4}' "/proc/$p/stat" 2> /dev/null)" = "${JOBS[i]}" ] ||
        die "node $i: the pid file ($p) does not name the process this script started"
      PIDS[i]=$p
      return 0
    fi
    kill -0 "${JOBS[i]}" 2> /dev/null || { tail -n 20 "$lg" >&2; die "node $i exited while starting (see $lg)"; }
    sleep 0.2
  done
  die "node $i did not start within 120 s (see $lg)"
}
node_pid() {   # slot: the scoutgw process of that node's job, if any
  local i=$1 p=${PIDS[$1]}
  if [ -z "$p" ] && [ -n "${JOBS[i]}" ] && [ -f "$WORK/n$i/scoutgw.pid" ]; then
    p=$(cat "$WORK/n$i/scoutgw.pid")
    [ "$(awk '{print $4}' "/proc/$p/stat" 2> /dev/null)" = "${JOBS[i]}" ] || p=""
  fi
  echo "$p"
}
reap_node() {   # slot: wait up to 60 s for its job to end (after a SIGTERM), then SIGKILL
  local i=$1 p j=${JOBS[$1]}
  p=$(node_pid "$i")
  [ -n "$j" ] || return 0
  for _ in $(seq 300); do
    kill -0 "$j" 2> /dev/null || break
    sleep 0.2
  done
  if kill -0 "$j" 2> /dev/null; then
    echo "node $i (pid $p) ignored SIGTERM for 60 s, killed" | tee -a "$OUT/problems.txt" >&2
    [ -n "$p" ] && kill -KILL "$p" 2> /dev/null
  fi
  wait "$j" 2> /dev/null || true
  PIDS[i]=""; JOBS[i]=""
}
leader_slot() {   # the leader as the nodes see it: prints the slot when every live node agrees
  local i j s="" first=1
  for i in "${!PIDS[@]}"; do
    [ -n "${PIDS[i]}" ] || continue
    j=$(api "$i" 2> /dev/null) || return 1
    # agreed leader, this node's mount connected to it
    j=$(jq -r 'if .leader != null and .this_node.connected then "\(.leader.slot)" else "none" end' <<< "$j") || return 1
    [ "$j" != none ] || return 1
    if [ $first = 1 ]; then s=$j; first=0; elif [ "$s" != "$j" ]; then return 1; fi
  done
  [ -n "$s" ] && [ "$(api "$s" | jq -r .this_node.role)" = leader ] || return 1
  echo "$s"
}
wait_stable() {   # wait (120 s) until every live node agrees on a leader and is connected
  local s
  for _ in $(seq 600); do
    s=$(leader_slot) && { echo "$s"; return 0; }
    sleep 0.2
  done
  for i in "${!PIDS[@]}"; do echo "node $i: $(api "$i" || echo unreachable)" >&2; done
  die "the cluster did not settle within 120 s"
}
stop_all() {   # one follower first, then the last two (a majority) together, as they must leave
  local i p l
  l=$(leader_slot 2> /dev/null) || l=""
  if [ "$STOP" = staged ] && [ -n "$l" ]; then
    for i in "${!JOBS[@]}"; do
      [ "$i" != "$l" ] && [ -n "${JOBS[i]}" ] || continue
      p=$(node_pid "$i")
      [ -z "$p" ] || kill -TERM "$p" 2> /dev/null || true
      reap_node "$i"
      break
    done
  fi
  for i in "${!JOBS[@]}"; do
    p=$(node_pid "$i")
    [ -z "$p" ] || kill -TERM "$p" 2> /dev/null || true
  done
  for i in "${!JOBS[@]}"; do reap_node "$i"; done
}
cleanup() {
  local rc=$?
  set +e
  stop_all
  rm -rf "$WORK" "$SHM"
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- setup -----------------------------------------------------------------------------
# data device: every throughput round leaves 1+2+3 files of MIB MiB (nfs-cp cannot delete)
DATA_MIB=$(((6 * REPEAT * MIB) * 5 / 4 + 2048))
[ "$DATA_MIB" -ge 8192 ] || DATA_MIB=8192
{
  echo "bench-cluster $(date -Iseconds) on $(hostname): $(nproc) CPUs, $(free -g | awk '/^Mem:/ {print $2}') GiB RAM, $(uname -r)"
  echo "git $(git rev-parse --short HEAD 2> /dev/null || echo '?')$(git diff --quiet HEAD -- gateway cluster blockdev 2> /dev/null || echo ' (+ uncommitted changes in gateway/cluster/blockdev)')"
  echo "FAILOVERS=$FAILOVERS MIB=$MIB REPEAT=$REPEAT NFS_PORT=$NFS_PORT HTTP_PORT=$HTTP_PORT QUORUM_PORT=$QUORUM_PORT"
  echo "devices: $WORK (meta 1 GiB, data $DATA_MIB MiB, sparse) on $(df -T "$BASE" | awk 'NR == 2 {print $2 " (" $1 ")"}'); libnfs-utils $(dpkg-query -W -f='${Version}' libnfs-utils 2> /dev/null || echo '?')"
  echo "load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
} | tee "$OUT/setup.txt" >&2
avail=$(df -Pm "$BASE" | awk 'NR == 2 {print $4}')
[ "$avail" -gt $((6 * REPEAT * MIB + 2048)) ] || die "$BASE has $avail MiB free, the runs write $((6 * REPEAT * MIB)) MiB"

log "building scoutgw (release)"
cargo build --release --bin scoutgw -q || die "cargo build failed"

rm -rf "$WORK"
mkdir -p "$WORK" "$SHM"
truncate -s 1G "$WORK/meta.dev"
truncate -s "${DATA_MIB}M" "$WORK/data.dev"
slots=()
for i in $(seq 0 $((NODES - 1))); do slots+=(-Q "$i,$(ip_of "$i"),$QUORUM_PORT"); write_config "$i"; done
"$SCOUTGW" mkfs -A "${slots[@]}" "$WORK/meta.dev" "$WORK/data.dev" > "$OUT/mkfs.log" 2>&1 || { cat "$OUT/mkfs.log"; die "mkfs failed"; }
log "starting $NODES nodes"
for i in $(seq 0 $((NODES - 1))); do launch_node "$i"; done   # a mount needs a majority
for i in $(seq 0 $((NODES - 1))); do wait_serving "$i"; done
L=$(wait_stable)
log "cluster up, leader slot $L"

rec() { local IFS=$'\t'; echo "$*" >> "$RES"; }
median() { sort -g | awk '{ v[NR] = $1 } END { if (NR == 0) print "nan"; else if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
worst() { sort -g | tail -n1; }

# --- 1. failover ------------------------------------------------------------------------
head -c 4096 /dev/urandom > "$SHM/small"
failover_round() {   # round
  local r=$1 l lpid n other att=0 name t0 t1 dt info rc
  l=$(wait_stable)
  lpid=$(cat "$WORK/n$l/scoutgw.pid")
  [ "$lpid" = "${PIDS[l]}" ] || die "node $l: pid file says $lpid, started ${PIDS[l]}"
  local survivors=()
  for n in "${!PIDS[@]}"; do [ "$n" = "$l" ] || survivors+=("$n"); done
  echo "=== round $r: kill -9 leader slot $l (pid $lpid)" >> "$OUT/failover-attempts.log"
  t0=$(now)
  kill -KILL "$lpid"
  while :; do
    att=$((att + 1))
    n=${survivors[$((RANDOM % ${#survivors[@]}))]}
    name=failover-$r-$att
    rc=0
    timeout "$ATTEMPT_TIMEOUT" nfs-cp "$SHM/small" "$(nfs_url "$n" "$name")" > /dev/null 2>> "$OUT/failover-attempts.log" || rc=$?
    if [ $rc = 0 ]; then t1=$(now); break; fi
    echo "  $(date +%T.%N | cut -c1-12) +$(echo "$(now) - $t0" | bc | cut -c1-6) s: attempt $att via slot $n failed (rc $rc)" >> "$OUT/failover-attempts.log"
    [ "$(echo "$(now) - $t0 > 300" | bc)" = 0 ] || die "round $r: no write succeeded within 300 s of the kill (see $OUT/failover-attempts.log)"
    sleep 0.05
  done
  wait "${JOBS[l]}" 2> /dev/null || true
  PIDS[l]=""; JOBS[l]=""
  dt=$(echo "$t1 - $t0" | bc)
  # the acknowledged write must be there through the other survivor
  for other in "${survivors[@]}"; do [ "$other" = "$n" ] || break; done
  rm -f "$SHM/small.back"
  nfs-cp "$(nfs_url "$other" "$name")" "$SHM/small.back" > /dev/null 2>> "$OUT/failover-attempts.log" &&
    cmp -s "$SHM/small" "$SHM/small.back" ||
    { echo "round $r: $name written via slot $n does not read back the same via slot $other" | tee -a "$OUT/problems.txt" >&2; exit 1; }
  info=$(api "$n" | jq -r '"\(.leader.slot)\t\(.term)"') || info=$'?\t?'
  rec failover "$r" "$l" "$n" "$att" "$dt" "$info" "$t0"
  printf '  round %2d: leader slot %s killed; write via slot %s succeeded at attempt %d after %.3f s (new leader slot %s, term %s)\n' \
    "$r" "$l" "$n" "$att" "$dt" "${info%%$'\t'*}" "${info##*$'\t'}" | tee -a "$OUT/failover.txt" >&2
  launch_node "$l"
  wait_serving "$l"
}
log "failover: $FAILOVERS rounds"
for r in $(seq "$FAILOVERS"); do failover_round "$r"; done

# --- 2. aggregate write throughput -----------------------------------------------------
if [ "$REPEAT" -gt 0 ]; then
log "throughput: making $NODES random source files of $MIB MiB in /dev/shm"
declare -a SUM
for i in $(seq 0 $((NODES - 1))); do
  head -c "$((MIB << 20))" /dev/urandom > "$SHM/src$i"
  SUM[i]=$(sha256sum < "$SHM/src$i" | cut -d' ' -f1)
done
VERIFIED=0
HZ=$(getconf CLK_TCK)
node_ticks() {   # CPU ticks (user + system) of the running scoutgw processes
  local i t=0 p
  for i in "${!PIDS[@]}"; do
    p=${PIDS[i]}
    [ -n "$p" ] && [ -r "/proc/$p/stat" ] || continue
    t=$((t + $(awk '{ print $14 + $15 }' "/proc/$p/stat")))
  done
  echo "$t"
}
machine_ticks() { awk '$1 == "cpu" { print $2 + $3 + $4 + $7 + $8 + $9, $6, $2 + $3 + $4 + $5 + $6 + $7 + $8 + $9 }' /proc/stat; }   # busy iowait total
throughput_round() {   # repeat k: k nodes (slots 0..k-1) each write their own file at once
  local rep=$1 k=$2 i t0 t1 dt jobs=() rc=0 mbs l per=""
  l=$(wait_stable)
  sync
  local n0 m0 n1 m1 cpu
  n0=$(node_ticks); m0=$(machine_ticks)
  t0=$(now)
  for i in $(seq 0 $((k - 1))); do
    ( nfs-cp "$SHM/src$i" "$(nfs_url "$i" "tp-$rep-$k-$i")" > /dev/null 2>> "$OUT/throughput-errors.log" && now > "$SHM/end$i" ) &
    jobs+=($!)
  done
  for i in "${jobs[@]}"; do wait "$i" || rc=1; done
  t1=$(now)
  n1=$(node_ticks); m1=$(machine_ticks)
  # nodes' CPU seconds; machine busy and iowait as % of all CPUs over the round
  cpu=$(echo "$n0 $n1 $m0 $m1" | awk -v hz="$HZ" '{ tot = $8 - $5; printf "%.1f %.0f %.0f", ($2 - $1) / hz, 100 * ($6 - $3) / tot, 100 * ($7 - $4) / tot }')
  [ $rc = 0 ] || { echo "throughput repeat $rep, $k nodes: an nfs-cp write failed (see $OUT/throughput-errors.log)" | tee -a "$OUT/problems.txt" >&2; exit 1; }
  dt=$(echo "$t1 - $t0" | bc)
  mbs=$(echo "scale=1; $k * $MIB * 1048576 / $dt / 1000000" | bc)
  for i in $(seq 0 $((k - 1))); do
    per+=" $(echo "scale=1; $MIB * 1048576 / ($(cat "$SHM/end$i") - $t0) / 1000000" | bc)"
  done
  rec throughput "$rep" "$k" "$dt" "$mbs" "$l" "${per# }" "$cpu"
  set -- $cpu
  printf '  repeat %d, %d node(s): %s MB/s in %.2f s (per node:%s MB/s; leader slot %s; nodes %s CPU-s = %.1f ms/MiB, machine %s%% busy, %s%% iowait)\n' \
    "$rep" "$k" "$mbs" "$dt" "$per" "$l" "$1" "$(echo "$1 * 1000 / ($k * $MIB)" | bc -l)" "$2" "$3" | tee -a "$OUT/throughput.txt" >&2
  # read every file back through another node
  for i in $(seq 0 $((k - 1))); do
    local o=$(((i + 1) % NODES)) got
    rm -f "$SHM/back"
    nfs-cp "$(nfs_url "$o" "tp-$rep-$k-$i")" "$SHM/back" > /dev/null 2>> "$OUT/throughput-errors.log" ||
      { echo "read back of tp-$rep-$k-$i via slot $o failed" | tee -a "$OUT/problems.txt" >&2; exit 1; }
    got=$(sha256sum < "$SHM/back" | cut -d' ' -f1)
    rm -f "$SHM/back"
    [ "$got" = "${SUM[i]}" ] || { echo "DATA MISMATCH: tp-$rep-$k-$i written via slot $i, read via slot $o: sha256 $got, expected ${SUM[i]}" | tee -a "$OUT/problems.txt" >&2; exit 1; }
    VERIFIED=$((VERIFIED + 1))
  done
}
log "throughput: $REPEAT repeats of 1, 2, $NODES writers x $MIB MiB"
for rep in $(seq "$REPEAT"); do
  for k in $(seq 1 "$NODES"); do throughput_round "$rep" "$k"; done
done
rm -f "$SHM"/src*
fi

# --- stop, fsck, logs ------------------------------------------------------------------
log "stopping the nodes (SIGTERM, $STOP)"
t0=$(now)
stop_all
STOP_SECS=$(echo "$(now) - $t0" | bc)
FSCK_RC=0
"$SCOUTGW" fsck "$WORK/meta.dev" "$WORK/data.dev" > "$OUT/fsck.txt" 2>&1 || FSCK_RC=$?
[ $FSCK_RC = 0 ] || { echo "fsck exit $FSCK_RC (see $OUT/fsck.txt)" >> "$OUT/problems.txt"; }

# --- 3. lock round trip ----------------------------------------------------------------
if [ "$LOCKS" = 1 ]; then
  log "lock round trip: cargo bench -p scoutgw-cluster --bench cluster_locks"
  SCOUTGW_BENCH_DIR=$WORK cargo bench -q -p scoutgw-cluster --bench cluster_locks > "$OUT/cluster_locks.txt" 2>&1 ||
    { tail -n 20 "$OUT/cluster_locks.txt" >&2; echo "cluster_locks bench failed" >> "$OUT/problems.txt"; }
fi

# --- summary ---------------------------------------------------------------------------
fo() { awk -F'\t' '$1 == "failover" { print $6 }' "$RES"; }
log_time() {   # slot pattern: epoch seconds of the first log line of node <slot> matching pattern
  local ts
  ts=$(sed 's/\x1b\[[0-9;]*m//g' "$OUT/node$1.log" | grep -m1 -F "$2" | cut -d' ' -f1) || true
  [ -n "$ts" ] && date -d "$ts" +%s.%N || echo ""
}
breakdown() {   # per round, from the node logs: kill -> new server up -> writer's mount connected
  local r l n att dt nl term t0 up con
  while IFS=$'\t' read -r _ r l n att dt nl term t0; do
    up=$(log_time "$nl" "server of term $term is up")
    con=$(log_time "$n" "connected to the server of term $term")
    if [ -n "$up" ] && [ -n "$con" ]; then
      printf '  round %2d: kill -> server of term %s up on slot %s %.3f s -> mount of slot %s connected %.3f s -> write done %.3f s\n' \
        "$r" "$term" "$nl" "$(echo "$up - $t0" | bc)" "$n" "$(echo "$con - $t0" | bc)" "$dt"
      echo "$(echo "$up - $t0" | bc) $(echo "$con - $up" | bc)" >> "$SHM/breakdown"
    fi
  done < <(awk -F'\t' '$1 == "failover"' "$RES")
}
tp() { awk -F'\t' -v k="$1" '$1 == "throughput" && $3 == k { print $5 }' "$RES"; }
{
  echo
  echo "== scoutgw cluster bench ($NODES nodes on 127.0.0.1-3, one machine) =="
  cat "$OUT/setup.txt"
  echo "load average at end: $(cut -d' ' -f1-3 /proc/loadavg)"
  echo
  if [ "$FAILOVERS" -gt 0 ]; then
    echo "-- 1. failover: kill -9 the leader -> first successful nfs-cp write (4 KiB) through a random survivor, $FAILOVERS rounds"
    cat "$OUT/failover.txt"
    fmed=$(fo | median); fworst=$(fo | worst); fbest=$(fo | sort -g | head -n1)
    printf '  median %.3f s, worst %.3f s, best %.3f s; median / %d s aim = %.2f, worst / aim = %.2f (< 1: aim met)\n' \
      "$fmed" "$fworst" "$fbest" "$AIM" "$(echo "$fmed / $AIM" | bc -l)" "$(echo "$fworst / $AIM" | bc -l)"
    echo "  where the time went (node log timestamps; the term is the one the writer reported):"
    : > "$SHM/breakdown"
    breakdown
    if [ -s "$SHM/breakdown" ]; then
      printf '  kill -> new server up: median %.3f s, worst %.3f s; server up -> writer mount connected: median %.3f s, worst %.3f s\n' \
        "$(cut -d' ' -f1 "$SHM/breakdown" | median)" "$(cut -d' ' -f1 "$SHM/breakdown" | worst)" \
        "$(cut -d' ' -f2 "$SHM/breakdown" | median)" "$(cut -d' ' -f2 "$SHM/breakdown" | worst)"
    fi
    echo
  fi
  if [ "$REPEAT" -gt 0 ]; then
    echo "-- 2. aggregate write throughput: k nodes each nfs-cp one $MIB MiB file at once, MB/s = 10^6 B/s, median of $REPEAT"
    cat "$OUT/throughput.txt"
    t1=$(tp 1 | median)
    for k in $(seq 1 "$NODES"); do
      tm=$(tp "$k" | median)
      runs=$(tp "$k" | paste -sd/ | sed 's#/# / #g')
      if [ "$k" = 1 ]; then
        printf '  %d node(s): %7.1f MB/s (%s)  anchor\n' "$k" "$tm" "$runs"
      else
        printf '  %d node(s): %7.1f MB/s (%s)  ratio %.2f\n' "$k" "$tm" "$runs" "$(echo "$tm / $t1" | bc -l)"
      fi
    done
    echo "  read back through another node: $VERIFIED files, every sha256 matched"
    echo
  fi
  if [ "$LOCKS" = 1 ]; then
    echo "-- 3. lock round trip: cargo bench -p scoutgw-cluster --bench cluster_locks"
    sed -n '/^cluster_locks:/,$p' "$OUT/cluster_locks.txt"
    echo
  fi
  echo "-- checks"
  printf '  stop (%s): SIGTERM -> all nodes exited in %.1f s\n' "$STOP" "$STOP_SECS"
  if [ $FSCK_RC = 0 ]; then echo "  fsck after the runs: clean"; else echo "  fsck after the runs: exit $FSCK_RC (see $OUT/fsck.txt)"; fi
  for i in $(seq 0 $((NODES - 1))); do
    lg=$SHM/node$i.log
    sed 's/\x1b\[[0-9;]*m//g' "$OUT/node$i.log" > "$lg"
    printf '  node %d log: %d starts (exits: %s), %d panic, %d ERROR, %d WARN lines\n' "$i" "$(grep -c '^=== .* start' "$lg")" \
      "$(awk '$1 == "===" && $3 == "exit" { print $4 }' "$lg" | sort | uniq -c | awk '{ printf "%s%s x%s", sep, $2, $1; sep = ", " }')" \
      "$(grep -c 'panicked' "$lg" || true)" "$(grep -c ' ERROR ' "$lg" || true)" "$(grep -c ' WARN ' "$lg" || true)"
    grep -E 'panicked| ERROR | WARN ' "$lg" | sed -E 's/^[^ ]+ +//; s/[0-9a-f]{16}/<rid>/g; s/term [0-9]+/term N/g; s/[0-9]+(\.[0-9]+)?(ms|s|µs)/<t>/g' |
      sort | uniq -c | sort -rn | head -n 5 | sed 's/^/      /' || true
  done
  odd=$(sed 's/\x1b\[[0-9;]*m//g' "$OUT"/node*.log | awk '$1 == "===" && $3 == "exit" && $4 != 0 && $4 != 137' | wc -l)
  [ "$odd" = 0 ] || echo "  NOTE: $odd node exit(s) other than 0 (clean stop) or 137 (kill -9): see the 'scoutgw: error' lines in the node logs"
  if [ -s "$OUT/problems.txt" ]; then echo "  PROBLEMS:"; sed 's/^/    /' "$OUT/problems.txt"; fi
  echo "  logs and raw results: $OUT"
} | tee "$SUMMARY"
[ ! -s "$OUT/problems.txt" ] || exit 1
