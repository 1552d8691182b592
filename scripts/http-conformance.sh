#!/usr/bin/env bash
# Conformance of a node's HTTP API and metrics (issue 6), against real tools:
#   1. schemathesis (PyPI) fuzzes the API against its own OpenAPI document (/v1/openapi.json):
#      no 5xx, responses match the documented status codes, content types and schemas, and
#      the node is still up afterwards;
#   2. `promtool check metrics` (Debian prometheus) passes on the scraped /metrics;
#   3. a real Prometheus server scrapes the node every second and its query API reports
#      up == 1 for the node's job, with scoutgw_* series ingested.
# The node runs with a bearer token (every tool sends it) and holds a few files written over
# NFS. Installs what is missing, once: schemathesis (pinned) in a venv under
# ~/.cache/scoutgw, Debian's prometheus package. Exits non-zero on any failure.
#
# Knobs (environment): HTTP_CONFORMANCE_EXAMPLES (100, schemathesis cases per operation),
# HTTP_CONFORMANCE_PORT (16400: NFS; HTTP, Prometheus are the next two),
# HTTP_CONFORMANCE_SEED (schemathesis seed; random by default, printed).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

SCHEMATHESIS_VERSION=4.32.5
venv="$HOME/.cache/scoutgw/schemathesis-$SCHEMATHESIS_VERSION"
examples=${HTTP_CONFORMANCE_EXAMPLES:-100}
nfs_port=${HTTP_CONFORMANCE_PORT:-16400}
http_port=$((nfs_port + 1))
prom_port=$((nfs_port + 2))

as_root() { if [ "$(id -u)" = 0 ]; then env DEBIAN_FRONTEND=noninteractive "$@"; else sudo -n env DEBIAN_FRONTEND=noninteractive "$@"; fi; }

# --- tools -------------------------------------------------------------------------------
if ! command -v promtool >/dev/null 2>&1 || ! command -v prometheus >/dev/null 2>&1; then
    echo "== installing Debian prometheus (promtool + server)"
    as_root apt-get install -y -q prometheus </dev/null >/dev/null 2>&1 || {
        as_root apt-get update -q </dev/null >/dev/null
        as_root apt-get install -y -q prometheus </dev/null >/dev/null
    }
fi
if [ "$("$venv/bin/schemathesis" --version 2>/dev/null | grep -o '[0-9][0-9.]*' | head -1)" \
    != "$SCHEMATHESIS_VERSION" ]; then
    echo "== installing schemathesis $SCHEMATHESIS_VERSION into $venv"
    rm -rf "$venv"
    mkdir -p "$(dirname "$venv")"
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q --disable-pip-version-check "schemathesis==$SCHEMATHESIS_VERSION"
fi
for tool in curl python3; do
    command -v "$tool" >/dev/null 2>&1 || { echo "http-conformance needs $tool" >&2; exit 1; }
done

# --- a node with some content ------------------------------------------------------------
cargo build --quiet --locked --bin scoutgw
bin="${CARGO_TARGET_DIR:-$root/target}/debug/scoutgw"
scratch=$(mktemp -d)
node_pid=
prom_pid=
cleanup() {
    if [ -n "$prom_pid" ]; then kill "$prom_pid" 2>/dev/null || true; wait "$prom_pid" 2>/dev/null || true; fi
    if [ -n "$node_pid" ]; then kill -9 "$node_pid" 2>/dev/null || true; wait "$node_pid" 2>/dev/null || true; fi
    rm -rf "$scratch"
}
trap cleanup EXIT

failures=()
fail() {
    echo "FAIL: $*" >&2
    failures+=("$*")
}

token=$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')
auth="Authorization: Bearer $token"
"$bin" quickstart --dir "$scratch/node" --setup-only >/dev/null
env -u SCOUTGW_HTTP__TOKEN \
    SCOUTGW_NFS__BIND="127.0.0.1:$nfs_port" SCOUTGW_HTTP__BIND="127.0.0.1:$http_port" \
    SCOUTGW_HTTP__TOKEN="$token" SCOUTGW_NODE__LOG=warn \
    "$bin" serve --config "$scratch/node/scoutgw.toml" >"$scratch/node.out" 2>"$scratch/node.err" &
node_pid=$!
for _ in $(seq 1 150); do
    grep -q "serving NFSv3" "$scratch/node.out" && break
    kill -0 "$node_pid" 2>/dev/null || break
    sleep 0.2
done
if ! grep -q "serving NFSv3" "$scratch/node.out"; then
    cat "$scratch/node.out" "$scratch/node.err" >&2
    echo "the node did not start" >&2
    exit 1
fi
base="http://127.0.0.1:$http_port"
if command -v nfs-cp >/dev/null 2>&1; then
    for i in 1 2 3 4 5; do
        head -c $((i * 5000)) /dev/urandom >"$scratch/in.bin"
        nfs-cp "$scratch/in.bin" "nfs://127.0.0.1//file$i?nfsport=$nfs_port&mountport=$nfs_port" \
            >/dev/null
    done
else
    echo "(nfs-cp missing: the node holds only its root directory)"
fi

# --- 1. schemathesis -----------------------------------------------------------------------
echo "== schemathesis $SCHEMATHESIS_VERSION against $base/v1/openapi.json ($examples examples per operation)"
seed_arg=()
[ -n "${HTTP_CONFORMANCE_SEED:-}" ] && seed_arg=(--seed "$HTTP_CONFORMANCE_SEED")
# In the scratch folder: hypothesis keeps its example database in the working directory.
if ! (cd "$scratch" && "$venv/bin/schemathesis" run "$base/v1/openapi.json" \
    --header "$auth" \
    --checks not_a_server_error,response_schema_conformance,status_code_conformance,content_type_conformance \
    --max-examples "$examples" --wait-for-schema 30 --request-timeout 30 \
    --no-color "${seed_arg[@]}" >"$scratch/schemathesis.log" 2>&1); then
    cat "$scratch/schemathesis.log"
    fail "schemathesis found problems (output above)"
else
    grep -E "Test cases:|generated|No issues|Seed:" "$scratch/schemathesis.log" || true
fi
if ! kill -0 "$node_pid" 2>/dev/null; then
    cat "$scratch/node.err" >&2
    fail "the node died during the fuzzing"
    exit 1
fi
code=$(curl -s -o /dev/null -w '%{http_code}' "$base/healthz")
[ "$code" = 200 ] || fail "/healthz answered $code after the fuzzing"

# --- 2. promtool ---------------------------------------------------------------------------
echo "== promtool check metrics"
code=$(curl -s -o "$scratch/metrics.txt" -w '%{http_code}' -H "$auth" "$base/metrics")
if [ "$code" != 200 ]; then
    fail "GET /metrics answered $code"
elif ! promtool check metrics <"$scratch/metrics.txt" >"$scratch/promtool.log" 2>&1; then
    cat "$scratch/promtool.log"
    fail "promtool check metrics: problems (above)"
else
    echo "$(grep -c '^# TYPE' "$scratch/metrics.txt") metric families, $(grep -vc '^#' "$scratch/metrics.txt") samples: ok"
fi
code=$(curl -s -o /dev/null -w '%{http_code}' "$base/metrics")
[ "$code" = 401 ] || fail "GET /metrics without the token answered $code, not 401"

# --- 3. a Prometheus server scraping the node -----------------------------------------------
echo "== prometheus scraping the node every 1 s"
cat >"$scratch/prometheus.yml" <<EOF
global:
  scrape_interval: 1s
  evaluation_interval: 1s
scrape_configs:
  - job_name: scoutgw
    scrape_interval: 1s
    authorization:
      type: Bearer
      credentials: $token
    static_configs:
      - targets: ['127.0.0.1:$http_port']
EOF
promtool check config "$scratch/prometheus.yml" >/dev/null
prometheus --config.file="$scratch/prometheus.yml" --storage.tsdb.path="$scratch/prom-data" \
    --web.listen-address="127.0.0.1:$prom_port" --log.level=warn \
    >"$scratch/prometheus.log" 2>&1 &
prom_pid=$!
prom="http://127.0.0.1:$prom_port"
query() {
    curl -sf --get "$prom/api/v1/query" --data-urlencode "query=$1" |
        python3 -c 'import json,sys
r = json.load(sys.stdin)["data"]["result"]
print(r[0]["value"][1] if r else "none")'
}
up=none
for _ in $(seq 1 60); do
    up=$(query 'up{job="scoutgw"}' 2>/dev/null || echo none)
    [ "$up" = 1 ] && break
    sleep 0.5
done
if [ "$up" = 1 ]; then
    series=$(query 'count({job="scoutgw",__name__=~"scoutgw_.+"})' || echo none)
    echo "up{job=\"scoutgw\"} = 1; $series scoutgw_* series ingested"
    [ "$series" != none ] && [ "$series" -gt 0 ] || fail "no scoutgw_* series in Prometheus"
    health=$(curl -sf "$prom/api/v1/targets" | python3 -c 'import json,sys
t = json.load(sys.stdin)["data"]["activeTargets"]
print(" ".join(x["health"] + ":" + (x["lastError"] or "-") for x in t))')
    [ "$health" = "up:-" ] || fail "Prometheus target: $health"
else
    cat "$scratch/prometheus.log" >&2
    curl -s "$prom/api/v1/targets" >&2 || true
    fail "Prometheus reports up{job=\"scoutgw\"} = $up, not 1"
fi
kill "$prom_pid"
wait "$prom_pid" 2>/dev/null || true
prom_pid=

# --- stop ----------------------------------------------------------------------------------
kill -TERM "$node_pid"
if ! wait "$node_pid"; then
    cat "$scratch/node.err" >&2
    fail "the node did not stop cleanly on SIGTERM"
fi
node_pid=

if [ "${#failures[@]}" -gt 0 ]; then
    echo "== http-conformance: ${#failures[@]} failure(s):" >&2
    printf '  - %s\n' "${failures[@]}" >&2
    exit 1
fi
echo "== http-conformance: all checks passed"
