#!/usr/bin/env bash
# The test command of scoutgw: formatting, lints, every test of the workspace, and a smoke run
# of the README's first command. Needs only a Rust toolchain (>= 1.95) with rustfmt and clippy.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== cargo fmt --check"
cargo fmt --all -- --check

echo "== cargo clippy -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings

echo "== cargo test"
cargo test --workspace --locked

echo "== quickstart smoke run (the README's first command, on a scratch folder)"
cargo build --quiet --locked --bin scoutgw
bin=target/debug/scoutgw
scratch=$(mktemp -d)
pid=
cleanup() { [ -n "$pid" ] && kill -9 "$pid" 2>/dev/null; rm -rf "$scratch"; }
trap cleanup EXIT
# A failed step says which one, with what the node printed, before the scratch folder goes.
smoke_failed() {
    echo "quickstart smoke run failed at line $1 of scripts/test.sh; the node printed:" >&2
    cat "$scratch/out2" >&2 2>/dev/null || true
}
trap 'smoke_failed $LINENO' ERR
"$bin" quickstart --dir "$scratch/data" --setup-only >"$scratch/out1"
port=$((20000 + RANDOM % 20000))
"$bin" quickstart --dir "$scratch/data" --nfs-bind "127.0.0.1:$port" \
    --http-bind "127.0.0.1:$((port + 1))" >"$scratch/out2" 2>&1 &
pid=$!
for _ in $(seq 1 300); do grep -q "serving NFSv3" "$scratch/out2" && break; sleep 0.2; done
grep -q "serving NFSv3" "$scratch/out2"
grep -q "already holds filesystem" "$scratch/out2"
grep -q "sudo mount -t nfs -o vers=3,proto=tcp,port=$port,mountport=$port" "$scratch/out2"
if command -v nfs-cp >/dev/null 2>&1; then
    head -c 300000 /dev/urandom >"$scratch/in.bin"
    nfs-cp "$scratch/in.bin" "nfs://127.0.0.1//smoke.bin?nfsport=$port&mountport=$port" >/dev/null
    nfs-cp "nfs://127.0.0.1//smoke.bin?nfsport=$port&mountport=$port" "$scratch/out.bin" >/dev/null
    cmp "$scratch/in.bin" "$scratch/out.bin"
elif [ "${CI:-}" = true ]; then
    echo "CI needs nfs-cp (libnfs-utils)" >&2
    exit 1
fi
curl -sf "http://127.0.0.1:$((port + 1))/readyz" >/dev/null
kill -TERM "$pid"
wait "$pid"
pid=
grep -q "stopped cleanly" "$scratch/out2"
"$bin" print --json "$scratch/data/meta.dev" >"$scratch/print.json"
grep -q '"errors": \[\]' "$scratch/print.json"
"$bin" fsck "$scratch/data/meta.dev" "$scratch/data/data.dev" >"$scratch/fsck.out" \
    || { cat "$scratch/fsck.out" >&2; false; }
trap - ERR

echo "== HTTP API and metrics conformance: schemathesis, promtool, prometheus (scripts/http-conformance.sh)"
./scripts/http-conformance.sh

echo "== the Linux kernel NFS client in a qemu guest (scripts/nfs-kernel-test.sh)"
./scripts/nfs-kernel-test.sh

echo "== all tests passed"
