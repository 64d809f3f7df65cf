#!/usr/bin/env bash
# confgate's load benchmark: real HTTPS with keep-alive against confgate and against the floor
# (examples/floor.rs: the same stack parsing the review and allowing it), alternating, on this
# machine, with oha as the load tool (h2load too, when installed). Ends with one table.
# Not part of the tests: nothing here asserts a number.
#
#   scripts/bench.sh                                   # DURATION=10s CONNECTIONS=16 RATE=1000 ROUNDS=2
#   DURATION=30s ROUNDS=3 scripts/bench.sh
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-10s}
CONNECTIONS=${CONNECTIONS:-16}
RATE=${RATE:-1000}
ROUNDS=${ROUNDS:-2}
CONFGATE_PORT=${CONFGATE_PORT:-18443}
FLOOR_PORT=${FLOOR_PORT:-18444}
FIXTURES=tests/fixtures/admission-reviews
SMALL=$FIXTURES/create-deployment-web.json
BIG=$FIXTURES/create-configmap-big-config.json

command -v oha >/dev/null || { echo "installing oha (crates.io)"; cargo install oha --locked; }
command -v python3 >/dev/null || { echo "bench.sh needs python3" >&2; exit 1; }
cargo build --quiet --release --bin confgate --example floor --example cache_memory
BIN=target/release/confgate
FLOOR=target/release/examples/floor

work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
"$BIN" certs --out-dir "$work/certs" --dns localhost --ip 127.0.0.1 >/dev/null 2>&1
CA=$work/certs/ca.crt
results=$work/results.tsv
: > "$results"

record() { printf '%s\t%s\n' "$1" "$2" >> "$results"; }
rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }
hwm_kib() { awk '/^VmHWM:/ {print $2}' "/proc/$1/status"; }

wait_up() { # port: until the server answers anything over TLS
  for _ in $(seq 1 500); do
    code=$(curl -s -o /dev/null -w '%{http_code}' --cacert "$CA" -X POST "https://localhost:$1/validate" || true)
    [ "$code" != "000" ] && return 0
    sleep 0.01
  done
  echo "server on port $1 did not come up" >&2; exit 1
}

start_confgate() {
  local t0; t0=$(date +%s%N)
  # As deployed (Dockerfile, deploy/base): mimalloc commits arena memory as it is used.
  MIMALLOC_ARENA_EAGER_COMMIT=${MIMALLOC_ARENA_EAGER_COMMIT:-0} RUST_LOG=${RUST_LOG:-info} "$BIN" serve --listen "127.0.0.1:$CONFGATE_PORT" --policies policies \
    --cluster-state tests/fixtures/cluster-state/*.yaml \
    --tls-cert "$work/certs/tls.crt" --tls-key "$work/certs/tls.key" > "$work/confgate.log" 2>&1 &
  CONFGATE_PID=$!; pids+=("$CONFGATE_PID")
  until curl -s -o /dev/null --cacert "$CA" "https://localhost:$CONFGATE_PORT/readyz"; do sleep 0.005; done
  STARTUP_POLLED_MS=$(( ($(date +%s%N) - t0) / 1000000 ))
}

start_floor() {
  "$FLOOR" "127.0.0.1:$FLOOR_PORT" "$work/certs/tls.crt" "$work/certs/tls.key" 2> "$work/floor.log" &
  FLOOR_PID=$!; pids+=("$FLOOR_PID")
  wait_up "$FLOOR_PORT"
}

# oha → "rps p50 p99 p99.9 errors" (latencies in ms)
load() { # port path body extra-oha-args...
  local port=$1 path=$2 body=$3 out; shift 3
  out=$(mktemp "$work/oha.XXXXXX")
  oha --no-tui --output-format json -m POST -H 'Content-Type: application/json' -D "$body" \
    --cacert "$CA" "$@" "https://localhost:$port$path" > "$out"
  python3 - "$out" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
p = d["latencyPercentiles"]
ms = lambda v: (v or 0) * 1000
codes = d.get("statusCodeDistribution") or {}
# Requests still in flight when a timed run ends are reported as errors; they are not failures.
errors = {k: n for k, n in (d.get("errorDistribution") or {}).items() if "deadline" not in k}
bad = sum(n for c, n in codes.items() if c != "200") + sum(errors.values())
print(f'{d["summary"]["requestsPerSec"]:.0f} {ms(p["p50"]):.3f} {ms(p["p99"]):.3f} {ms(p.get("p99.9")):.3f} {bad}')
PY
}

start_floor
start_confgate
record "start to ready (server log / polled)" "$(grep -o '"startup_ms":[0-9.]*' "$work/confgate.log" | head -1 | cut -d: -f2 | xargs printf '%.1f') ms / ${STARTUP_POLLED_MS} ms"
record "RSS idle: confgate / floor" "$(( $(rss_kib "$CONFGATE_PID") / 1024 )) MiB / $(( $(rss_kib "$FLOOR_PID") / 1024 )) MiB"

echo "closed loop: $CONNECTIONS connections, HTTP/1.1 keep-alive, $DURATION each, $ROUNDS rounds, alternating"
for path in /mutate /validate; do
  for round in $(seq 1 "$ROUNDS"); do
    for target in floor confgate; do
      port=$FLOOR_PORT; [ "$target" = confgate ] && port=$CONFGATE_PORT
      read -r rps p50 p99 p999 bad < <(load "$port" "$path" "$SMALL" -z "$DURATION" -c "$CONNECTIONS" --http-version 1.1)
      echo "  $path round $round $target: $rps req/s, p99 $p99 ms, non-200 $bad"
      echo "$path $target $rps" >> "$work/throughput"
    done
  done
done
for path in /mutate /validate; do
  floor=$(awk -v p="$path" '$1==p && $2=="floor" {s+=$3; n++} END {printf "%.0f", s/n}' "$work/throughput")
  ours=$(awk -v p="$path" '$1==p && $2=="confgate" {s+=$3; n++} END {printf "%.0f", s/n}' "$work/throughput")
  record "throughput $path (create-deployment-web): confgate / floor" "$ours / $floor req/s = $(python3 -c "print(f'{$ours/$floor*100:.0f}%')")"
done

echo "open loop: $RATE req/s for $DURATION (latency corrected)"
for target in floor confgate; do
  port=$FLOOR_PORT; [ "$target" = confgate ] && port=$CONFGATE_PORT
  read -r rps p50 p99 p999 bad < <(load "$port" /validate "$SMALL" -z "$DURATION" -c "$CONNECTIONS" -q "$RATE" --latency-correction --http-version 1.1)
  record "latency at $RATE req/s, $target: p50 / p99 / p99.9" "$p50 / $p99 / $p999 ms (non-200: $bad)"
  [ "$target" = confgate ] && BASE_P99=$p99
done
# confgate's own view (body received to answer encoded), from its histogram: what the server
# adds, without the load tool's and the machine's scheduling noise.
curl -s --cacert "$CA" "https://localhost:$CONFGATE_PORT/metrics" > "$work/metrics.txt"
record "server-side duration, all reviews so far (confgate histogram)" "$(python3 - "$work/metrics.txt" <<'PY'
import re, sys
buckets = {}
for line in open(sys.argv[1]):
    m = re.match(r'confgate_admission_request_duration_seconds_bucket\{le="([^"]+)",endpoint="[a-z]+"\} (\d+)', line)
    if m:
        buckets[m.group(1)] = buckets.get(m.group(1), 0) + int(m.group(2))
total = buckets.get("+Inf", 0)
share = lambda le: 100.0 * buckets.get(le, 0) / total if total else 0
print(f"{share('0.00025'):.1f}% <= 0.25 ms, {share('0.0005'):.1f}% <= 0.5 ms, {share('0.001'):.2f}% <= 1 ms, {share('0.005'):.3f}% <= 5 ms of {total}")
PY
)"

echo "HTTP/2: $CONNECTIONS requests in flight over 4 connections"
read -r rps p50 p99 p999 bad < <(load "$CONFGATE_PORT" /validate "$SMALL" -z "$DURATION" -c 4 -p $(( CONNECTIONS / 4 )) --http2)
record "throughput /validate over HTTP/2 (confgate)" "$rps req/s, p99 $p99 ms"

echo "large body: the 1.3 MB ConfigMap"
read -r rps p50 p99 p999 bad < <(load "$CONFGATE_PORT" /validate "$BIG" -n 60 -c 1 --http-version 1.1)
record "1.3 MB review, one at a time: p50 / p99" "$p50 / $p99 ms (non-200: $bad)"
load "$CONFGATE_PORT" /validate "$BIG" -z "$DURATION" -c 2 --http-version 1.1 > "$work/big-stream" &
big=$!
read -r rps p50 p99 p999 bad < <(load "$CONFGATE_PORT" /validate "$SMALL" -z "$DURATION" -c "$CONNECTIONS" -q "$RATE" --latency-correction --http-version 1.1)
wait "$big"
read -r brps _ _ _ _ < "$work/big-stream"
record "small p99 at $RATE req/s during a stream of large bodies" "$p99 ms (alone: $BASE_P99 ms; large bodies: $brps req/s)"
record "RSS after load: confgate (peak)" "$(( $(rss_kib "$CONFGATE_PID") / 1024 )) MiB ($(( $(hwm_kib "$CONFGATE_PID") / 1024 )) MiB)"

if command -v h2load >/dev/null; then
  echo "h2load (second opinion; does not verify the certificate)"
  h2load_rps=$(h2load -n 50000 -c "$CONNECTIONS" --h1 -H 'Content-Type: application/json' -d "$SMALL" \
    "https://localhost:$CONFGATE_PORT/validate" 2>/dev/null | awk '/^finished in/ {print $4}')
  record "h2load /validate, $CONNECTIONS connections HTTP/1.1 (confgate)" "$h2load_rps req/s"
fi

record "cache cost, 10,000 ConfigMaps of 10 x 1 KiB (examples/cache_memory)" "$(target/release/examples/cache_memory | sed -n 's/.*cache cost: //p')"

echo
echo "confgate $(git rev-parse --short HEAD 2>/dev/null || echo unknown), $(nproc) cores, $(date -u +%Y-%m-%dT%H:%MZ)"
printf '| %s | %s |\n|---|---|\n' "measure" "result"
while IFS=$'\t' read -r what value; do printf '| %s | %s |\n' "$what" "$value"; done < "$results"
