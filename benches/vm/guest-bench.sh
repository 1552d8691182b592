# benches/vm/guest-bench.sh - the guest half of scripts/bench-nfs.sh (issue 5).
# Runs in the busybox guest of /work/shared/tools/kernel-nfs-client/run-in-vm.sh, on the
# Linux kernel NFS client mounted at $MNT. bench-nfs.sh prepends the knobs:
#   SIZE_MB (1024), NFILES (10000), PHASES ("seq meta"), READDIR_REPEAT (5), TAG,
#   LISTDIR/LISTN (optional: list this directory under $MNT, expecting LISTN f* entries,
#   instead of the NFILES files made here; bench-nfs.sh passes the host client's 10k files)
# Prints "BENCH <line> <seconds> <ops>" per line and the NFSv3 call counters each phase sent
# ("OPS <line> <proc>=<n> ..."). Timing is /proc/uptime (10 ms) read by a shell builtin, so
# no process is forked inside a timed loop; every step runs in this one ash process.
SIZE_MB=${SIZE_MB:-1024}; NFILES=${NFILES:-10000}; PHASES=${PHASES:-seq meta}
READDIR_REPEAT=${READDIR_REPEAT:-5}; TAG=${TAG:-vm}
D=$MNT/bench-$TAG
mkdir "$D" || exit 1
up() { read -r u _ < /proc/uptime; echo "$u"; }
dropc() { sync; echo 3 > /proc/sys/vm/drop_caches; }
P3=""
ops_mark() { P3=$(grep '^proc3' /proc/net/rpc/nfs); }
# per-procedure call counts since ops_mark (names in /proc/net/rpc/nfs order)
ops_diff() {
  echo "$P3
$(grep '^proc3' /proc/net/rpc/nfs)" | awk -v line="$1" '
    BEGIN { split("NULL GETATTR SETATTR LOOKUP ACCESS READLINK READ WRITE CREATE MKDIR SYMLINK MKNOD REMOVE RMDIR RENAME LINK READDIR READDIRPLUS FSSTAT FSINFO PATHCONF COMMIT", n, " ") }
    NR == 1 { for (i = 3; i <= NF; i++) a[i] = $i }
    NR == 2 { s = "OPS " line; for (i = 3; i <= NF; i++) if ($i - a[i] > 0) s = s " " n[i-2] "=" ($i - a[i]); print s }'
}
report() { echo "BENCH $1 $(awk -v a="$2" -v b="$3" 'BEGIN { printf "%.2f", b - a }') $4"; }
fail=0
for phase in $PHASES; do case $phase in
seq)
  dropc; ops_mark; t0=$(up)
  dd if=/dev/zero of="$D/big" bs=1M count="$SIZE_MB" conv=fsync 2>/dev/null || fail=1
  t1=$(up); report seq_write "$t0" "$t1" "$SIZE_MB"; ops_diff seq_write
  dropc; ops_mark; t0=$(up)
  n=$(dd if="$D/big" of=/dev/null bs=1M 2>&1 | awk '/records in/ { print $1 + 0; exit }')
  t1=$(up); report seq_read "$t0" "$t1" "$SIZE_MB"; ops_diff seq_read
  [ "$n" = "$SIZE_MB" ] || { echo "!!! read back $n MiB records, want $SIZE_MB"; fail=1; }
  ;;
meta)
  S=$(printf '%01023d' 0)   # echo adds the newline: 1024-byte files
  dropc; ops_mark; t0=$(up); i=0
  while [ $i -lt "$NFILES" ]; do echo "$S" > "$D/f$i" || { fail=1; break; }; i=$((i+1)); done
  t1=$(up); report create "$t0" "$t1" "$NFILES"; ops_diff create
  dropc; ops_mark; t0=$(up); i=0; miss=0
  while [ $i -lt "$NFILES" ]; do [ -f "$D/f$i" ] || miss=$((miss+1)); i=$((i+1)); done
  t1=$(up); report stat "$t0" "$t1" "$NFILES"; ops_diff stat
  [ $miss = 0 ] || { echo "!!! stat: $miss files missing"; fail=1; }
  # readdir: a glob is opendir/getdents only (busybox ls has no -f and lstats every entry)
  L=$D; LN=$NFILES
  if [ -n "${LISTDIR:-}" ]; then L=$MNT/$LISTDIR; LN=$LISTN; fi
  tot=0; ops_mark; r=0
  while [ $r -lt "$READDIR_REPEAT" ]; do
    dropc; t0=$(up); set -- "$L"/f*; t1=$(up)
    tot=$(awk -v t="$tot" -v a="$t0" -v b="$t1" 'BEGIN { print t + b - a }')
    [ $# = "$LN" ] || { echo "!!! readdir of $L saw $# entries, want $LN"; fail=1; }
    r=$((r+1))
  done
  echo "BENCH readdir $tot $READDIR_REPEAT"; ops_diff readdir
  ;;
esac; done
echo "GUEST-DONE fail=$fail"
exit $fail
