#!/usr/bin/env bash
#
# A three-node RabbitMQ cluster on this machine, from the distribution's rabbitmq-server,
# beside (never instead of) the broker on 5672.
#
#     ./scripts/rabbit-cluster.sh up           start, join, apply the topology; prints the URLs
#     ./scripts/rabbit-cluster.sh down         kill every node and remove its data
#     ./scripts/rabbit-cluster.sh status       members, running nodes, queue leaders
#     ./scripts/rabbit-cluster.sh start N      start node N (1..3) again, e.g. after a kill
#     ./scripts/rabbit-cluster.sh stop N       stop node N gracefully
#     ./scripts/rabbit-cluster.sh kill N       kill -9 node N
#     ./scripts/rabbit-cluster.sh urls         the comma-separated SAGA_AMQP_URL for the cluster
#
# Each node has its own name (<prefix>1@localhost ...), AMQP port (base, base+1, base+2),
# distribution port (AMQP + 20000), management port (AMQP + 10000), data and log
# directories under SAGA_CLUSTER_DIR, all owned by the `rabbitmq` user that the server
# drops to. The nodes share that user's Erlang cookie, so they cluster with each other.
# `up` joins nodes 2 and 3 to node 1 and only then imports deploy/rabbitmq/definitions.json,
# so every quorum queue of the saga gets a member on each of the three nodes.
#
# Settings (environment):
#   SAGA_CLUSTER_DIR        data, logs, config and pid files (default /tmp/saga-rabbit-cluster)
#   SAGA_CLUSTER_PREFIX     node name prefix (default saga-c; nodes saga-c1@localhost ...)
#   SAGA_CLUSTER_AMQP_PORT  AMQP port of node 1 (default 5681; nodes 2 and 3 take the next two)
#   SAGA_CLUSTER_DEFINITIONS the definitions file to import (default deploy/rabbitmq/definitions.json)
#
# Needs root (or the rabbitmq user): the server and rabbitmqctl run as `rabbitmq`.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=scripts/lib.sh
source "${ROOT}/scripts/lib.sh"

CLUSTER_DIR="${SAGA_CLUSTER_DIR:-/tmp/saga-rabbit-cluster}"
PREFIX="${SAGA_CLUSTER_PREFIX:-saga-c}"
BASE_PORT="${SAGA_CLUSTER_AMQP_PORT:-5681}"
DEFINITIONS="${SAGA_CLUSTER_DEFINITIONS:-${ROOT}/deploy/rabbitmq/definitions.json}"
NODES=(1 2 3)

node_name() { printf '%s%s@localhost' "$PREFIX" "$1"; }
amqp_port() { echo $((BASE_PORT + $1 - 1)); }
node_dir() { printf '%s/n%s' "$CLUSTER_DIR" "$1"; }

# rabbitmqctl against one node. `timeout`: a CLI call to a node that is half up can hang.
ctl() {
    local n="$1"
    shift
    timeout 60 rabbitmqctl -q -n "$(node_name "$n")" "$@"
}

# Writes node N's environment file, config and plugin list. The environment file replaces
# /etc/rabbitmq/rabbitmq-env.conf (which names the machine's own broker) for this node.
prepare_node() {
    local n="$1" dir port
    dir="$(node_dir "$n")"
    port="$(amqp_port "$n")"
    mkdir -p "${dir}/mnesia" "${dir}/log"
    cat >"${dir}/rabbitmq-env.conf" <<EOF
NODENAME=$(node_name "$n")
NODE_IP_ADDRESS=127.0.0.1
NODE_PORT=${port}
DIST_PORT=$((port + 20000))
MNESIA_BASE=${dir}/mnesia
LOG_BASE=${dir}/log
CONFIG_FILE=${dir}/rabbitmq.conf
ADVANCED_CONFIG_FILE=${dir}/advanced.config
ENABLED_PLUGINS_FILE=${dir}/enabled_plugins
PID_FILE=${dir}/pid
export ERL_FLAGS="-kernel inet_dist_use_interface {127,0,0,1}"
EOF
    cat >"${dir}/rabbitmq.conf" <<EOF
management.tcp.ip = 127.0.0.1
management.tcp.port = $((port + 10000))
EOF
    echo '[rabbitmq_management].' >"${dir}/enabled_plugins"
    chown -R rabbitmq:rabbitmq "$dir"
}

node_env() { printf 'RABBITMQ_CONF_ENV_FILE=%s/rabbitmq-env.conf' "$(node_dir "$1")"; }

start_node() {
    local n="$1"
    [[ -f "$(node_dir "$n")/rabbitmq-env.conf" ]] || prepare_node "$n"
    log "starting $(node_name "$n") (AMQP $(amqp_port "$n"))"
    env "$(node_env "$n")" rabbitmq-server -detached >/dev/null 2>&1 ||
        warn "rabbitmq-server -detached reported an error for node ${n}"
}

node_running() { ctl "$1" await_startup --timeout 5 >/dev/null 2>&1; }

wait_node() {
    wait_until 180 "$(node_name "$1") to start" node_running "$1" ||
        die "$(node_name "$1") did not start; see $(node_dir "$1")/log/"
}

node_pid() {
    local f
    f="$(node_dir "$1")/pid"
    [[ -s "$f" ]] && cat "$f"
}

kill_node() {
    local pid
    pid="$(node_pid "$1" || true)"
    if [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null; then
        log "kill -9 $(node_name "$1") (pid ${pid})"
        kill -9 "$pid"
    fi
}

cmd_up() {
    [[ -r "$DEFINITIONS" ]] || die "no definitions file at ${DEFINITIONS}"
    command -v rabbitmq-server >/dev/null 2>&1 || {
        is_root || die "rabbitmq-server is not installed; sudo apt-get install -y rabbitmq-server"
        apt_install rabbitmq-server
    }
    mkdir -p "$CLUSTER_DIR"
    chmod 755 "$CLUSTER_DIR"
    local n
    for n in "${NODES[@]}"; do
        prepare_node "$n"
        start_node "$n"
    done
    for n in "${NODES[@]}"; do wait_node "$n"; done
    for n in 2 3; do
        if ! ctl 1 cluster_status --formatter json 2>/dev/null | grep -qF "\"$(node_name "$n")\""; then
            log "joining $(node_name "$n") to $(node_name 1)"
            # The CLI reports the joining node's transient errors on stderr; keep them in
            # the node's log directory unless the join fails.
            {
                ctl "$n" stop_app && ctl "$n" join_cluster "$(node_name 1)" && ctl "$n" start_app
            } >"$(node_dir "$n")/log/join.log" 2>&1 ||
                die "$(node_name "$n") could not join: $(cat "$(node_dir "$n")/log/join.log")"
        fi
    done
    # The broker reads the file as the rabbitmq user.
    cp "$DEFINITIONS" "${CLUSTER_DIR}/definitions.json"
    chown rabbitmq:rabbitmq "${CLUSTER_DIR}/definitions.json"
    log "importing $(basename "$DEFINITIONS") (vhost, users, quorum queues on three nodes)"
    ctl 1 import_definitions "${CLUSTER_DIR}/definitions.json" >/dev/null
    log "cluster up: $(cmd_urls)"
}

cmd_down() {
    local n
    for n in "${NODES[@]}"; do kill_node "$n"; done
    # Only ever remove a directory this script laid out.
    if [[ -d "$(node_dir 1)" || -f "${CLUSTER_DIR}/definitions.json" ]]; then
        rm -rf "$CLUSTER_DIR"
    fi
    log "cluster down"
}

cmd_status() {
    local n
    for n in "${NODES[@]}"; do
        if node_running "$n"; then
            printf '%s\trunning\tamqp://127.0.0.1:%s\n' "$(node_name "$n")" "$(amqp_port "$n")"
        else
            printf '%s\tdown\n' "$(node_name "$n")"
        fi
    done
    for n in "${NODES[@]}"; do
        if node_running "$n"; then
            ctl "$n" list_queues -p "$SAGA_RABBITMQ_VHOST" name type leader members
            return 0
        fi
    done
}

# The services' SAGA_AMQP_URL for the cluster: one URL per node, comma-separated.
cmd_urls() {
    local n urls=()
    for n in "${NODES[@]}"; do
        urls+=("amqp://guest:guest@127.0.0.1:$(amqp_port "$n")/${SAGA_RABBITMQ_VHOST}?heartbeat=5")
    done
    (
        IFS=,
        echo "${urls[*]}"
    )
}

node_arg() {
    [[ "${1:-}" =~ ^[123]$ ]] || die "expected a node number 1, 2 or 3, got '${1:-}'"
}

case "${1:-up}" in
up) cmd_up ;;
down) cmd_down ;;
status) cmd_status ;;
urls) cmd_urls ;;
start)
    node_arg "${2:-}"
    start_node "$2"
    wait_node "$2"
    ;;
stop)
    node_arg "${2:-}"
    ctl "$2" stop
    ;;
kill)
    node_arg "${2:-}"
    kill_node "$2"
    ;;
*) die "usage: $0 up|down|status|urls|start N|stop N|kill N" ;;
esac
