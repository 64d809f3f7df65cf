#!/usr/bin/env bash
# confgate's load benchmark: real HTTPS with keep-alive against confgate and against the floor
# (examples/floor.rs: the same stack parsing the review and allowing it), alternating, on this
# machine, with oha as the load tool (h2load too, when installed). Ends with one table.
# Not part of the tests: nothing here asserts a number.
#
#   scripts/bench.sh              # DURATION=10s CONNECTIONS=16 RATE=1000 ROUNDS=2 WARMUP=1 BIG_RATE=20
#   DURATION=30s ROUNDS=3 scripts/bench.sh
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-10s}
CONNECTIONS=${CONNECTIONS:-16}
RATE=${RATE:-1000}
ROUNDS=${ROUNDS:-2}
WARMUP=${WARMUP:-1}
BIG_RATE=${BIG_RATE:-20}
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

# oha → "rps p50 p99 p99.9 errors" (latencies in ms). With LATENCY_DB=1 oha also stores every
# request, and "p50 p99 p99.9" follow again for the requests scheduled after the first $WARMUP
# seconds: by then the connections are open (16 TLS handshakes at once take ~40 ms here, and
# with latency correction every request scheduled meanwhile counts that wait). The apiserver
# keeps its connections to a webhook open, so the steady figures are the ones it sees.
load() { # port path body extra-oha-args...
  local port=$1 path=$2 body=$3 out db=(); shift 3
  out=$(mktemp "$work/oha.XXXXXX")
  [ "${LATENCY_DB:-0}" = 1 ] && db=(--db-url "$out.db")
  oha --no-tui --output-format json -m POST -H 'Content-Type: application/json' -D "$body" \
    --cacert "$CA" "${db[@]}" "$@" "https://localhost:$port$path" > "$out" \
    2> >(grep -v '^Storing results' >&2)
  python3 - "$out" "${SKIP:-$WARMUP}" <<'PY'
import json, os, sqlite3, sys
d = json.load(open(sys.argv[1]))
p = d["latencyPercentiles"]
ms = lambda v: (v or 0) * 1000
codes = d.get("statusCodeDistribution") or {}
# Requests still in flight when a timed run ends are reported as errors; they are not failures.
errors = {k: n for k, n in (d.get("errorDistribution") or {}).items() if "deadline" not in k}
bad = sum(n for c, n in codes.items() if c != "200") + sum(errors.values())
line = f'{d["summary"]["requestsPerSec"]:.0f} {ms(p["p50"]):.3f} {ms(p["p99"]):.3f} {ms(p.get("p99.9")):.3f} {bad}'
db = sys.argv[1] + ".db"
if os.path.exists(db):
    rows = sqlite3.connect(db).execute("select coalesce(start_latency_correction, start), end from oha order by 1").fetchall()
    # "first": leave out the first request (it opens the connection); else a warm-up in seconds.
    rows = rows[1:] if sys.argv[2] == "first" else [r for r in rows if r[0] >= float(sys.argv[2])]
    lat = sorted((end - start) * 1000 for start, end in rows)
    at = lambda q: lat[min(len(lat) - 1, int(len(lat) * q))] if lat else 0
    line += f" {at(0.5):.3f} {at(0.99):.3f} {at(0.999):.3f}"
print(line)
PY
}

start_floor
start_confgate
record "start to ready (server log / polled)" "$(grep -o '"startup_ms":[0-9.]*' "$work/confgate.log" | head -1 | cut -d: -f2 | xargs printf '%.1f') ms / ${STARTUP_POLLED_MS} ms"
record "RSS idle: confgate / floor" "$(( $(rss_kib "$CONFGATE_PID") / 1024 )) MiB / $(( $(rss_kib "$FLOOR_PID") / 1024 )) MiB"

# Both servers get the same 3 s of load first, unrecorded: a fresh process grows its heap (with
# MIMALLOC_ARENA_EAGER_COMMIT=0, page by page) during its first seconds, and the apiserver's
# traffic to a webhook is long-running.
for port in "$FLOOR_PORT" "$CONFGATE_PORT"; do
  load "$port" /mutate "$SMALL" -z 3s -c "$CONNECTIONS" --http-version 1.1 > /dev/null
done
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

echo "open loop: $RATE req/s for $DURATION (latency corrected), $CONNECTIONS connections"
for path in /validate /mutate; do
  for target in floor confgate; do
    port=$FLOOR_PORT; [ "$target" = confgate ] && port=$CONFGATE_PORT
    read -r rps p50 p99 p999 bad s50 s99 s999 < <(LATENCY_DB=1 load "$port" "$path" "$SMALL" -z "$DURATION" -c "$CONNECTIONS" -q "$RATE" --latency-correction --http-version 1.1)
    record "latency at $RATE req/s $path, $target: p50 / p99 / p99.9, steady (after ${WARMUP}s)" "$s50 / $s99 / $s999 ms (non-200: $bad)"
    record "latency at $RATE req/s $path, $target: p50 / p99 / p99.9, all requests" "$p50 / $p99 / $p999 ms"
    [ "$target/$path" = confgate//validate ] && BASE_P99=$s99 BASE_P999=$s999
  done
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
read -r rps p50 p99 p999 bad s50 s99 _ < <(SKIP=first LATENCY_DB=1 load "$CONFGATE_PORT" /validate "$BIG" -n 60 -c 1 --http-version 1.1)
record "1.3 MB review, 60 one at a time on one connection: p50 / slowest" "$p50 / $p99 ms; without the first (it opens the connection): $s50 / $s99 ms (non-200: $bad)"
# Small reviews into confgate at $RATE req/s while 1.3 MB ones stream in: into confgate; the
# same stream into the floor (a control: another process parsing them on the same two cores);
# into the floor's /discard (a control: received over TLS, not parsed); into confgate as fast as
# two connections go.
small_during() { # big-port label extra-oha-args-for-the-stream...
  local port=$1 label=$2 big; shift 2
  load "$port" "${BIG_PATH:-/validate}" "$BIG" -z "$DURATION" -c 2 --http-version 1.1 "$@" > "$work/big-stream" &
  big=$!
  read -r _ _ _ _ bad _ s99 s999 < <(LATENCY_DB=1 load "$CONFGATE_PORT" /validate "$SMALL" -z "$DURATION" -c "$CONNECTIONS" -q "$RATE" --latency-correction --http-version 1.1)
  wait "$big"
  read -r brps bp50 _ _ _ < "$work/big-stream"
  record "small /validate into confgate at $RATE req/s, steady p99 / p99.9, while $label" "$s99 / $s999 ms (alone: $BASE_P99 / $BASE_P999 ms; large: $brps req/s, p50 $bp50 ms; non-200: $bad)"
}
small_during "$CONFGATE_PORT" "$BIG_RATE large/s go to confgate" -q "$BIG_RATE"
small_during "$FLOOR_PORT" "$BIG_RATE large/s go to the floor (control)" -q "$BIG_RATE"
BIG_PATH=/discard small_during "$FLOOR_PORT" "$BIG_RATE large/s go to the floor's /discard (received, not parsed)" -q "$BIG_RATE"
small_during "$CONFGATE_PORT" "large ones go to confgate over 2 connections, unpaced"
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
