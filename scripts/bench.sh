#!/usr/bin/env bash
#
# The benchmark, in one run on this machine (see docs/performance.md):
#
#     ./scripts/bench.sh [--orders N] [--concurrency C] [--replicas R] [--preload N]
#                        [--rate R] [--keep-data]...
#
# Builds the release binaries (the stack's and saga-bench), starts the three services (R
# instances of each, default 1) against a vhost and databases of their own (saga-bench;
# orders_bench, inventory_bench, payments_bench, made fresh unless --keep-data), runs
# `saga-bench bench` with the remaining arguments (which measures the broker's and the
# database's ceilings, the cost of one saga, the saga ceiling, the saga throughput and
# their ratio), then a load at half that throughput for latency (`saga-bench load`) and
# the machine's own saga path at that rate (`saga-bench bench-path`: the latency the
# machine itself gives that load, no project code in the way), reports each service's
# peak resident memory, and stops the services. Results go to stdout and, as JSON, to
# target/bench/.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=scripts/lib.sh
source scripts/lib.sh

REPLICAS=1
KEEP_DATA=0
BENCH_ARGS=()
while (($#)); do
    case "$1" in
    --replicas) REPLICAS="$2"; shift 2 ;;
    --keep-data) KEEP_DATA=1; shift ;;
    *) BENCH_ARGS+=("$1"); shift ;;
    esac
done

VHOST=saga-bench
DBS=(orders_bench inventory_bench payments_bench)
OUT=target/bench
mkdir -p "$OUT/logs"

ensure_postgres
ensure_rabbitmq
build_release saga-bench

if ((KEEP_DATA == 0)); then
    log "fresh vhost ${VHOST} and databases ${DBS[*]}"
    curl -sf -u guest:guest -X DELETE "${SAGA_RABBITMQ_API}/api/vhosts/${VHOST}" >/dev/null || true
    for db in "${DBS[@]}"; do
        PGPASSWORD="${PGPASSWORD:-}" psql -q -h "$SAGA_PG_HOST" -p "$SAGA_PG_PORT" -U postgres -d postgres \
            -c "DROP DATABASE IF EXISTS ${db} WITH (FORCE)" >/dev/null
    done
fi
curl -sf -u guest:guest -X PUT "${SAGA_RABBITMQ_API}/api/vhosts/${VHOST}" >/dev/null
curl -sf -u guest:guest -X PUT -H 'content-type: application/json' \
    -d '{"configure":".*","write":".*","read":".*"}' \
    "${SAGA_RABBITMQ_API}/api/permissions/${VHOST}/guest" >/dev/null

export SAGA_AMQP_URL="amqp://guest:guest@127.0.0.1:5672/${VHOST}?heartbeat=10"
export SAGA_ORDER_DATABASE_URL SAGA_INVENTORY_DATABASE_URL SAGA_PAYMENT_DATABASE_URL
SAGA_ORDER_DATABASE_URL="$(pg_url orders_bench)"
SAGA_INVENTORY_DATABASE_URL="$(pg_url inventory_bench)"
SAGA_PAYMENT_DATABASE_URL="$(pg_url payments_bench)"
export SAGA_LOG="${SAGA_LOG:-warn}"
# Authentication on, as a user runs it: the development key pair in .stack/ (made once, as
# ./scripts/stack.sh up does) signs saga-bench's tokens and its JWKS checks them.
target/release/sagactl dev-keys --dir .stack >/dev/null
if [[ -z "${SAGA_AUTH_JWKS_URL:-}" ]]; then
    export SAGA_AUTH_JWKS_FILE="${SAGA_AUTH_JWKS_FILE:-${PWD}/.stack/dev-jwks.json}"
fi

PIDS=()
stop_all() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
}
trap stop_all EXIT

# Instance i of a service listens on its base port + 100*i.
declare -A BASE=([order-svc]=18080 [inventory-svc]=18081 [payment-svc]=18082)
declare -A KEY=([order-svc]=ORDER [inventory-svc]=INVENTORY [payment-svc]=PAYMENT)
for ((i = 0; i < REPLICAS; i++)); do
    for svc in order-svc inventory-svc payment-svc; do
        port=$((BASE[$svc] + 100 * i))
        env "SAGA_${KEY[$svc]}_HTTP_ADDR=127.0.0.1:${port}" "target/release/${svc}" \
            >"$OUT/logs/${svc}-${i}.log" 2>&1 &
        PIDS+=($!)
        wait_http_200 "http://127.0.0.1:${port}/healthz" 60 "$!" ||
            die "${svc} (instance $i) did not become healthy; see $OUT/logs/${svc}-${i}.log"
    done
done
log "${REPLICAS} instance(s) of each service up"

export SAGA_ORDER_URL=http://127.0.0.1:18080
# Orders are placed round robin over every order-svc instance, as a load balancer would.
SPREAD=()
if ((REPLICAS > 1)); then
    also=""
    for ((i = 1; i < REPLICAS; i++)); do also+="${also:+,}http://127.0.0.1:$((BASE[order-svc] + 100 * i))"; done
    SPREAD=(--also-order-url "$also")
fi
export SAGA_INVENTORY_URL=http://127.0.0.1:18081
export SAGA_PAYMENT_URL=http://127.0.0.1:18082
export SAGA_BENCH_DATABASE_SERVER
SAGA_BENCH_DATABASE_SERVER="$(pg_url '' | sed 's#/$##')"
stamp="$(date -u +%Y%m%dT%H%M%SZ)"

DBLIST="$(IFS=,; echo "${DBS[*]}")"
log "saga-bench bench ${BENCH_ARGS[*]:-}"
target/release/saga-bench --json bench --databases "$DBLIST" "${SPREAD[@]}" "${BENCH_ARGS[@]}" >"$OUT/bench-${stamp}.json"

# Latency at half the throughput just measured.
half="$(python3 -c 'import json,sys; print(round(json.load(open(sys.argv[1]))["sagas_per_second"] / 2, 1))' "$OUT/bench-${stamp}.json")"
# About 20 seconds of it, at least 200 orders.
half_orders="$(python3 -c "print(max(200, int(${half} * 20)))")"
log "latency at half that throughput: ${half} orders/s"
target/release/saga-bench --json load --orders "$half_orders" \
    --concurrency 64 --rate "$half" "${SPREAD[@]}" >"$OUT/half-${stamp}.json"
# The machine's own saga path at the same rate, no project code in the way: the latency
# the machine itself gives that load.
log "the machine's own saga path at ${half} sagas/s"
target/release/saga-bench --json bench-path --rate "$half" \
    --sagas "$half_orders" >"$OUT/path-${stamp}.json"

# Peak resident memory of each service process.
rss="{"
for ((k = 0; k < ${#PIDS[@]}; k++)); do
    hwm="$(awk '/VmHWM/ {print $2}' "/proc/${PIDS[$k]}/status" 2>/dev/null || echo 0)"
    rss+="\"$(tr '\0' ' ' <"/proc/${PIDS[$k]}/cmdline" | awk '{print $1}' | xargs basename)#${k}\": ${hwm:-0},"
done
rss="${rss%,}}"
echo "$rss" >"$OUT/rss-${stamp}.json"

python3 - "$OUT/bench-${stamp}.json" "$OUT/half-${stamp}.json" "$OUT/rss-${stamp}.json" "$REPLICAS" "$OUT/path-${stamp}.json" <<'PY'
import json, sys
b = json.load(open(sys.argv[1])); h = json.load(open(sys.argv[2])); rss = json.load(open(sys.argv[3]))
p = json.load(open(sys.argv[5]))
lat = lambda r: "p50 {p50:.1f} ms, p90 {p90:.1f} ms, p99 {p99:.1f} ms, max {max:.1f} ms".format(**r["latency_ms"])
print(f"replicas per service        {sys.argv[4]}")
print(f"orders stored before        {b['orders_stored_before']}")
print(f"(a) broker ceiling          {b['broker_msgs_per_second']:.0f} msg/s")
print(f"    database ceiling        {b['db_transactions_per_second']:.0f} tx/s (plain SQL, no trigger, pool {b['db_pool']})")
print(f"(c) saga ceiling            {b['saga_ceiling_per_second']:.1f} sagas/s = 1 / (5 / broker + 6 / database)")
offered = f", offered at {b['offered_rate']} orders/s" if b.get("offered_rate") else ""
print(f"(d) saga throughput         {b['sagas_per_second']:.1f} sagas/s  ({lat(b['load'])}{offered})")
print(f"    ratio (d)/(c)           {b['ratio_to_ceiling']:.2f}")
print(f"latency floor               {b['latency_floor_ms']:.1f} ms = 4 x delivery {b['delivery_floor_ms']:.2f} ms + 4 x transaction {b['transaction_floor_ms']:.2f} ms, one at a time")
d = b["diagnostics"]
print(f"diagnostics per saga        {d['deliveries_per_saga']:.2f} deliveries, {d['transactions_per_saga']:.2f} transactions, {d['cpu_seconds_per_saga'] * 1000:.2f} ms CPU")
print(f"background transactions     {d['background_transactions_per_second']:.1f}/s with no load (not in the transactions per saga; {d['transactions_per_saga_with_background']:.2f} per saga with them)")
print(f"    project inbox+outbox    {d['project_db_transactions_per_second']:.0f} tx/s")
print(f"    relay backlog           {d['relay_rows_per_second']:.0f} rows/s = {d['relay_ratio_to_broker']:.2f} x broker")
print(f"at half throughput          {h['sagas_per_second']:.1f} sagas/s  ({lat(h)})")
print(f"    the machine's own path  {p['sagas_per_second']:.1f} sagas/s  ({lat(p)}; {p['cpu_seconds_per_saga'] * 1000:.2f} ms CPU per saga, no project code)")
print("peak RSS (MiB)              " + ", ".join(f"{k} {v/1024:.1f}" for k, v in rss.items()))
PY
log "JSON results in ${OUT}/"
