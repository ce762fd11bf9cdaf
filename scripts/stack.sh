#!/usr/bin/env bash
#
# Runs the whole saga locally: PostgreSQL, RabbitMQ and the three services.
#
#     ./scripts/stack.sh [up]        start everything (default)
#     ./scripts/stack.sh up --release    the same with optimised binaries
#     ./scripts/stack.sh down        stop the services
#     ./scripts/stack.sh status      are they running and healthy?
#     ./scripts/stack.sh logs [svc]  follow the logs (all services, or one)
#
# With a Docker engine it uses compose.yaml. Without one it runs the binaries as
# background processes against the local PostgreSQL and RabbitMQ, which it starts (or
# installs, as root) when needed; their pids and logs live in .stack/. Set
# SAGA_STACK_MODE=local or =docker to choose instead of guessing.
#
# Locally it builds cargo's dev profile (target/debug/): a fresh clone is running in a
# few minutes, and the test suite later reuses what that build compiled. With --release
# (or SAGA_STACK_PROFILE=release) it builds and runs the optimised binaries
# (target/release/), which take two to four times as long to build; scripts/bench.sh and the
# container image always use those.
#
# Every address can be overridden through the services' own environment variables
# (SAGA_AMQP_URL, SAGA_<SVC>_DATABASE_URL, SAGA_<SVC>_HTTP_ADDR); values already
# in the environment are kept.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=scripts/lib.sh
source scripts/lib.sh

SERVICES=(order-svc inventory-svc payment-svc)
STATE_DIR=.stack
LOG_DIR="${STATE_DIR}/logs"

# Per-service names, in the order of SERVICES.
svc_key() {
    case "$1" in
    order-svc) echo ORDER ;;
    inventory-svc) echo INVENTORY ;;
    payment-svc) echo PAYMENT ;;
    *) die "unknown service: $1 (expected one of: ${SERVICES[*]})" ;;
    esac
}
svc_db() {
    case "$1" in
    order-svc) echo orders ;;
    inventory-svc) echo inventory ;;
    payment-svc) echo payments ;;
    esac
}
svc_port() {
    case "$1" in
    order-svc) echo 8080 ;;
    inventory-svc) echo 8081 ;;
    payment-svc) echo 8082 ;;
    esac
}

# The address the service listens on (its env var, or the contract's default).
svc_addr() {
    local var
    var="SAGA_$(svc_key "$1")_HTTP_ADDR"
    echo "${!var:-127.0.0.1:$(svc_port "$1")}"
}

# A URL a client on this machine can use, even if the service binds a wildcard.
svc_url() {
    local addr
    addr="$(svc_addr "$1")"
    addr="${addr/#0.0.0.0:/127.0.0.1:}"
    addr="${addr/#\[::\]:/[::1]:}"
    echo "http://${addr}"
}

pid_file() { echo "${STATE_DIR}/$1.pid"; }
log_file() { echo "${LOG_DIR}/$1.log"; }

# Prints the recorded pid if that process is still alive and is still the service
# (a stale pid file may name an unrelated process after a reboot).
running_pid() {
    local file pid
    file="$(pid_file "$1")"
    [[ -f "$file" ]] || return 1
    pid="$(<"$file")"
    [[ "$pid" =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null || return 1
    if [[ -r "/proc/${pid}/cmdline" ]]; then
        tr '\0' ' ' <"/proc/${pid}/cmdline" | grep -qF "$1" || return 1
    fi
    echo "$pid"
}

use_docker() {
    case "${SAGA_STACK_MODE:-auto}" in
    docker) have_docker_engine || die "SAGA_STACK_MODE=docker, but no usable Docker engine with the compose plugin"; return 0 ;;
    local) return 1 ;;
    auto) have_docker_engine ;;
    *) die "SAGA_STACK_MODE must be auto, docker or local (got '${SAGA_STACK_MODE}')" ;;
    esac
}

# True if containers of this compose project exist (running or not).
compose_running() {
    have_docker_engine && [[ -n "$(docker compose ps -q 2>/dev/null)" ]]
}

# ------------------------------------------------------------------------ up

export_service_env() {
    export SAGA_AMQP_URL="${SAGA_AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/saga?heartbeat=10}"
    local svc key var
    for svc in "${SERVICES[@]}"; do
        key="$(svc_key "$svc")"
        var="SAGA_${key}_DATABASE_URL"
        export "${var}=${!var:-$(pg_url "$(svc_db "$svc")")}"
        var="SAGA_${key}_HTTP_ADDR"
        export "${var}=$(svc_addr "$svc")"
    done
    # Client tokens are checked against the development key's JWKS unless another source
    # (a real identity provider's JWKS URL, say) is configured.
    if [[ -z "${SAGA_AUTH_JWKS_URL:-}" ]]; then
        export SAGA_AUTH_JWKS_FILE="${SAGA_AUTH_JWKS_FILE:-${PWD}/${STATE_DIR}/dev-jwks.json}"
    fi
}

# The profile the local stack builds and runs (dev or release), and where its binaries are.
STACK_PROFILE="${SAGA_STACK_PROFILE:-dev}"
stack_bin_dir() { profile_dir "$STACK_PROFILE"; }

start_service() {
    local svc="$1" bin pid log
    bin="$(stack_bin_dir)/$1"
    log="$(log_file "$svc")"
    if pid="$(running_pid "$svc")"; then
        log "${svc} is already running (pid ${pid}); leaving it alone"
        return 0
    fi
    [[ -x "$bin" ]] || die "${bin} is missing; the ${STACK_PROFILE} build did not produce it"
    printf '\n===== %s: starting %s =====\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$svc" >>"$log"
    # setsid + nohup: the service must outlive this script and the terminal, and
    # must not receive the Ctrl-C meant for whatever runs in the foreground later.
    setsid nohup "$bin" >>"$log" 2>&1 </dev/null &
    echo $! >"$(pid_file "$svc")"
    log "started ${svc} (pid $!), log: ${log}"
}

wait_healthy() {
    local svc="$1" pid rc=0
    # The recorded pid even if that process is already gone: then the wait ends at
    # once instead of running into the deadline.
    pid="$(cat "$(pid_file "$svc")" 2>/dev/null || true)"
    wait_http_200 "$(svc_url "$svc")/healthz" 90 "$pid" || rc=$?
    if ((rc != 0)); then
        log "${svc} did not become healthy; last 30 lines of $(log_file "$svc"):"
        tail -n 30 "$(log_file "$svc")" >&2 || true
        exit 1
    fi
    log "${svc} is healthy at $(svc_url "$svc")"
}

print_summary() {
    local mode="$1" sagactl
    if [[ "$mode" == docker ]]; then
        sagactl="docker compose run --rm sagactl"
    else
        sagactl="$(stack_bin_dir)/sagactl"
    fi
    cat <<EOF

The saga is running.

  Orders API (order-svc)    $(svc_url order-svc)/orders
  inventory-svc             $(svc_url inventory-svc)/stock/<sku>
  payment-svc               $(svc_url payment-svc)/wallets/<customer_id>
  Health / metrics          <service url>/healthz, <service url>/metrics
  RabbitMQ console          http://127.0.0.1:15672   (user guest, password guest, vhost saga)
EOF
    if [[ "$mode" == docker ]]; then
        cat <<EOF
  Logs                      ./scripts/stack.sh logs [order-svc|inventory-svc|payment-svc]
EOF
    else
        cat <<EOF
  Logs                      ${LOG_DIR}/<service>.log   (or ./scripts/stack.sh logs [service])
EOF
    fi
    cat <<EOF
  Operator CLI              ${sagactl}
                            e.g. ${sagactl} --help

Place an order as the customer alice (tokens are signed with ${STATE_DIR}/dev-signing-key.pem):
  TOKEN=\$(${sagactl} token --sub alice --role customer)
  curl -si -X POST $(svc_url order-svc)/orders -H 'content-type: application/json' \\
    -H "authorization: Bearer \$TOKEN" \\
    -d '{"customer_id":"alice","currency":"EUR","items":[{"sku":"BOOK-1","quantity":1,"unit_price":1200}]}'

Stop it with: ./scripts/stack.sh down
EOF
}

cmd_up() {
    if use_docker; then
        log "Docker engine found: starting the stack with docker compose"
        # With the observability profile the services send their spans to its Jaeger.
        if [[ ",${COMPOSE_PROFILES:-}," == *,observability,* && -z "${OTEL_EXPORTER_OTLP_ENDPOINT:-}" ]]; then
            export OTEL_EXPORTER_OTLP_ENDPOINT=http://jaeger:4318
        fi
        # The one-shot dev-keys service writes the development key pair into .stack/ as
        # this user, so sagactl on the host signs with the same key.
        mkdir -p "$STATE_DIR"
        SAGA_UID="$(id -u)" SAGA_GID="$(id -g)" docker compose up -d --build --wait
        print_summary docker
        return 0
    fi

    log "no Docker engine (or SAGA_STACK_MODE=local): running the services as local processes"
    ensure_postgres
    ensure_rabbitmq
    ensure_databases
    export_service_env

    build_stack_binaries "$STACK_PROFILE"
    log "development signing key: ${STATE_DIR}/dev-signing-key.pem (JWKS ${STATE_DIR}/dev-jwks.json)"
    "$(stack_bin_dir)/sagactl" dev-keys --dir "$STATE_DIR" >/dev/null

    mkdir -p "$LOG_DIR"
    local svc
    for svc in "${SERVICES[@]}"; do
        start_service "$svc"
    done
    for svc in "${SERVICES[@]}"; do
        wait_healthy "$svc"
    done
    print_summary local
}

# ---------------------------------------------------------------------- down

cmd_down() {
    if compose_running; then
        log "stopping the compose stack"
        docker compose down
    fi

    local svc pid file alive=()
    for svc in "${SERVICES[@]}"; do
        if pid="$(running_pid "$svc")"; then
            log "stopping ${svc} (pid ${pid})"
            kill -TERM "$pid" 2>/dev/null || true
            alive+=("$svc")
        fi
    done

    # Give them time to drain (SAGA_SHUTDOWN_GRACE_SECS, 20 s by default, bounds it in the
    # services) and close their connections cleanly.
    local deadline=$((SECONDS + 25)) still
    while ((${#alive[@]} > 0)); do
        still=()
        for svc in "${alive[@]}"; do
            if running_pid "$svc" >/dev/null; then still+=("$svc"); fi
        done
        alive=("${still[@]+"${still[@]}"}")
        if ((${#alive[@]} == 0)); then break; fi
        if ((SECONDS >= deadline)); then
            for svc in "${alive[@]}"; do
                if pid="$(running_pid "$svc")"; then
                    warn "${svc} (pid ${pid}) did not stop within 25s; killing it"
                    kill -KILL "$pid" 2>/dev/null || true
                fi
            done
            break
        fi
        sleep 0.5
    done

    for svc in "${SERVICES[@]}"; do
        file="$(pid_file "$svc")"
        rm -f "$file"
    done
    log "services stopped (PostgreSQL and RabbitMQ are left running)"
}

# -------------------------------------------------------------------- status

cmd_status() {
    local svc pid code healthy=0
    if compose_running; then
        docker compose ps
        echo
    fi
    printf '%-15s %-10s %-8s %s\n' SERVICE PID HEALTHZ URL
    for svc in "${SERVICES[@]}"; do
        pid="$(running_pid "$svc" || echo -)"
        code="$(http_code "$(svc_url "$svc")/healthz")"
        [[ "$code" == 200 ]] || healthy=1
        printf '%-15s %-10s %-8s %s\n' "$svc" "$pid" "$code" "$(svc_url "$svc")"
    done
    echo
    if command -v pg_isready >/dev/null 2>&1 && pg_isready -q -h "$SAGA_PG_HOST" -p "$SAGA_PG_PORT" -t 3; then
        echo "PostgreSQL  ${SAGA_PG_HOST}:${SAGA_PG_PORT}  ready"
    else
        echo "PostgreSQL  ${SAGA_PG_HOST}:${SAGA_PG_PORT}  not answering"
    fi
    if _rmq_api_ok; then
        echo "RabbitMQ    ${SAGA_RABBITMQ_API}  management API answers"
    else
        echo "RabbitMQ    ${SAGA_RABBITMQ_API}  management API not answering"
    fi
    # Non-zero unless every service is healthy, so scripts can poll this.
    return "$healthy"
}

# ---------------------------------------------------------------------- logs

cmd_logs() {
    local svc="${1:-}"
    [[ -z "$svc" ]] || svc_key "$svc" >/dev/null
    if compose_running; then
        # shellcheck disable=SC2086 # an empty $svc means "all services"
        exec docker compose logs -f --tail 100 $svc
    fi
    local files=()
    if [[ -n "$svc" ]]; then
        files=("$(log_file "$svc")")
    else
        for svc in "${SERVICES[@]}"; do files+=("$(log_file "$svc")"); done
    fi
    local f found=0
    for f in "${files[@]}"; do [[ -f "$f" ]] && found=1; done
    ((found)) || die "no logs in ${LOG_DIR}/ yet; start the stack with ./scripts/stack.sh up"
    exec tail -n 100 -F "${files[@]}"
}

case "${1:-up}" in
up)
    case "${2:-}" in
    "") ;;
    --release) STACK_PROFILE=release ;;
    *) die "unknown option '$2' for up (expected: --release)" ;;
    esac
    case "$STACK_PROFILE" in
    dev | release) ;;
    *) die "SAGA_STACK_PROFILE must be dev or release (got '${STACK_PROFILE}')" ;;
    esac
    cmd_up
    ;;
down) cmd_down ;;
status) cmd_status ;;
logs) cmd_logs "${2:-}" ;;
-h | --help | help) awk 'NR > 2 && /^#/ { sub(/^# ?/, ""); print; next } NR > 2 { exit }' "$0" ;;
*) die "unknown command '$1' (expected: up, down, status, logs [svc])" ;;
esac
