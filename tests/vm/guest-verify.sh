# guest-verify.sh - phase 2 of the kernel-client test (busybox ash in a fresh qemu guest).
# Runs after phase 1 (guest-posix.sh) unmounted, the gateway was stopped with SIGTERM and
# started again (a new process on the same devices): a new mount must find everything phase
# 1 recorded under $MNT/_expect — same inode numbers (fileids, the stable part of the
# handles), sizes, modes, owners, times, link counts, file types, symlink targets, checksums,
# the 10 k entries — and the big file's data (md5 computed by the host into $MNT/big.md5).
# Then it keeps working on the restarted gateway.
. "$GUEST_FILES/guest-lib.sh"

W=$MNT/posix
E=$MNT/_expect

section "expectations from phase 1"
for f in "$E/manifest" "$E/dirs" "$E/big.blk.sha256" "$MNT/big.md5"; do
    check "$f is there" test -s "$f"
done
cd "$W" || { bad "cd $W"; finish; exit 1; }

section "manifest: types, sizes, modes, owners, times, links, inodes, contents"
drop_caches
cut -d'|' -f1 "$E/manifest" | while read -r p; do manifest_line "$p"; done > /tmp/manifest.now
n=$(wc -l < "$E/manifest")
if cmp -s "$E/manifest" /tmp/manifest.now; then
    ok "all $n manifest lines identical"
else
    bad "manifest differs (- phase 1, + now):"
    diff "$E/manifest" /tmp/manifest.now | grep '^[-+][^-+]' | head -n 40
fi
# the checks that matter most, spelled out so a failure names them
eq "hard link count of data.bin" "$(stat -c %h data.bin)" 2
eq "link1.bin and data.bin share an inode" "$(stat -c %i link1.bin)" "$(stat -c %i data.bin)"
eq "readlink sym" "$(readlink sym)" hello.txt
eq "readlink dangling" "$(readlink dangling)" /no/such/target
eq "fifo type" "$(stat -c %F fifo)" fifo
eq "chardev" "$(stat -c '%F %t %T' chardev)" "character special file 1 3"
eq "attr.txt mode owner mtime" "$(stat -c '%a %u:%g %Y' attr.txt)" "4741 1234:5678 1577934245"
eq "truncated file size" "$(stat -c %s trunc.bin)" 5000000
eq "b.txt (renamed over)" "$(cat b.txt)" AAA
check_fails "a.txt still gone" stat a.txt

section "10 k entries (plain READDIR: the mount has nordirplus)"
drop_caches
# names through a shell glob first: READDIR only (with cookies), no LOOKUP per entry
set -- big10k/*
nexp=$(cut -d'|' -f2 "$E/dirs" | cut -d= -f2)
eq "entries by glob (READDIR only)" "$#" "$nexp"
eq "names by glob" "$(for f; do echo "${f#big10k/}"; done | sort | md5sum | cut -d' ' -f1)" "$(cut -d'|' -f3 "$E/dirs" | cut -d= -f2)"
set --
eq "dir summary (count, names, inode numbers)" "$(dir_summary ./big10k)" "$(cat "$E/dirs")"
# (no ls -l here: without READDIRPLUS that is one LOOKUP per entry, minutes under TCG)

section "big file"
drop_caches
eq "big.blk sha256" "$(sum "$MNT/big.blk")" "$(cat "$E/big.blk.sha256")"
t=$(now)
got=$(md5sum "$MNT/big.bin" | cut -d' ' -f1)
t2=$(now)
eq "big.bin md5 (full read after restart)" "$got" "$(cat "$MNT/big.md5")"
echo "big file read back: $(stat -c %s "$MNT/big.bin") bytes in $(awk "BEGIN{printf \"%.1f\", $t2 - $t}")s"

section "keep working after the restart"
echo after-restart > after.txt
check "append to data.bin" sh -c 'echo tail >> data.bin'
check "mkdir + rename + link + remove" sh -c 'mkdir d-after && mv after.txt d-after/x && ln d-after/x d-after/y && rm d-after/y'
check "rmdir of non-empty d1 still fails" sh -c '! rmdir d1 2>/dev/null'
drop_caches
eq "new file content" "$(cat d-after/x)" after-restart
eq "link count of d-after/x after link + remove" "$(stat -c %h d-after/x)" 1
eq "appended bytes (read through the other name)" "$(tail -c 5 link1.bin)" tail

finish
