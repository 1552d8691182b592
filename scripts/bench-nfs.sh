#!/usr/bin/env bash
# scripts/bench-nfs.sh - scoutgw vs nfs-ganesha over NFSv3, same clients (issue 5).
#
# One run measures, against each server, with the same client:
#   host  (userspace, on this machine): nfs-cp (libnfs) write + read of SIZE_MB, and the
#         load generator gateway/benches/nfs_load.rs (one TCP connection, DEPTH requests in
#         flight): NFILES creates (CREATE + 1 KiB WRITE UNSTABLE + COMMIT), NFILES stats
#         (LOOKUP), NFILES GETATTRs, READDIRPLUS of the NFILES-entry directory, and NFILES
#         creates without the COMMIT ("create_nocommit");
#   vm    (the Linux kernel client in a qemu guest, benches/vm/guest-bench.sh via
#         /work/shared/tools/kernel-nfs-client/run-in-vm.sh): dd write (conv=fsync) and read
#         (after drop_caches) of VM_SIZE_MB, VM_NFILES `echo > f` creates (1 KiB), VM_NFILES
#         stats (`[ -f ]` after drop_caches), readdir (a glob after drop_caches) of the host
#         client's NFILES-entry directory (of the guest's own files with CLIENTS=vm).
#         The guest runs under TCG here (no usable KVM): its CPU is the bottleneck, so only
#         the ratios mean something, and a guest create costs ~30 ms, hence VM_NFILES=2000.
# Servers: nfs-ganesha (FSAL_VFS), scoutgw quickstart with export.sync=true (the default:
# metadata committed before the reply), and scoutgw with SCOUTGW_EXPORT__SYNC=false (reply
# first, commit within 5 s; metadata lines only). Every server starts fresh for every run
# (new device files / empty export directory), all data under BENCH_DIR (one disk).
# RUNS rounds, alternating which server goes first; the table shows medians and the ratio
# scoutgw / ganesha as throughput or ops/s (> 1 = scoutgw faster).
#
# usage: scripts/bench-nfs.sh            (as root: drop_caches, ganesha, rpcbind)
# knobs: RUNS=3 SIZE_MB=1024 NFILES=10000 DEPTH=8 VM_SIZE_MB=$SIZE_MB VM_NFILES=2000
#        CLIENTS="host vm" ASYNC=1 BENCH_DIR=target/bench-nfs SG_PORT=15000
#        TOOLS=/work/shared/tools OUT=$BENCH_DIR/results-<date>
# needs: nfs-ganesha nfs-ganesha-vfs rpcbind libnfs-utils qemu-system-x86
#        linux-image-cloud-amd64 busybox-static (apt)
set -uo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
RUNS=${RUNS:-3}
SIZE_MB=${SIZE_MB:-1024}
NFILES=${NFILES:-10000}
DEPTH=${DEPTH:-8}
VM_SIZE_MB=${VM_SIZE_MB:-$SIZE_MB}
VM_NFILES=${VM_NFILES:-2000}
CLIENTS=${CLIENTS:-host vm}
ASYNC=${ASYNC:-1}
BENCH_DIR=${BENCH_DIR:-$REPO/target/bench-nfs}
SG_PORT=${SG_PORT:-15000}
G_PORT=12050
G_MNT_PORT=12051
TOOLS=${TOOLS:-/work/shared/tools}
OUT=${OUT:-$BENCH_DIR/results-$(date +%Y%m%d-%H%M%S)}

die() { echo "bench-nfs: $*" >&2; exit 2; }
log() { echo "[$(date +%H:%M:%S)] $*" >&2; }
now() { date +%s.%N; }
[ "$(id -u)" = 0 ] || die "run as root (drop_caches, ganesha, rpcbind)"
for t in ganesha.nfsd rpcbind rpcinfo nfs-cp qemu-system-x86_64; do
  command -v "$t" > /dev/null || die "missing $t (see the header for the apt packages)"
done
mkdir -p "$BENCH_DIR" "$OUT" || die "cannot create $BENCH_DIR"
RES=$OUT/results.tsv   # run  server  client  line  seconds  amount  unit
: > "$RES"

# --- build ---------------------------------------------------------------------------
log "building scoutgw and the load generator (release)"
(cd "$REPO" && cargo build --release -p scoutgw -q) || die "cargo build failed"
# the bench's own artifact line: the scoutgw bin's may come after it (fresh artifacts)
LOADGEN=$(cd "$REPO" && cargo bench -p scoutgw --bench nfs_load --no-run --message-format=json -q 2>/dev/null |
  grep -F '"kind":["bench"]' | grep -F '"name":"nfs_load"' |
  grep -o '"executable":"[^"]*"' | tail -n1 | cut -d'"' -f4) || true
[ -x "$LOADGEN" ] || die "cannot find the nfs_load bench executable"
SCOUTGW=$REPO/target/release/scoutgw

# --- servers -------------------------------------------------------------------------
RPCBIND_PID=""; GANESHA_PID=""; SG_PID=""
wait_port() {   # port: wait until something listens on 127.0.0.1:port
  for _ in $(seq 100); do
    (exec 3<> "/dev/tcp/127.0.0.1/$1") 2> /dev/null && return 0
    sleep 0.2
  done
  return 1
}
start_rpcbind() {
  if rpcinfo -p 127.0.0.1 > /dev/null 2>&1; then return 0; fi   # someone's rpcbind is up
  rpcbind -f > "$OUT/rpcbind.log" 2>&1 &
  RPCBIND_PID=$!
  sleep 1
}
start_ganesha() {
  local g=$BENCH_DIR/ganesha
  rm -rf "$g"; mkdir -p "$g/export" "$g/recov"
  sed -e "s#/tmp/ganesha/export#$g/export#; s#/tmp/ganesha/recov#$g/recov#" \
    "$TOOLS/nfs-peer/ganesha-v3-loopback.conf" > "$g/ganesha.conf"
  ganesha.nfsd -F -L "$g/ganesha.log" -f "$g/ganesha.conf" -p "$g/ganesha.pid" -N NIV_EVENT \
    > "$g/ganesha.out" 2>&1 &
  GANESHA_PID=$!
  wait_port $G_PORT && wait_port $G_MNT_PORT || die "ganesha did not start (see $g/ganesha.log)"
  for _ in $(seq 50); do   # the export is ready when MNT succeeds
    nfs-ls "nfs://127.0.0.1$g/export?nfsport=$G_PORT&mountport=$G_MNT_PORT" > /dev/null 2>&1 && return 0
    sleep 0.2
  done
  die "ganesha export not ready"
}
start_scoutgw() {   # sync: true|false
  local d=$BENCH_DIR/scoutgw
  rm -rf "$d"
  # own quorum (and HTTP, where the build has it) ports, so other quickstarts can run
  local extra=(--quorum-addr "127.0.0.1:$((SG_PORT + 100))")
  "$SCOUTGW" quickstart --help | grep -q -- --http-bind && extra+=(--http-bind "127.0.0.1:$((SG_PORT + 200))")
  SCOUTGW_EXPORT__SYNC=$1 "$SCOUTGW" quickstart --dir "$d" --nfs-bind "127.0.0.1:$SG_PORT" "${extra[@]}" \
    > "$OUT/scoutgw-$RUN-$1.log" 2>&1 &
  SG_PID=$!
  wait_port "$SG_PORT" || die "scoutgw did not start (see $OUT/scoutgw-$RUN-$1.log)"
}
stop_pid() {   # pid: SIGTERM, wait up to 60 s, then SIGKILL
  local p=$1
  [ -n "$p" ] || return 0
  kill -TERM "$p" 2> /dev/null || return 0
  for _ in $(seq 300); do kill -0 "$p" 2> /dev/null || { wait "$p" 2> /dev/null; return 0; }; sleep 0.2; done
  echo "bench-nfs: pid $p ignored SIGTERM for 60 s, killing it" >&2
  kill -KILL "$p" 2> /dev/null; wait "$p" 2> /dev/null
}
cleanup() {
  stop_pid "$SG_PID"; SG_PID=""
  stop_pid "$GANESHA_PID"; GANESHA_PID=""
  stop_pid "$RPCBIND_PID"; RPCBIND_PID=""
  rm -f /dev/shm/bench-nfs-$$.*
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- measurements --------------------------------------------------------------------
rec() { printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$RUN" "$1" "$2" "$3" "$4" "$5" "$6" >> "$RES"; }
dropc() { sync; echo 3 > /proc/sys/vm/drop_caches; }
SRC=/dev/shm/bench-nfs-$$.src
BACK=/dev/shm/bench-nfs-$$.back

host_seq() {   # server url query
  local srv=$1 url=$2 q=$3 t0 t1 name=big-$RUN.bin
  dropc
  t0=$(now); nfs-cp "$SRC" "$url/$name?$q" > /dev/null || { echo "!!! $srv nfs-cp write failed"; return 1; }; t1=$(now)
  rec "$srv" host seq_write "$(echo "$t1 - $t0" | bc)" "$SIZE_MB" MiB
  dropc   # the server reads from the disk, not from the host page cache
  rm -f "$BACK"
  t0=$(now); nfs-cp "$url/$name?$q" "$BACK" > /dev/null || { echo "!!! $srv nfs-cp read failed"; return 1; }; t1=$(now)
  rec "$srv" host seq_read "$(echo "$t1 - $t0" | bc)" "$SIZE_MB" MiB
  cmp -s "$SRC" "$BACK" || { echo "!!! $srv: nfs-cp read back differs from what was written"; return 1; }
  rm -f "$BACK"
}
host_meta() {   # server port mountport export
  local srv=$1 out=$OUT/loadgen-$RUN-$1.txt
  "$LOADGEN" --port "$2" --mount-port "$3" --export "$4" --files "$NFILES" --depth "$DEPTH" \
    --commit --dir "load-$RUN" > "$out" 2>&1 || { echo "!!! $srv nfs_load failed:"; tail -n 3 "$out"; return 1; }
  awk -v srv="$srv" -v run="$RUN" '$1 == "RESULT" {
      unit = ($2 == "readdir") ? "listings" : "ops"
      printf "%s\t%s\thost\t%s\t%s\t%s\t%s\n", run, srv, $2, $3, $5, unit }' "$out" >> "$RES"
  grep '  rtt ' "$out" | sed "s/^/  [$srv run $RUN] /"
  # the same creates without the COMMIT: CREATE + WRITE UNSTABLE, nothing forced to disk by
  # the client (what export.sync decides for scoutgw; ganesha never syncs metadata)
  out=$OUT/loadgen-$RUN-$1-nocommit.txt
  "$LOADGEN" --port "$2" --mount-port "$3" --export "$4" --files "$NFILES" --depth "$DEPTH" \
    --ops create --dir "load-$RUN-nc" > "$out" 2>&1 || { echo "!!! $srv nfs_load (no commit) failed:"; tail -n 3 "$out"; return 1; }
  awk -v srv="$srv" -v run="$RUN" '$1 == "RESULT" {
      printf "%s\t%s\thost\tcreate_nocommit\t%s\t%s\tops\n", run, srv, $3, $5 }' "$out" >> "$RES"
  grep '  rtt ' "$out" | sed "s/^/  [$srv run $RUN no-commit] /"
}
vm_run() {   # server port mountport export phases
  local srv=$1 gs=$OUT/guest-$RUN-$1.sh log=$OUT/vm-$RUN-$1.log rc
  local list=""
  has host && list="LISTDIR=load-$RUN LISTN=$NFILES"
  { echo "SIZE_MB=$VM_SIZE_MB NFILES=$VM_NFILES TAG=$RUN PHASES='$5' $list"; cat "$REPO/benches/vm/guest-bench.sh"; } > "$gs"
  NFS_PORT=$2 MOUNT_PORT=$3 EXPORT=$4 MOUNT_OPTS=hard TIMEOUT=3600 GUEST_SCRIPT=$gs \
    "$TOOLS/kernel-nfs-client/run-in-vm.sh" > "$log" 2>&1
  rc=$?
  tr -d '\r' < "$log" | awk -v srv="$srv" -v run="$RUN" '$1 == "BENCH" {
      unit = ($2 ~ /^seq/) ? "MiB" : (($2 == "readdir") ? "listings" : "ops")
      printf "%s\t%s\tvm\t%s\t%s\t%s\t%s\n", run, srv, $2, $3, $4, unit }' >> "$RES"
  tr -d '\r' < "$log" | grep -E '^(OPS|!!!)' | sed "s/^/  [$srv run $RUN vm] /"
  [ $rc = 0 ] || { echo "!!! $srv: guest run failed (rc $rc), see $log"; tr -d '\r' < "$log" | tail -n 15; return 1; }
}
has() { case " $CLIENTS " in *" $1 "*) return 0;; esac; return 1; }

bench_ganesha() {
  local g=$BENCH_DIR/ganesha
  start_ganesha
  log "run $RUN: ganesha"
  if has host; then
    host_seq ganesha "nfs://127.0.0.1$g/export" "nfsport=$G_PORT&mountport=$G_MNT_PORT"
    host_meta ganesha $G_PORT $G_MNT_PORT "$g/export"
  fi
  has vm && vm_run ganesha $G_PORT $G_MNT_PORT "$g/export" "seq meta"
  stop_pid "$GANESHA_PID"; GANESHA_PID=""
}
bench_scoutgw() {   # sync: true|false
  local srv=scoutgw phases="seq meta"
  [ "$1" = false ] && { srv=scoutgw-async; phases=meta; }
  start_scoutgw "$1"
  log "run $RUN: $srv"
  if has host; then
    [ "$1" = true ] && host_seq $srv "nfs://127.0.0.1/" "nfsport=$SG_PORT&mountport=$SG_PORT"
    host_meta $srv "$SG_PORT" "$SG_PORT" /
  fi
  has vm && vm_run $srv "$SG_PORT" "$SG_PORT" / "$phases"
  stop_pid "$SG_PID"; SG_PID=""
  if grep -qiE 'panic|ERROR' "$OUT/scoutgw-$RUN-$1.log"; then
    echo "!!! $srv run $RUN logged errors:"; grep -iE 'panic|ERROR' "$OUT/scoutgw-$RUN-$1.log" | head -n 5
  fi
}

{
  echo "bench-nfs $(date -u +%FT%TZ) on $(hostname): $(nproc) CPUs, $(free -g | awk '/Mem:/ {print $2}') GiB RAM"
  echo "git $(cd "$REPO" && git rev-parse --short HEAD)$(cd "$REPO" && git diff --quiet HEAD -- gateway cluster blockdev || echo ' (+ uncommitted changes in the tree)')"
  echo "RUNS=$RUNS SIZE_MB=$SIZE_MB NFILES=$NFILES DEPTH=$DEPTH VM_SIZE_MB=$VM_SIZE_MB VM_NFILES=$VM_NFILES CLIENTS='$CLIENTS' ASYNC=$ASYNC"
  echo "data: $BENCH_DIR on $(df -T "$BENCH_DIR" | awk 'NR == 2 {print $1, $2}')"
  echo "ganesha $(dpkg-query -W -f='${Version}' nfs-ganesha 2> /dev/null), libnfs-utils $(dpkg-query -W -f='${Version}' libnfs-utils 2> /dev/null), guest kernel $(ls -1 /lib/modules | sort -V | tail -n1)"
  echo "load at start: $(uptime)"
} | tee "$OUT/setup.txt"

head -c "$((SIZE_MB << 20))" /dev/urandom > "$SRC"
start_rpcbind
exec 3>&1 4>&2 > >(tee "$OUT/details.txt") 2>&1   # keep the loop in this shell (server pids)
for RUN in $(seq "$RUNS"); do
  if [ $((RUN % 2)) = 1 ]; then
    bench_ganesha; bench_scoutgw true; [ "$ASYNC" = 1 ] && bench_scoutgw false
  else
    [ "$ASYNC" = 1 ] && bench_scoutgw false; bench_scoutgw true; bench_ganesha
  fi
  log "run $RUN done; load: $(uptime | sed 's/.*load/load/')"
done
exec 1>&3 2>&4 3>&- 4>&-
sleep 0.5   # let tee drain
echo "load at end: $(uptime)" | tee -a "$OUT/setup.txt"

# --- summary: medians and ratios -----------------------------------------------------
summary() {
  awk -F'\t' -v async="$ASYNC" '
    function median(key,   n, i, j, t, v) {
      n = cnt[key]; if (n == 0) return -1
      for (i = 1; i <= n; i++) v[i] = val[key, i]
      for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (v[j] < v[i]) { t = v[i]; v[i] = v[j]; v[j] = t }
      return (n % 2) ? v[(n + 1) / 2] : (v[n / 2] + v[n / 2 + 1]) / 2
    }
    function fmt(x, unit) {
      if (x < 0) return "-"
      if (unit == "MiB") return sprintf("%.1f MiB/s", x)
      if (unit == "listings") return sprintf("%.3f s/listing", 1 / x)
      return sprintf("%.0f ops/s", x)
    }
    function ratio(a, b) { return (a < 0 || b <= 0) ? "-" : sprintf("**%.2f**", a / b) }
    {
      key = $2 SUBSEP $3 SUBSEP $4
      val[key, ++cnt[key]] = $6 / $5; unitof[$3 SUBSEP $4] = $7
      if (!(($3 SUBSEP $4) in seen)) { seen[$3 SUBSEP $4] = 1; order[++nl] = $3 SUBSEP $4 }
    }
    END {
      printf "| client | line | ganesha | scoutgw (sync) | ratio |%s\n", async ? " scoutgw (async) | ratio |" : ""
      printf "|---|---|---:|---:|---:|%s\n", async ? "---:|---:|" : ""
      for (i = 1; i <= nl; i++) {
        split(order[i], p, SUBSEP); u = unitof[order[i]]
        g = median("ganesha" SUBSEP order[i]); s = median("scoutgw" SUBSEP order[i])
        a = median("scoutgw-async" SUBSEP order[i])
        printf "| %s | %s | %s | %s | %s |", p[1], p[2], fmt(g, u), fmt(s, u), ratio(s, g)
        if (async) printf " %s | %s |", fmt(a, u), ratio(a, g)
        printf "\n"
      }
    }' "$RES"
}
echo
echo "Medians of $RUNS runs (ratio = scoutgw / ganesha, > 1 = scoutgw faster); raw: $RES"
summary | tee "$OUT/summary.md"
if grep -q '^  \[.*!!!\|^!!!' "$OUT/details.txt"; then
  echo "bench-nfs: some steps FAILED, see $OUT/details.txt" >&2
  exit 1
fi
