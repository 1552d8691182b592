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
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
cargo run --quiet --locked --bin scoutgw -- quickstart --dir "$scratch/data" >"$scratch/out1"
cargo run --quiet --locked --bin scoutgw -- quickstart --dir "$scratch/data" >"$scratch/out2"
grep -q "already holds filesystem" "$scratch/out2"
cargo run --quiet --locked --bin scoutgw -- print --json "$scratch/data/meta.dev" >"$scratch/print.json"
grep -q '"errors": \[\]' "$scratch/print.json"

echo "== all tests passed"
