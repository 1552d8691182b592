# guest-keep.sh - keep the mount across a gateway restart (busybox ash in the qemu guest).
# Mount with "hard" (and lookupcache=positive, so polling for the host's marker file really
# asks the server). The guest takes handles — a cwd, a file open for reading, one open for
# writing, cached dentries — starts a writer that keeps doing small fsync'ed writes, prints
# "NFSVM-MARK: ready-for-restart" on the console and polls for $MNT/restarted. The host
# stops the gateway with SIGTERM, starts a new process on the same devices and creates
# $MNT/restarted over libnfs. The guest then goes on with the handles it already had: no
# ESTALE, no lost data, no lost writes of the writer.
# Knobs (GUEST_ENV): RESTART_SIGNAL=file|time (default file), RESTART_WAIT (seconds to wait
# for the marker, default 300), RESTART_SLEEP (time mode: seconds to wait, default 60).
. "$GUEST_FILES/guest-lib.sh"

RESTART_SIGNAL=${RESTART_SIGNAL:-file}
RESTART_WAIT=${RESTART_WAIT:-300}
RESTART_SLEEP=${RESTART_SLEEP:-60}
W=$MNT/keep

section "take handles before the restart"
rm -rf "$W" "$MNT/restarted"
mkdir -p "$W/sub/deep" || { bad "mkdir $W"; finish; exit 1; }
cd "$W/sub" || exit 1
for i in 0 1 2 3 4 5 6 7 8 9; do echo "file $i before the restart" > f$i; done
dd if=/dev/urandom of=/tmp/r.ref bs=1048576 count=2 2>/dev/null
check "write r.bin" cp /tmp/r.ref r.bin
echo before > w.txt
echo deep > deep/d.txt
drop_caches
ls -a | grep -vE '^\.\.?$' | sort > /tmp/ls.before
inodes_before=$(stat -c '%n %i' . .. f* r.bin w.txt deep deep/d.txt)
for i in 0 1 2 3 4 5 6 7 8 9; do cat f$i > /dev/null; done   # cached dentries + attrs
# unstable writes around the restart: 8 MiB written now without fsync (the client sends
# UNSTABLE WRITEs when it likes), 8 MiB more after the restart, then close (COMMIT, answered
# with the new process's verifier: the client must resend what the old one did not commit)
dd if=/dev/urandom of=/tmp/u.ref bs=1048576 count=16 2>/dev/null
exec 6> u.bin
head -c 8388608 /tmp/u.ref >&6
exec 3>> w.txt     # open for writing (append)
exec 4< r.bin      # open for reading, nothing read yet
cd deep || bad "cd deep"   # the cwd is a directory handle held across the restart

# writer: 16-byte records "blkNNNNNNNNNNNN\n" at offset 16*i, each fsync'ed (WRITE + COMMIT
# going on while the gateway stops and starts)
rm -f /tmp/stop-writer /tmp/writer.err
(
    i=0
    while [ ! -e /tmp/stop-writer ]; do
        printf 'blk%012d\n' $i | dd of=../during.bin bs=16 seek=$i conv=notrunc,fsync 2>/tmp/dd.err \
            || echo "record $i: $(cat /tmp/dd.err)" >> /tmp/writer.err
        i=$((i + 1)); echo $i > /tmp/writer.count
        sleep 0.2
    done
) &
wpid=$!
sleep 2

section "wait for the gateway restart"
echo "NFSVM-MARK: ready-for-restart"
t=$(now)
if [ "$RESTART_SIGNAL" = time ]; then
    sleep "$RESTART_SLEEP"
else
    while [ ! -e "$MNT/restarted" ]; do
        if [ "$(awk "BEGIN{print ($(now) - $t > $RESTART_WAIT)}")" = 1 ]; then
            bad "no $MNT/restarted after ${RESTART_WAIT}s"
            break
        fi
        sleep 0.5
    done
fi
echo "NFSVM-MARK: saw-restart after $(awk "BEGIN{printf \"%.1f\", $(now) - $t}")s: $(cat "$MNT/restarted" 2>&1)"
sleep 2
touch /tmp/stop-writer
wait $wpid
records=$(cat /tmp/writer.count)
echo "writer: $records records"

section "use the handles taken before the restart"
drop_pages   # keep dentries and inodes (the handles), drop only cached data
eq "pwd (cwd held across the restart)" "$(pwd)" "$W/sub/deep"
eq "cat relative to the held cwd" "$(cat d.txt)" deep
eq "ls of the held cwd" "$(ls)" d.txt
eq "read r.bin through the fd opened before" "$(sha256sum <&4 | cut -d' ' -f1)" "$(sum /tmp/r.ref)"
check "write w.txt through the fd opened before" sh -c 'echo after >&3'
tail -c 8388608 /tmp/u.ref >&6 || bad "second half of u.bin"
exec 3>&- 4<&- 6>&-
cd .. || bad "cd .. from the held cwd"
drop_pages
eq "w.txt content" "$(cat w.txt | tr '\n' ' ')" "before after "
eq "u.bin (unstable writes across the restart)" "$(sum u.bin)" "$(sum /tmp/u.ref)"
ls -a | grep -vE '^\.\.?$' | grep -vE '^(during|u)\.bin$' | sort > /tmp/ls.after
if cmp -s /tmp/ls.before /tmp/ls.after; then ok "ls of the directory: same names"; else bad "ls differs: $(diff /tmp/ls.before /tmp/ls.after | tr '\n' ' ')"; fi
for i in 0 1 2 3 4 5 6 7 8 9; do
    [ "$(cat f$i 2>&1)" = "file $i before the restart" ] || bad "f$i: $(cat f$i 2>&1)"
done
ok "f0..f9 read through cached dentries"
eq "inode numbers unchanged" "$(stat -c '%n %i' . .. f* r.bin w.txt deep deep/d.txt)" "$inodes_before"
i=0; : > /tmp/during.ref
while [ $i -lt "$records" ]; do printf 'blk%012d\n' $i; i=$((i + 1)); done > /tmp/during.ref
eq "writer records across the restart (size)" "$(stat -c %s during.bin)" $((records * 16))
eq "writer records across the restart (content)" "$(sum during.bin)" "$(sum /tmp/during.ref)"
if [ -s /tmp/writer.err ]; then bad "writer errors: $(head -c 600 /tmp/writer.err)"; else ok "writer: no errors"; fi

section "change things through the old handles"
check "create in the held directory" sh -c 'echo new > new.txt'
check "rename" mv new.txt renamed.txt
check "hard link" ln renamed.txt linked.txt
check "mkdir + rmdir" sh -c 'mkdir nd && rmdir nd'
check "remove" rm f9
check "truncate through a cached dentry" truncate -s 3 f8
drop_caches
eq "renamed.txt" "$(cat renamed.txt)" new
eq "link count" "$(stat -c %h renamed.txt)" 2
eq "f8 after truncate" "$(cat f8)" fil
check_fails "f9 removed" stat f9
if dmesg | grep -qi 'stale'; then bad "kernel log mentions stale handles: $(dmesg | grep -i stale | head -n 3)"; else ok "no stale handle messages in the kernel log"; fi

finish
