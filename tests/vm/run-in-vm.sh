#!/bin/bash
# run-in-vm.sh - mount an NFSv3 server running on this host (127.0.0.1:PORT) with the REAL
# Linux kernel NFS client inside a throw-away qemu guest (stock Debian kernel + static busybox
# initramfs), run a busybox-ash script against the mount, print everything to stdout (the
# serial console), power off.
#
# Adapted from ../shared/tools/kernel-nfs-client/run-in-vm.sh for scoutgw's tests
# (scripts/nfs-kernel-test.sh): extra guest files, guest environment, exit codes that tell a
# failed test from a broken setup or a timeout, NFS messages from dmesg at the end.
#
# Needs (Debian 12): apt-get install -y qemu-system-x86 linux-image-cloud-amd64 busybox-static
# No NFS support is needed on the host. Root only for /dev/kvm access.
#
# Environment knobs:
#   NFS_PORT      port of the NFS server on host 127.0.0.1 (default 2049); also the MOUNT
#                 port unless MOUNT_PORT is set (scoutgw serves both on one port)
#   MOUNT_PORT    MOUNT protocol port (default = NFS_PORT)
#   EXPORT        export path to mount (default /)
#   MOUNT_OPTS    options appended to vers=3,proto=tcp,...,nolock (default "hard")
#   GUEST_SCRIPT  busybox-ash script run in the guest after mounting, with $MNT the mount
#                 point and $GUEST_FILES the folder of the extra files; its exit status
#                 decides PASS/FAIL (default: a small smoke test)
#   GUEST_FILES   space-separated host files copied to /files in the guest (e.g. a library)
#   GUEST_ENV     space-separated names of host variables exported to the guest script
#   KVER          kernel version under /lib/modules and /boot (default: newest with both)
#   MEM           guest RAM in MiB (default 512)      SMP  guest CPUs (default 2)
#   TIMEOUT       host-side timeout in seconds for the whole VM run (default 600)
#   ACCEL         auto (default), kvm or tcg          CPU  extra qemu cpu option
#   KEEP          1 keeps the work dir (initramfs, console log)
#
# Exit status: 0 the guest printed "NFSVM-RESULT: PASS"; 1 it printed FAIL (script failed
# or the mount failed); 2 host setup error; 124 timeout or no result line.
#
# Networking: qemu user-mode (slirp) network, no host forwarding. The guest is given
# 10.0.2.15/24 and NO default route, so the only thing it can reach is 10.0.2.2, which slirp
# turns into a connection to the host's 127.0.0.1.
set -euo pipefail

NFS_PORT=${NFS_PORT:-2049}
MOUNT_PORT=${MOUNT_PORT:-$NFS_PORT}
EXPORT=${EXPORT:-/}
MOUNT_OPTS=${MOUNT_OPTS:-hard}
MEM=${MEM:-512}
SMP=${SMP:-2}
TIMEOUT=${TIMEOUT:-600}
BUSYBOX=${BUSYBOX:-/bin/busybox}

if [ -z "${KVER:-}" ]; then
  KVER=
  for d in $(ls -1 /lib/modules 2>/dev/null | sort -V); do
    [ -e "/boot/vmlinuz-$d" ] && KVER=$d
  done
fi
KERNEL=/boot/vmlinuz-$KVER
MODDIR=/lib/modules/$KVER

die_setup() { echo "run-in-vm: $*" >&2; exit 2; }
[ -n "$KVER" ] || die_setup "no kernel with both /boot/vmlinuz-X and /lib/modules/X (apt-get install -y linux-image-cloud-amd64)"
for f in "$KERNEL" "$MODDIR/modules.dep" "$BUSYBOX"; do
  [ -e "$f" ] || die_setup "missing $f (apt-get install -y qemu-system-x86 linux-image-cloud-amd64 busybox-static)"
done
command -v qemu-system-x86_64 >/dev/null || die_setup "missing qemu-system-x86_64 (apt-get install -y qemu-system-x86)"
if ! file -L "$BUSYBOX" 2>/dev/null | grep -q 'statically linked'; then
  # file(1) may be absent; ldd says "not a dynamic executable" for static binaries
  case $(ldd "$BUSYBOX" 2>&1) in *'not a dynamic'*) ;; *) die_setup "$BUSYBOX must be static (busybox-static)";; esac
fi

WORK=$(mktemp -d /tmp/nfsvm.XXXXXX)
cleanup() { if [ "${KEEP:-0}" = 1 ]; then echo "run-in-vm: work dir kept: $WORK" >&2; else rm -rf "$WORK"; fi; }
trap cleanup EXIT
trap "exit 143" TERM INT
ROOT=$WORK/root
mkdir -p "$ROOT"/{bin,dev,proc,sys,mnt,tmp,modules,files}
cp "$BUSYBOX" "$ROOT/bin/busybox"

# --- kernel modules: virtio-net + NFSv3 client, in dependency order ---------
LOADLIST=$ROOT/modules/order
: > "$LOADLIST"
add_mod() {   # $1 = path relative to $MODDIR, as in modules.dep
  local m=$1 deps d
  grep -qxF "$m" "$LOADLIST" && return 0
  deps=$(grep -E "^${m//./\\.}:" "$MODDIR/modules.dep" | cut -d: -f2- || true)
  # modules.dep lists deps so that the last one must be loaded first
  for d in $(echo $deps | tr ' ' '\n' | tac); do add_mod "$d"; done
  grep -qxF "$m" "$LOADLIST" || echo "$m" >> "$LOADLIST"
}
for want in virtio_pci virtio_net nfsv3; do
  rel=$(grep -oE "^[^:]*/${want}\.ko(\.xz|\.zst|\.gz)?:" "$MODDIR/modules.dep" | head -n1 | tr -d : || true)
  if [ -z "$rel" ]; then
    grep -qE "/${want}\.ko" "$MODDIR/modules.builtin" 2>/dev/null && continue   # built in
    die_setup "module $want not found for $KVER"
  fi
  add_mod "$rel"
done
while read -r m; do
  mkdir -p "$ROOT/modules/$(dirname "$m")"
  case $m in
    *.ko.xz)  xz -dc "$MODDIR/$m"   > "$ROOT/modules/${m%.xz}";  sed -i "s|^$m\$|${m%.xz}|" "$LOADLIST";;
    *.ko.zst) zstd -qdc "$MODDIR/$m" > "$ROOT/modules/${m%.zst}"; sed -i "s|^$m\$|${m%.zst}|" "$LOADLIST";;
    *.ko.gz)  gzip -dc "$MODDIR/$m" > "$ROOT/modules/${m%.gz}";  sed -i "s|^$m\$|${m%.gz}|" "$LOADLIST";;
    *)        cp "$MODDIR/$m" "$ROOT/modules/$m";;
  esac
done < <(cat "$LOADLIST")

# --- guest test script, extra files, environment -----------------------------
if [ -n "${GUEST_SCRIPT:-}" ]; then
  [ -r "$GUEST_SCRIPT" ] || die_setup "cannot read GUEST_SCRIPT=$GUEST_SCRIPT"
  cp "$GUEST_SCRIPT" "$ROOT/test.sh"
else
  cat > "$ROOT/test.sh" <<'SMOKE'
# default smoke test; $MNT is the mount point
fail=0
step() { echo "--- $*"; "$@" || { echo "!!! FAILED: $*"; fail=1; }; }
step ls -la "$MNT"
step sh -c "echo hello-from-linux-kernel-client > '$MNT/vmtest.txt'"
step cat "$MNT/vmtest.txt"
step dd if=/dev/urandom of=/tmp/blob bs=1024 count=1024
step cp /tmp/blob "$MNT/vmblob.bin"
sync; echo 3 > /proc/sys/vm/drop_caches
step cmp /tmp/blob "$MNT/vmblob.bin" && echo "1 MiB write/readback OK"
step df -k "$MNT"
exit $fail
SMOKE
fi
for f in ${GUEST_FILES:-}; do
  [ -r "$f" ] || die_setup "cannot read guest file $f"
  cp "$f" "$ROOT/files/"
done
: > "$ROOT/env"
for v in ${GUEST_ENV:-}; do
  case $v in *[!A-Za-z0-9_]*|'') die_setup "bad GUEST_ENV name '$v'";; esac
  val=${!v-}
  printf "export %s='%s'\n" "$v" "${val//\'/\'\\\'\'}" >> "$ROOT/env"
done

# --- /init -------------------------------------------------------------------
cat > "$ROOT/init" <<EOF
#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
mount -t tmpfs -o size=256m tmp /tmp
echo "NFSVM: kernel \$(uname -r) up after \$(cut -d' ' -f1 /proc/uptime)s"
while read -r m; do insmod /modules/\$m || echo "NFSVM: insmod \$m failed"; done < /modules/order
# the virtio NIC shows up asynchronously
i=0; while [ ! -e /sys/class/net/eth0 ] && [ \$i -lt 100 ]; do sleep 0.1; i=\$((i+1)); done
ip link set lo up; ip link set eth0 up
ip addr add 10.0.2.15/24 dev eth0      # slirp default guest address; no default route on purpose
OPTS="vers=3,proto=tcp,mountproto=tcp,port=$NFS_PORT,mountport=$MOUNT_PORT,nolock,addr=10.0.2.2,mountaddr=10.0.2.2,$MOUNT_OPTS"
echo "NFSVM: mount -t nfs -o \$OPTS 10.0.2.2:$EXPORT /mnt"
if mount -t nfs -o "\$OPTS" "10.0.2.2:$EXPORT" /mnt; then
  echo "NFSVM: mounted at \$(cut -d' ' -f1 /proc/uptime)s"; grep ' /mnt ' /proc/mounts
  export MNT=/mnt GUEST_FILES=/files
  . /env
  if sh /test.sh < /dev/null; then R=PASS; else R=FAIL; fi
  cd /
  echo "NFSVM: /proc/net/rpc/nfs:"; cat /proc/net/rpc/nfs 2>/dev/null
  echo "NFSVM: kernel messages about NFS/RPC:"; dmesg | grep -iE 'nfs|rpc|stale|not responding' | grep -v 'Registered' | tail -n 30
  umount /mnt || umount -f /mnt || { echo "NFSVM: umount failed"; R=FAIL; }
else
  R=FAIL; echo "NFSVM: mount failed"; dmesg | tail -n 20
fi
echo "NFSVM-RESULT: \$R (uptime \$(cut -d' ' -f1 /proc/uptime)s)"
poweroff -f
EOF
chmod +x "$ROOT/init" "$ROOT/test.sh"

(cd "$ROOT" && find . | cpio -o -H newc --quiet | gzip -1) > "$WORK/initramfs.gz"

# Acceleration. ACCEL=auto|kvm|tcg (default auto).
#  * "-cpu host" aborts under nested KVM ("failed to set MSR 0x10a"), so the default qemu cpu
#    model is used with kvm; override with CPU="-cpu max" etc.
#  * If /dev/kvm is provided by kvm_pvm (PVM, used by some sandboxes without hardware
#    virtualisation), a stock Debian kernel hangs right after "Probing EDD" - PVM needs a
#    PVM-enabled guest kernel. auto therefore falls back to TCG software emulation there.
ACCEL=${ACCEL:-auto}
if [ "$ACCEL" = auto ]; then
  if [ -w /dev/kvm ] && [ ! -d /sys/module/kvm_pvm ]; then ACCEL=kvm; else ACCEL=tcg; fi
fi
case $ACCEL in
  kvm) QACCEL="-enable-kvm ${CPU:-}";;
  tcg) QACCEL="-accel tcg,thread=multi ${CPU:-}"; echo "run-in-vm: using TCG software emulation (slow)" >&2;;
  *) die_setup "ACCEL must be auto, kvm or tcg";;
esac

LOG=$WORK/console.log
set +e
# shellcheck disable=SC2086
timeout --foreground "$TIMEOUT" qemu-system-x86_64 $QACCEL -m "$MEM" -smp "$SMP" \
  -display none -no-reboot -nodefaults -serial stdio \
  -kernel "$KERNEL" -initrd "$WORK/initramfs.gz" \
  -append "console=ttyS0 quiet loglevel=3 panic=-1" \
  -netdev user,id=n0,ipv6=off -device virtio-net-pci,netdev=n0 \
  < /dev/null 2>&1 | tee "$LOG"
qrc=${PIPESTATUS[0]}
set -e
if grep -q 'NFSVM-RESULT: PASS' "$LOG"; then exit 0; fi
if grep -q 'NFSVM-RESULT: FAIL' "$LOG"; then exit 1; fi
if [ "$qrc" = 124 ]; then echo "run-in-vm: TIMEOUT after ${TIMEOUT}s" >&2; else echo "run-in-vm: qemu exited $qrc with no result line" >&2; fi
exit 124
