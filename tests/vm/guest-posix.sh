# guest-posix.sh - phase 1 of the kernel-client test (busybox ash in the qemu guest).
# A POSIX workload on the NFS mount $MNT, each result checked right away (reads after dropping
# the client's caches, so they come from the server), and everything phase 2
# (guest-verify.sh) must find again after a gateway restart recorded under $MNT/_expect:
#   manifest     one manifest_line per path of $MNT/posix (type, size, mode, owner, times,
#                link count, inode number, checksum or symlink target)
#   dirs         dir_summary of the 10 k-entry directory
#   big.blk.sha256  the random body of $MNT/big.bin (see below; the host computes the
#                   expected md5 into $MNT/big.md5 and checks big.bin over libnfs)
# Knobs (GUEST_ENV): BIG_MB (default 2048), NENTRIES (default 10000). The guest reads the
# whole big file back in phase 2 (after the restart), not here: ~2 minutes under TCG.
. "$GUEST_FILES/guest-lib.sh"

BIG_MB=${BIG_MB:-2048}
NENTRIES=${NENTRIES:-10000}
W=$MNT/posix
E=$MNT/_expect
rm -rf "$W" "$E"
mkdir -p "$W" "$E" || { echo "!!! FAIL: mkdir $W $E"; exit 1; }
cd "$W" || exit 1

section "create, write, read back"
echo "hello from the kernel client" > hello.txt
drop_caches
eq "hello.txt content" "$(cat hello.txt)" "hello from the kernel client"
# 3 MiB + an odd tail of random data, through cp (1 MiB WRITEs)
dd if=/dev/urandom of=/tmp/data.ref bs=1048576 count=3 2>/dev/null
dd if=/dev/urandom bs=12345 count=1 2>/dev/null >> /tmp/data.ref
check "cp 3 MiB+12345 to the mount" cp /tmp/data.ref data.bin
drop_caches
eq "data.bin sha256 after drop_caches" "$(sum data.bin)" "$(sum /tmp/data.ref)"
# overwrite in the middle (an unaligned range crossing a 4 KiB block boundary)
dd if=/dev/urandom of=/tmp/patch bs=1000 count=1 2>/dev/null
dd if=/tmp/patch of=/tmp/data.ref bs=1 seek=1052670 conv=notrunc 2>/dev/null
check "overwrite 1000 bytes at 1052670" dd if=/tmp/patch of=data.bin bs=1 seek=1052670 conv=notrunc
drop_caches
eq "data.bin sha256 after overwrite" "$(sum data.bin)" "$(sum /tmp/data.ref)"

section "append"
dd if=/dev/urandom of=/tmp/more bs=7777 count=3 2>/dev/null
cat /tmp/more >> /tmp/data.ref
check "append 23331 bytes" sh -c 'cat /tmp/more >> data.bin'
echo "second line" >> hello.txt
drop_caches
eq "data.bin size after append" "$(stat -c %s data.bin)" "$(stat -c %s /tmp/data.ref)"
eq "data.bin sha256 after append" "$(sum data.bin)" "$(sum /tmp/data.ref)"
eq "hello.txt after append" "$(tail -n 1 hello.txt)" "second line"

section "truncate down and up"
cp /tmp/data.ref trunc.bin
cp /tmp/data.ref /tmp/data.full
truncate -s 1000003 /tmp/data.ref
check "truncate down to 1000003" truncate -s 1000003 trunc.bin
drop_caches
eq "trunc.bin size after truncate down" "$(stat -c %s trunc.bin)" 1000003
eq "trunc.bin sha256 after truncate down" "$(sum trunc.bin)" "$(sum /tmp/data.ref)"
truncate -s 5000000 /tmp/data.ref
check "truncate up to 5000000" truncate -s 5000000 trunc.bin
drop_caches
eq "trunc.bin size after truncate up" "$(stat -c %s trunc.bin)" 5000000
eq "trunc.bin sha256 after truncate up (zeros past 1000003)" "$(sum trunc.bin)" "$(sum /tmp/data.ref)"
eq "bytes 1000003.. are zero" "$(dd if=trunc.bin bs=1 skip=1000003 count=4093 2>/dev/null | tr -d '\000' | wc -c)" 0
check "truncate to 0" truncate -s 0 hello-copy.txt
eq "empty file size" "$(stat -c %s hello-copy.txt)" 0

section "rename over an existing file"
echo AAA > a.txt; echo BBB > b.txt
ino_a=$(stat -c %i a.txt)
check "mv a.txt b.txt (b exists)" mv a.txt b.txt
drop_caches
check_fails "a.txt is gone" stat a.txt
eq "b.txt has a's content" "$(cat b.txt)" AAA
eq "b.txt has a's inode" "$(stat -c %i b.txt)" "$ino_a"
mkdir -p sub1 sub2
echo moved > sub1/m.txt
check "mv across directories" mv sub1/m.txt sub2/m.txt
check "mv a directory" mv sub2 sub3
drop_caches
eq "moved file content" "$(cat sub3/m.txt)" moved
check_fails "old name sub1/m.txt is gone" stat sub1/m.txt

section "hard links"
check "ln data.bin link1.bin" ln data.bin link1.bin
check "ln data.bin link2.bin" ln data.bin link2.bin
check "ln sub3/m.txt sub1/m-link.txt (other dir)" ln sub3/m.txt sub1/m-link.txt
drop_caches
eq "link count with 3 names" "$(stat -c %h data.bin)" 3
check "rm link2.bin" rm link2.bin
drop_caches
eq "link count after rm of one name" "$(stat -c %h data.bin)" 2
eq "link1.bin is the same inode" "$(stat -c %i link1.bin)" "$(stat -c %i data.bin)"
eq "link1.bin content" "$(sum link1.bin)" "$(sum /tmp/data.full)"
eq "cross-dir link count" "$(stat -c %h sub3/m.txt)" 2

section "symlinks"
check "ln -s hello.txt sym" ln -s hello.txt sym
check "ln -s dangling" ln -s /no/such/target dangling
long=$(printf '%0200d' 0 | tr 0 x)
check "ln -s 200-byte target" ln -s "$long" longsym
drop_caches
eq "readlink sym" "$(readlink sym)" hello.txt
eq "readlink dangling" "$(readlink dangling)" /no/such/target
eq "readlink longsym" "$(readlink longsym)" "$long"
eq "cat through symlink" "$(head -n 1 sym)" "hello from the kernel client"
eq "stat -c %F sym" "$(stat -c %F sym)" "symbolic link"

section "mkdir, rmdir"
check "mkdir -p d1/d2/d3" mkdir -p d1/d2/d3
check "mkdir d1/other" mkdir d1/other
check_fails "mkdir of an existing dir" mkdir d1
check_fails "rmdir of a non-empty dir" rmdir d1
check "rmdir d1/d2/d3" rmdir d1/d2/d3
check "rmdir d1/other" rmdir d1/other
drop_caches
check_fails "d1/d2/d3 is gone" stat d1/d2/d3
eq "d1 link count (2 + one subdir)" "$(stat -c %h d1)" 3
echo x > d1/d2/f
check_fails "rmdir of a dir holding a file" rmdir d1/d2
check "unlink while open keeps data readable" sh -c 'echo open-data > opened; exec 5<opened; rm opened; [ "$(cat <&5)" = open-data ]'

section "readdir of $NENTRIES entries"
mkdir -p big10k
# four creators at once: the guest's 2 CPUs stay busy while calls wait for replies
q=$(( (NENTRIES + 3) / 4 )); pids=
for p in 0 1 2 3; do
    ( cd big10k && i=$((p * q)); end=$(((p + 1) * q)); [ $end -gt "$NENTRIES" ] && end=$NENTRIES
      while [ $i -lt $end ]; do : > e$i || exit 1; i=$((i + 1)); done ) &
    pids="$pids $!"
done
rcs=; for p in $pids; do wait $p; rcs="$rcs$?"; done
eq "create loops exit status" "$rcs" 0000
seq 0 $((NENTRIES - 1)) | sed 's/^/e/' | sort > /tmp/names.exp
drop_caches
eq "entries listed" "$(ls big10k | wc -l)" "$NENTRIES"
ls -a big10k | grep -vE '^\.\.?$' | sort > /tmp/names.got
if cmp -s /tmp/names.exp /tmp/names.got; then ok "all $NENTRIES names present, none extra"; else bad "names differ: $(diff /tmp/names.exp /tmp/names.got | head -n 10 | tr '\n' ' ')"; fi
eq "stat of one entry" "$(stat -c %F big10k/e$((NENTRIES - 1)))" "regular empty file"
eq "ls -l of $NENTRIES (READDIRPLUS attrs)" "$(ls -l big10k | grep -c '^-rw')" "$NENTRIES"

section "chmod, chown, touch -d"
echo attrs > attr.txt
check "chown 1234:5678" chown 1234:5678 attr.txt
check "chmod 4741" chmod 4741 attr.txt
check "touch -d 2020-01-02 03:04:05" touch -d '2020-01-02 03:04:05' attr.txt
mkdir -p adir
check "chmod 2750 dir" chmod 2750 adir
check "chown 42:43 dir" chown 42:43 adir
check "touch -d on a dir" touch -d '2019-05-06 07:08:09' adir
drop_caches
eq "mode" "$(stat -c %a attr.txt)" 4741
eq "owner" "$(stat -c %u:%g attr.txt)" 1234:5678
eq "mtime" "$(stat -c %Y attr.txt)" 1577934245
eq "dir mode" "$(stat -c %a adir)" 2750
eq "dir owner" "$(stat -c %u:%g adir)" 42:43
eq "dir mtime" "$(stat -c %Y adir)" 1557126489

section "fifo and device nodes"
check "mkfifo fifo" mkfifo fifo
check "mknod chardev c 1 3" mknod chardev c 1 3
check "mknod blockdev b 7 9" mknod blockdev b 7 9
drop_caches
eq "stat -c %F fifo" "$(stat -c %F fifo)" fifo
check "test -p fifo" test -p fifo
eq "chardev type, major, minor" "$(stat -c '%F %t %T' chardev)" "character special file 1 3"
eq "blockdev type, major, minor" "$(stat -c '%F %t %T' blockdev)" "block special file 7 9"

# --- more semantics, in $W/more: exclusive create, 64-bit offsets, directory link counts,
# separate atime/mtime, AUTH_SYS permission checks as uid 1000, concurrent writers
mkdir -p more && cd more || exit 1
section "exclusive create (O_EXCL)"
check "noclobber create (O_EXCL)" sh -c 'set -C; echo one > ex'
check_fails "noclobber create of an existing file" sh -c 'set -C; echo two > ex'
drop_caches
eq "ex content" "$(cat ex)" one
eq "ex mode" "$(stat -c %a ex)" 644
m=$(stat -c %Y ex); n=$(date +%s)
# (the guest's clock and the host's may be a second or two apart)
[ $((n - m)) -gt -300 ] && [ $((n - m)) -lt 300 ] && ok "ex mtime is recent ($m vs now $n)" || bad "ex mtime $m, now $n"
a=$(stat -c %X ex); [ $((n - a)) -gt -300 ] && [ $((n - a)) -lt 300 ] && ok "ex atime is recent" || bad "ex atime $a now $n"
section "offsets past 4 GiB (sparse)"
dd if=/dev/urandom of=/tmp/m bs=1048576 count=1 2>/dev/null
check "write 1 MiB at 4 GiB + 1 MiB" dd if=/tmp/m of=sparse bs=1048576 seek=4097 count=1 conv=notrunc
drop_caches
eq "size" "$(stat -c %s sparse)" $((4098 * 1048576))
eq "data at 4 GiB+1 MiB" "$(dd if=sparse bs=1048576 skip=4097 count=1 2>/dev/null | sha256sum | cut -d' ' -f1)" "$(sum /tmp/m)"
eq "hole at 1 GiB reads zeros" "$(dd if=sparse bs=1048576 skip=1024 count=1 2>/dev/null | tr -d '\000' | wc -c)" 0
eq "blocks used (sparse)" "$( [ $(stat -c %b sparse) -lt 10000 ] && echo small || stat -c %b sparse)" small
section "directory link counts after moving a subdir"
mkdir -p p1/c p2
eq "p1 nlink" "$(stat -c %h p1)" 3
eq "p2 nlink" "$(stat -c %h p2)" 2
check "mv p1/c p2/" mv p1/c p2/
drop_caches
eq "p1 nlink after" "$(stat -c %h p1)" 2
eq "p2 nlink after" "$(stat -c %h p2)" 3
eq "c/.. is p2" "$(stat -c %i p2/c/..)" "$(stat -c %i p2)"
mkdir -p e1 ne/sub
check "rename dir over an empty dir" mv -T p2/c e1
check_fails "rename dir over a non-empty dir" mv -T e1 ne
section "atime and mtime separately"
echo t > times
check "touch -a -d 2001-02-03" touch -a -d '2001-02-03 04:05:06' times
check "touch -m -d 2011-12-13" touch -m -d '2011-12-13 14:15:16' times
drop_caches
eq "atime" "$(stat -c %X times)" "$(date -d '2001-02-03 04:05:06' +%s)"
eq "mtime" "$(stat -c %Y times)" "$(date -d '2011-12-13 14:15:16' +%s)"
section "permissions with AUTH_SYS uid 1000"
mkdir -p /etc; echo 'root:x:0:0::/:/bin/sh' > /etc/passwd; echo 'u1000:x:1000:1000::/tmp:/bin/sh' >> /etc/passwd
echo 'root:x:0:' > /etc/group; echo 'g1000:x:1000:' >> /etc/group
echo secret > rootfile; chmod 644 rootfile
mkdir -p rootdir; chmod 755 rootdir
mkdir -p userdir; chown 1000:1000 userdir
drop_caches
as() { su -s /bin/sh u1000 -c "$1"; }
denied() {  # DESC CMD: must fail with EACCES/EPERM
    _o=$(as "$2" 2>&1) && { bad "$1: succeeded"; return; }
    case $_o in *'ermission denied'*|*'not permitted'*) ok "$1 ($_o)";; *) bad "$1: failed but not with a permission error: $_o";; esac
}
eq "id as u1000" "$(as 'id -u'):$(as 'id -g')" 1000:1000
check "uid 1000 reads a 644 root file" as "cat rootfile"
denied "uid 1000 writes a 644 root file" "echo x >> rootfile"
denied "uid 1000 creates in a 755 root dir" "echo x > rootdir/f"
check "uid 1000 creates in its own dir" as "echo x > userdir/f"
eq "owner of the new file" "$(stat -c %u:%g userdir/f)" 1000:1000
denied "uid 1000 chmods a root file" "chmod 777 rootfile"
denied "uid 1000 chowns its file to 0" "chown 0 userdir/f"
chmod 600 rootfile
drop_caches
denied "uid 1000 reads a 600 root file" "cat rootfile"
section "concurrent writers to one file"
dd if=/dev/urandom of=/tmp/cw bs=1048576 count=8 2>/dev/null
for k in 0 1 2 3 4 5 6 7; do dd if=/tmp/cw of=cw bs=1048576 skip=$k seek=$k count=1 conv=notrunc,fsync 2>/dev/null & done; wait
drop_caches
eq "8 concurrent 1 MiB writers" "$(sum cw)" "$(sum /tmp/cw)"
cd "$W" || exit 1

section "big file ($BIG_MB MiB)"
# At the export root, so the host can read it over libnfs too (libnfs file URLs cannot name a
# subdirectory of export "/"). The content repeats with a period of 63 MiB (not a power of
# two, so an offset that loses high bits reads different bytes): each period is a 16-byte
# stamp (its number) + 63 MiB - 16 random bytes (big.blk, also on the mount). The generator
# writes straight into the file (pipes are very slow under TCG). The host computes the
# expected md5 from big.blk natively and stores it as big.md5 for phase 2.
P=66060288            # 63 MiB
total=$((BIG_MB * 1048576))
n=$((total / P)); rem=$((total - n * P))
dd if=/dev/urandom of=/tmp/blk bs=1048576 count=63 2>/dev/null
truncate -s $((P - 16)) /tmp/blk
rm -f "$MNT/big.bin" "$MNT/big.md5"
check "write big.blk (the random body, 63 MiB)" cp /tmp/blk "$MNT/big.blk"
sum /tmp/blk > "$E/big.blk.sha256"
t=$(now)
big_rc=0
{
    k=0
    while [ $k -lt $n ]; do printf '%016x' $k; cat /tmp/blk || big_rc=1; k=$((k + 1)); done
    if [ $rem -gt 16 ]; then printf '%016x' $n; head -c $((rem - 16)) /tmp/blk || big_rc=1
    elif [ $rem -gt 0 ]; then printf '%016x' $n | head -c $rem; fi
} > "$MNT/big.bin" || big_rc=1
sync || big_rc=1
t2=$(now)
eq "writing big.bin (exit status)" "$big_rc" 0
echo "big file: $BIG_MB MiB written in $(awk "BEGIN{printf \"%.1f\", $t2 - $t}")s ($(awk "BEGIN{printf \"%.1f\", $BIG_MB / ($t2 - $t)}") MiB/s)"
drop_caches
eq "big.bin size" "$(stat -c %s "$MNT/big.bin")" $total
for k in 0 1 $((n / 2)) $n; do
    [ $((k * P)) -lt $total ] || continue
    eq "stamp of period $k" "$(dd if="$MNT/big.bin" bs=1048576 skip=$((k * 63)) count=1 2>/dev/null | head -c 16)" "$(printf '%016x' $k)"
done
if [ $rem -gt 1048592 ]; then
    eq "last MiB" "$(tail -c 1048576 "$MNT/big.bin" | sha256sum | cut -d' ' -f1)" \
        "$(head -c $((rem - 16)) /tmp/blk | tail -c 1048576 | sha256sum | cut -d' ' -f1)"
fi

section "record expectations for phase 2"
drop_caches
find . -path ./big10k -prune -o -print | sort | while read -r p; do manifest_line "$p"; done > /tmp/manifest
manifest_line ./big10k >> /tmp/manifest
check "write manifest" cp /tmp/manifest "$E/manifest"
dir_summary ./big10k > /tmp/dirs
check "write dir summary" cp /tmp/dirs "$E/dirs"
sync
eq "manifest on the mount" "$(sum "$E/manifest")" "$(sum /tmp/manifest)"
echo "--- manifest ($(wc -l < /tmp/manifest) paths):"; cat /tmp/manifest
echo "--- dirs:"; cat /tmp/dirs
grep -q 'stat failed' /tmp/manifest && bad "stat failed while writing the manifest"
# a clean state for the unmount: no leftover silly-renamed files
sleep 1
eq "no .nfs* leftovers" "$(ls -a | grep -c '^\.nfs')" 0

finish
