#!/usr/bin/env bash
# scripts/bench-dir-scaling.sh - does the per-entry cost of directory operations stay flat as
# a directory grows? Measured at the NFS protocol boundary (issue 4's question, asked of the
# NFS export instead of the `Fs` API that `cargo bench -p scoutgw-cluster --bench fs_ops` uses).
#
# What it does:
#   1. builds once: `cargo build --release -p scoutgw --bin scoutgw` and the load generator
#      gateway/benches/nfs_load.rs (`cargo bench -p scoutgw --bench nfs_load --no-run`);
#   2. starts a fresh `scoutgw quickstart` (new sparse device files under
#      BENCH_DIR/fs: META_SIZE metadata, DATA_SIZE data) on 127.0.0.1: NFS + MOUNT on PORT,
#      HTTP on PORT+1, quorum on PORT+2, export.sync from SYNC (default 0: reply first,
#      commit within fs.commit_interval_ms; with 1 every CREATE is a commit and its cost
#      hides everything else), and waits for /readyz;
#   3. runs nfs_load twice against that one server, each time in a fresh directory (MKDIR),
#      one TCP connection with DEPTH requests in flight, empty files (`--size 0`: no WRITE,
#      no COMMIT), phases create,stat,getattr,readdir:
#        SMALL entries (default 10,000; readdir READDIR_REPEAT_SMALL times, default 5), then
#        BIG entries   (default 1,000,000; readdir READDIR_REPEAT_BIG times, default 1);
#      create = CREATE, stat = LOOKUP (attributes checked), getattr = GETATTR of the handles,
#      readdir = READDIRPLUS of the whole directory with 64 KiB replies (count checked);
#   4. parses nfs_load's `RESULT <phase> <seconds> <ops/s> <ops>` lines and prints, per
#      phase, the wall time per entry in µs at SMALL and at BIG and the growth ratio
#      BIG ÷ SMALL (1.00 = flat). create/stat/getattr: seconds / files (so with DEPTH > 1 it
#      is the inverse of throughput, not a round trip; nfs_load's round-trip lines follow
#      the table); readdir: seconds / (listings × entries), i.e. µs per entry listed;
#   5. stops the server (SIGTERM: a clean stop commits everything) and deletes the device
#      files (also on errors and Ctrl-C). Outputs (nfs_load's, the server log, the table)
#      stay in OUT.
# The BIG directory is made after the SMALL one in the same filesystem, so the BIG phases
# also see SMALL's entries (negligible for SMALL << BIG). Not every phase is long enough
# at SMALL to be steady (10,000 GETATTRs take ~0.3 s): on a busy machine run it twice.
#
# usage: scripts/bench-dir-scaling.sh          (no root needed; only loopback ports)
# knobs: SMALL=10000 BIG=1000000 PORT=18300 (uses PORT..PORT+2) SYNC=0|1 DEPTH=8
#        READDIR_REPEAT_SMALL=5 READDIR_REPEAT_BIG=1 META_SIZE=16G DATA_SIZE=2G
#        CACHE_MIB= (node.cache_mib; empty = the config default, 256)
#        ITEM_CACHE_MIB= (node.item_cache_mib; empty = the config default, 256; a 1M-entry
#        directory's inodes and entries take about 550 MiB)
#        BENCH_DIR=target/bench-dir-scaling OUT=$BENCH_DIR/results-<date> KEEP=0 (1: keep
#        the device files)
# needs: a Rust toolchain (cargo), curl; disk: the device files are sparse, 1,000,000
#        empty files write a few GB of metadata into META_SIZE (16 GiB leaves room for the
#        copy-on-write log trees and merges); about 15-30 min at BIG=1000000 on 2 cores.
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
SMALL=${SMALL:-10000}
BIG=${BIG:-1000000}
PORT=${PORT:-18300}
SYNC=${SYNC:-0}
DEPTH=${DEPTH:-8}
READDIR_REPEAT_SMALL=${READDIR_REPEAT_SMALL:-5}
READDIR_REPEAT_BIG=${READDIR_REPEAT_BIG:-1}
META_SIZE=${META_SIZE:-16G}
DATA_SIZE=${DATA_SIZE:-2G}
CACHE_MIB=${CACHE_MIB:-}
ITEM_CACHE_MIB=${ITEM_CACHE_MIB:-}
BENCH_DIR=${BENCH_DIR:-$REPO/target/bench-dir-scaling}
OUT=${OUT:-$BENCH_DIR/results-$(date +%Y%m%d-%H%M%S)}
KEEP=${KEEP:-0}

die() { echo "bench-dir-scaling: $*" >&2; exit 2; }
log() { echo "[$(date +%H:%M:%S)] $*" >&2; }
isnum() { [[ $1 =~ ^[1-9][0-9]*$ ]]; }
for v in SMALL BIG PORT DEPTH READDIR_REPEAT_SMALL READDIR_REPEAT_BIG; do
  isnum "${!v}" || die "$v must be a positive integer, not '${!v}'"
done
[ -z "$CACHE_MIB" ] || isnum "$CACHE_MIB" || die "CACHE_MIB must be a positive integer"
[ -z "$ITEM_CACHE_MIB" ] || isnum "$ITEM_CACHE_MIB" || die "ITEM_CACHE_MIB must be a positive integer"
case $SYNC in
  0) SYNC_BOOL=false ;;
  1) SYNC_BOOL=true ;;
  *) die "SYNC must be 0 or 1" ;;
esac
[ "$PORT" -le 65533 ] || die "PORT must leave room for PORT+2"
HTTP_PORT=$((PORT + 1))
QUORUM_PORT=$((PORT + 2))
command -v cargo > /dev/null || die "missing cargo"
command -v curl > /dev/null || die "missing curl"

listening() { (exec 3<> "/dev/tcp/127.0.0.1/$1") 2> /dev/null; }
for p in "$PORT" "$HTTP_PORT" "$QUORUM_PORT"; do
  listening "$p" && die "something already listens on 127.0.0.1:$p (pick another PORT)"
done

FS=$BENCH_DIR/fs
mkdir -p "$BENCH_DIR" "$OUT"
SG_PID=""

stop_server() {   # SIGTERM, wait up to 120 s (a clean stop commits what is open), SIGKILL
  local p=$SG_PID
  SG_PID=""
  [ -n "$p" ] || return 0
  kill -TERM "$p" 2> /dev/null || { wait "$p" 2> /dev/null || true; return 0; }
  for _ in $(seq 600); do
    if ! kill -0 "$p" 2> /dev/null; then
      wait "$p" 2> /dev/null || log "scoutgw exited with status $?"
      return 0
    fi
    sleep 0.2
  done
  log "scoutgw (pid $p) ignored SIGTERM for 120 s, killing it"
  kill -KILL "$p" 2> /dev/null || true
  wait "$p" 2> /dev/null || true
}
cleanup() {
  stop_server
  if [ "$KEEP" = 1 ]; then
    log "device files kept in $FS"
  else
    rm -rf "$FS"
  fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# --- build ---------------------------------------------------------------------------
log "building scoutgw and nfs_load (release)"
(cd "$REPO" && cargo build --release -q -p scoutgw --bin scoutgw) || die "cargo build failed"
json=$(cd "$REPO" && cargo bench -q -p scoutgw --bench nfs_load --no-run --message-format=json) ||
  die "cargo bench --no-run failed"
# the bench's own artifact line: the scoutgw bin's may come after it (fresh artifacts)
LOADGEN=$(grep -F '"kind":["bench"]' <<< "$json" | grep -F '"name":"nfs_load"' |
  grep -o '"executable":"[^"]*"' | tail -n1 | cut -d'"' -f4) || true
[ -x "$LOADGEN" ] || die "cannot find the nfs_load bench executable"
SCOUTGW=$REPO/target/release/scoutgw

{
  echo "bench-dir-scaling $(date -u +%FT%TZ) on $(hostname): $(nproc) CPUs, $(free -g | awk '/^Mem:/ {print $2}') GiB RAM"
  echo "git $(cd "$REPO" && git rev-parse --short HEAD 2> /dev/null || echo '?')$(cd "$REPO" && git diff --quiet HEAD -- gateway cluster blockdev metrics 2> /dev/null || echo ' (+ uncommitted changes in the tree)')"
  echo "SMALL=$SMALL BIG=$BIG SYNC=$SYNC DEPTH=$DEPTH READDIR_REPEAT_SMALL=$READDIR_REPEAT_SMALL READDIR_REPEAT_BIG=$READDIR_REPEAT_BIG META_SIZE=$META_SIZE DATA_SIZE=$DATA_SIZE CACHE_MIB=${CACHE_MIB:-default} ITEM_CACHE_MIB=${ITEM_CACHE_MIB:-default} PORT=$PORT"
  echo "devices: $FS on $(df -T "$BENCH_DIR" | awk 'NR == 2 {print $1, $2}')"
  echo "load at start: $(uptime)"
} | tee "$OUT/setup.txt"

# --- server --------------------------------------------------------------------------
rm -rf "$FS"
log "starting scoutgw quickstart (export.sync=$SYNC_BOOL) on 127.0.0.1:$PORT"
senv=(SCOUTGW_EXPORT__SYNC="$SYNC_BOOL")
[ -z "$CACHE_MIB" ] || senv+=(SCOUTGW_NODE__CACHE_MIB="$CACHE_MIB")
[ -z "$ITEM_CACHE_MIB" ] || senv+=(SCOUTGW_NODE__ITEM_CACHE_MIB="$ITEM_CACHE_MIB")
env "${senv[@]}" "$SCOUTGW" quickstart --dir "$FS" --meta-size "$META_SIZE" --data-size "$DATA_SIZE" \
  --nfs-bind "127.0.0.1:$PORT" --http-bind "127.0.0.1:$HTTP_PORT" \
  --quorum-addr "127.0.0.1:$QUORUM_PORT" > "$OUT/scoutgw.log" 2>&1 &
SG_PID=$!
ready=0
for _ in $(seq 600); do   # up to 120 s: mkfs, election, mount
  kill -0 "$SG_PID" 2> /dev/null || { tail -n 20 "$OUT/scoutgw.log" >&2; die "scoutgw exited during startup"; }
  if curl -sf --max-time 2 "http://127.0.0.1:$HTTP_PORT/readyz" > /dev/null && listening "$PORT"; then
    ready=1
    break
  fi
  sleep 0.2
done
[ "$ready" = 1 ] || { tail -n 20 "$OUT/scoutgw.log" >&2; die "scoutgw not ready after 120 s"; }

# --- load ----------------------------------------------------------------------------
run_load() {   # label files readdir-repeat
  local out=$OUT/load-$1.txt
  log "$1: $2 empty files in /scaling-$1-$$ (create, stat, getattr, readdir x$3)"
  if ! "$LOADGEN" --port "$PORT" --mount-port "$PORT" --files "$2" --depth "$DEPTH" --size 0 \
    --ops create,stat,getattr,readdir --readdir-repeat "$3" --dir "scaling-$1-$$" 2>&1 |
    tee "$out" | grep --line-buffered '^RESULT' >&2; then
    tail -n 5 "$out" >&2
    die "nfs_load ($1) failed, see $out"
  fi
  kill -0 "$SG_PID" 2> /dev/null || die "scoutgw died during the $1 run, see $OUT/scoutgw.log"
}
run_load small "$SMALL" "$READDIR_REPEAT_SMALL"
run_load big "$BIG" "$READDIR_REPEAT_BIG"

log "stopping scoutgw"
stop_server
echo "load at end: $(uptime)" | tee -a "$OUT/setup.txt"
# (the log's levels are colored: no \b around them)
if grep -qE 'panicked|ERROR|WARN' "$OUT/scoutgw.log"; then
  echo "!!! the scoutgw log has warnings or errors:"
  grep -E 'panicked|ERROR|WARN' "$OUT/scoutgw.log" | sed 's/\x1b\[[0-9;]*m//g' | head -n 10
fi

# --- table ---------------------------------------------------------------------------
table() {
  awk -v small="$SMALL" -v big="$BIG" '
    FNR == 1 { label = (FILENAME ~ /load-small\.txt$/) ? "small" : "big"; n = (label == "small") ? small : big }
    $1 == "RESULT" {
      ph = $2; entries = ($2 == "readdir") ? $5 * n : $5
      us[label, ph] = $3 / entries * 1e6
      if (!(ph in seen)) { seen[ph] = 1; order[++np] = ph }
    }
    END {
      printf "| phase (NFS call) | µs/entry at %d | µs/entry at %d | growth (big ÷ small) |\n", small, big
      print "|---|---:|---:|---:|"
      name["create"] = "create (CREATE)"; name["stat"] = "stat (LOOKUP)"
      name["getattr"] = "getattr (GETATTR)"; name["readdir"] = "readdir (READDIRPLUS, per entry listed)"
      for (i = 1; i <= np; i++) {
        ph = order[i]; s = us["small", ph]; b = us["big", ph]
        printf "| %s | %.2f | %.2f | **%.2f** |\n", (ph in name) ? name[ph] : ph, s, b, (s > 0) ? b / s : 0
      }
    }' "$OUT/load-small.txt" "$OUT/load-big.txt"
}
{
  echo
  echo "Per-entry wall time, one connection with $DEPTH requests in flight, export.sync=$SYNC_BOOL"
  echo "(growth 1.00 = flat; raw outputs in $OUT):"
  echo
  table
  echo
  echo "Round trips (nfs_load):"
  for l in small big; do grep '  rtt ' "$OUT/load-$l.txt" | sed "s/^ */  [$l] /"; done
} | tee "$OUT/summary.md"
