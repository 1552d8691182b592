# guest-lib.sh - helpers shared by the guest scripts (busybox ash, sourced; no set -e).
# Every check prints "ok   ..." or "!!! FAIL: ..." and counts failures in $fail, so one run
# reports every problem instead of stopping at the first. The driver greps "!!! FAIL".

fail=0
export TZ=UTC

now() { cut -d' ' -f1 /proc/uptime; }
T0=$(now)

ok()  { echo "ok   $*"; }
bad() { echo "!!! FAIL: $*"; fail=$((fail + 1)); }

# check DESC CMD...: the command must succeed; its output is shown on failure
check() {
    _desc=$1; shift
    if _out=$("$@" 2>&1); then ok "$_desc"; else bad "$_desc (rc $?): $(echo "$_out" | head -c 400)"; fi
}
# check_fails DESC CMD...: the command must fail
check_fails() {
    _desc=$1; shift
    if _out=$("$@" 2>&1); then bad "$_desc: succeeded but must fail"; else ok "$_desc (failed as expected: $(echo "$_out" | head -c 120))"; fi
}
# eq DESC GOT EXPECTED
eq() {
    if [ "$2" = "$3" ]; then ok "$1 = '$2'"; else bad "$1: got '$2', expected '$3'"; fi
}

# NFSv3 procedure names in the order of /proc/net/rpc/nfs "proc3"
PROC3_NAMES="null getattr setattr lookup access readlink read write create mkdir symlink mknod remove rmdir rename link readdir readdirplus fsstat fsinfo pathconf commit"
rpc_snap() { grep '^proc3' /proc/net/rpc/nfs 2>/dev/null | cut -d' ' -f3-; }
_RPC_LAST=$(rpc_snap)
_SEC_NAME=
_SEC_T=$T0
_SEC_FAIL=0

# the NFS calls between two rpc_snap values, by name (ties a failure to a procedure)
rpc_delta() {
    echo "$PROC3_NAMES|$1|$2" | awk -F'|' '{
        n = split($1, name, " "); split($2, a, " "); split($3, b, " "); s = "";
        for (i = 1; i <= n; i++) if (b[i] - a[i] > 0) s = s " " name[i] "=" (b[i] - a[i]);
        print (s == "" ? " none" : s) }'
}

section_end() {
    [ -n "$_SEC_NAME" ] || return 0
    _t=$(now)
    _res=PASS; [ "$fail" -gt "$_SEC_FAIL" ] && _res=FAIL
    _cur=$(rpc_snap)
    echo "=== end $_SEC_NAME: $_res in $(awk "BEGIN{printf \"%.1f\", $_t - $_SEC_T}")s; NFS calls:$(rpc_delta "$_RPC_LAST" "$_cur")"
    _RPC_LAST=$_cur
    _SEC_NAME=
}
section() {
    section_end
    _SEC_NAME=$1; _SEC_T=$(now); _SEC_FAIL=$fail
    echo "=== $1 (t=$(awk "BEGIN{printf \"%.1f\", $_SEC_T - $T0}")s)"
}

# drop the client's page cache, dentries and inodes so reads go to the server
drop_caches() { sync; echo 3 > /proc/sys/vm/drop_caches; }
# drop only the page cache (keeps dentries and inodes, i.e. the file handles the client holds)
drop_pages() { sync; echo 1 > /proc/sys/vm/drop_caches; }

sum() { sha256sum "$1" 2>&1 | cut -d' ' -f1; }

# one line per path with everything that must survive a restart:
# path|type|size|mode|uid|gid|mtime|ctime|nlink|inode|rdev|content
#   content: sha256 of a small regular file, the target of a symlink, "-" otherwise
# Big regular files (> 64 MiB) are left to their own checks (guest checksums are slow under TCG).
manifest_line() {
    _p=$1
    _st=$(stat -c '%F|%s|%a|%u|%g|%Y|%Z|%h|%i|%t,%T' "$_p" 2>&1) || { echo "$_p|stat failed: $_st"; return; }
    case $_st in
        'regular file|'*|'regular empty file|'*)
            _size=$(echo "$_st" | cut -d'|' -f2)
            if [ "$_size" -le 67108864 ]; then _c=$(sum "$_p"); else _c=big; fi;;
        'symbolic link|'*) _c=$(readlink "$_p" 2>&1);;
        *) _c=-;;
    esac
    echo "$_p|$_st|$_c"
}

# the listing of a big directory in one line: count, checksum of sorted names, and a checksum
# of "inode name" pairs (the fileids must not change across restarts). One listing only:
# busybox ls stats every entry (a LOOKUP each without READDIRPLUS).
dir_summary() {
    ls -ai "$1" | awk '$2 != "." && $2 != ".." {print $1, $2}' > /tmp/.dir_summary
    _n=$(wc -l < /tmp/.dir_summary)
    _names=$(cut -d' ' -f2 /tmp/.dir_summary | sort | md5sum | cut -d' ' -f1)
    _inos=$(sort -k2 /tmp/.dir_summary | md5sum | cut -d' ' -f1)
    echo "$1|entries=$_n|names=$_names|inodes=$_inos"
}

finish() {
    section_end
    _t=$(now)
    echo "=== total $(awk "BEGIN{printf \"%.1f\", $_t - $T0}")s, $fail failed check(s)"
    [ "$fail" -eq 0 ]
}
