#!/usr/bin/env bash
# scripts/bench-index.sh - index walk vs namespace walk (issue 6).
#
# On a tree of 1 M files of which 10 k changed since a checkpoint, finds the changed files
#   (a) with one `scoutgw walk-inodes meta_seq CHECKPOINT+1 -1` pass through a node's HTTP
#       API (the CLI as a process, pages of 10000 over HTTP), and
#   (b) with a full namespace walk over NFS comparing every file's mtime with the
#       checkpoint time, as a tool without the index must: READDIRPLUS (1 MiB replies) of
#       the root and of every directory, 4 directories at a time on 4 TCP connections;
# in the same run, against the same node, rounds alternating which walk goes first. Both
# must report exactly the changed inodes (checked). Prints both times and the ratio.
#
# The Rust side is gateway/benches/index_walk.rs (its doc comment has the details): the
# 1 M files are created offline through the library on the device files that
# `scoutgw quickstart --setup-only` makes, then `scoutgw serve` (release build) runs on them
# with export.sync=false; the checkpoint is the horizon /v1/index/meta_seq reports; the
# 10 k changes are NFS SETATTRs of mtime to the server's time.
#
# usage: scripts/bench-index.sh
# knobs: INDEX_WALK_FILES=1000000 INDEX_WALK_PER_DIR=10000 INDEX_WALK_CHANGED=10000
#        INDEX_WALK_ROUNDS=3 INDEX_WALK_NFS_CONNS=4 INDEX_WALK_PORT=16300 (NFS; HTTP +1)
#        INDEX_WALK_DIR=target/bench-tmp (device files: sparse, ~2 GB written at 1 M files)
#        OUT=target/bench-index/results-<date>.txt
set -euo pipefail
cd "$(dirname "$0")/.."

out=${OUT:-target/bench-index/results-$(date +%Y%m%d-%H%M%S).txt}
mkdir -p "$(dirname "$out")" "${INDEX_WALK_DIR:-target/bench-tmp}"
{
    echo "# scripts/bench-index.sh, $(date -Iseconds), commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
    echo "# $(nproc) cpus, $(free -g | awk '/^Mem:/ {print $2}') GiB RAM, $(uname -r), $(rustc --version)"
    echo "# bench dir on $(df -T "${INDEX_WALK_DIR:-target/bench-tmp}" | awk 'NR == 2 {print $2 " (" $1 ")"}')"
} | tee "$out"
cargo bench --locked -p scoutgw --bench index_walk 2>&1 | grep --line-buffered -v '^\s*Compiling ' | tee -a "$out"
echo "results in $out"
