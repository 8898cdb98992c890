#!/usr/bin/env bash
# Every figure of bench/README.md's tables, from the current commit, in one go:
#   bash bench/regenerate.sh [load|latency|all]   (default all; ~40 minutes on 2 cores)
# "load" runs produce and consume (their targets are server CPU per record and paired
# ratios), "latency" e2e, rebalance and the coordinator (latency and time targets: run
# them on an otherwise idle machine). Each mode runs with --repeat 3 on a private embedded
# Valkey and on a private redis-server 7 (/usr/bin/redis-server, no persistence, a free
# port, stopped by pid at the end), writes bench/results/<mode>-<server>.json, then the
# README's table is rebuilt from them. Run it on a clean tree: every result names its
# commit, "+dirty" when the code differs from it.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
WHAT=${1:-all}
OUT=bench/results
REDIS_BIN=${REDIS_BIN:-/usr/bin/redis-server}

port=$("$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
"$REDIS_BIN" --port "$port" --bind 127.0.0.1 --save '' --appendonly no --daemonize no \
  --logfile /dev/null &
redis_pid=$!
trap 'kill "$redis_pid" 2>/dev/null || true; wait "$redis_pid" 2>/dev/null || true' EXIT
for _ in $(seq 50); do
  redis-cli -p "$port" ping >/dev/null 2>&1 && break
  sleep 0.1
done
REDIS="redis://127.0.0.1:$port"

bench() {  # bench NAME MODE ARGS... : once on Valkey (NAME-valkey), once on Redis 7 (NAME-redis7)
  local name=$1
  shift
  echo "== $name (valkey, then redis 7) $(date -u +%H:%M:%S)"
  "$PY" -m partitions bench "$@" --repeat 3 --out "$OUT/$name-valkey.json" >/dev/null
  redis-cli -p "$port" flushall >/dev/null
  "$PY" -m partitions bench "$@" --repeat 3 --url "$REDIS" --out "$OUT/$name-redis7.json" >/dev/null
  redis-cli -p "$port" flushall >/dev/null
}

if [[ $WHAT == load || $WHAT == all ]]; then
  bench produce produce --records 300000
  bench consume consume --records 500000 --peers
  echo "== produce acks=all, clusters (valkey) $(date -u +%H:%M:%S)"
  "$PY" -m partitions bench produce --records 300000 --repeat 3 --no-redis-benchmark --acks all \
    --out "$OUT/produce-acks-all.json" >/dev/null
  "$PY" -m partitions bench produce --records 300000 --repeat 3 --no-redis-benchmark \
    --cluster 1,2,3 --out "$OUT/produce-cluster.json" >/dev/null
fi
if [[ $WHAT == latency || $WHAT == all ]]; then
  bench e2e-5k e2e --rate 5000
  bench e2e-50k e2e --rate 50000
  bench rebalance rebalance
  echo "== coordinator $(date -u +%H:%M:%S)"
  "$PY" -m partitions bench coordinator --live --repeat 3 --out "$OUT/coordinator-live.json"
  "$PY" -m partitions bench coordinator --live --repeat 3 --url "$REDIS" \
    --out "$OUT/coordinator-live-redis7.json"
fi
"$PY" -m bench.report "$OUT"/*-*.json --write bench/README.md
echo "== done $(date -u +%H:%M:%S): bench/README.md rebuilt from $OUT"
