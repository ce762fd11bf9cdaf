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
#     ./scripts/rabbit-cluster.sh ctl N ARGS   rabbitmqctl ARGS against node N (from its namespace)
#     ./scripts/rabbit-cluster.sh partition N  cut node N off from the two others (namespaces only)
#     ./scripts/rabbit-cluster.sh heal         undo every partition (namespaces only)
#
# Each node has its own name (<prefix>1@localhost ...), AMQP port (base, base+1, base+2),
# distribution port (AMQP + 20000), management port (AMQP + 10000), data and log
# directories under SAGA_CLUSTER_DIR, all owned by the `rabbitmq` user that the server
# drops to. The nodes share that user's Erlang cookie, so they cluster with each other.
# `up` joins nodes 2 and 3 to node 1 and only then imports deploy/rabbitmq/definitions.json,
# so every quorum queue of the saga gets a member on each of the three nodes. Every node
# runs with `cluster_partition_handling = pause_minority`, as deploy/ does.
#
# With SAGA_CLUSTER_NETNS=a.b.c each node runs in a network namespace of its own
# (<prefix>ns1 ...) at a.b.c.1 to a.b.c.3, named <prefix>1@<prefix>h1 ..., host names that
# a hosts file only the namespaces see resolves (/etc/netns/<namespace>/hosts). One veth
# pair per namespace joins a bridge in the machine's own namespace, which holds a.b.c.254:
# clients on the machine reach every node, and the nodes reach each other. That is what
# makes `partition N` possible. It adds blackhole routes in node N's namespace towards the
# two others and in theirs towards node N, so no packet passes between them in either
# direction (distribution, epmd, everything), while clients on the machine still reach
# every node. On loopback that cannot be done: all nodes share 127.0.0.1, and filtering on
# ports cannot single out the connections a node opens from ephemeral ports. `heal` removes
# the routes; `down` kills every process in the namespaces and removes them, the bridge
# and the hosts files.
#
# Settings (environment):
#   SAGA_CLUSTER_DIR        data, logs, config and pid files (default /tmp/saga-rabbit-cluster)
#   SAGA_CLUSTER_PREFIX     node name prefix (default saga-c; nodes saga-c1@localhost ...)
#   SAGA_CLUSTER_AMQP_PORT  AMQP port of node 1 (default 5681; nodes 2 and 3 take the next two)
#   SAGA_CLUSTER_DEFINITIONS the definitions file to import (default deploy/rabbitmq/definitions.json)
#   SAGA_CLUSTER_NETNS      a.b.c: the nodes in network namespaces on a.b.c.0/24 (default: none,
#                           every node on 127.0.0.1 in the machine's own namespace)
#   SAGA_CLUSTER_NET_TICKTIME  Erlang's net_ticktime in seconds, how long a silent peer takes
#                           to be declared down, and so a partition to be noticed (default 60)
#
# Needs root (or the rabbitmq user): the server and rabbitmqctl run as `rabbitmq`. The
# namespaces need root.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=scripts/lib.sh
source "${ROOT}/scripts/lib.sh"

CLUSTER_DIR="${SAGA_CLUSTER_DIR:-/tmp/saga-rabbit-cluster}"
PREFIX="${SAGA_CLUSTER_PREFIX:-saga-c}"
BASE_PORT="${SAGA_CLUSTER_AMQP_PORT:-5681}"
DEFINITIONS="${SAGA_CLUSTER_DEFINITIONS:-${ROOT}/deploy/rabbitmq/definitions.json}"
NETNS="${SAGA_CLUSTER_NETNS:-}"
NET_TICKTIME="${SAGA_CLUSTER_NET_TICKTIME:-}"
NODES=(1 2 3)

if [[ -n "$NETNS" && ! "$NETNS" =~ ^[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}$ ]]; then
    die "SAGA_CLUSTER_NETNS must be the first three numbers of a /24 (a.b.c), got '${NETNS}'"
fi

node_host() { if [[ -n "$NETNS" ]]; then printf '%sh%s' "$PREFIX" "$1"; else printf localhost; fi; }
node_name() { printf '%s%s@%s' "$PREFIX" "$1" "$(node_host "$1")"; }
node_ip() { if [[ -n "$NETNS" ]]; then printf '%s.%s' "$NETNS" "$1"; else printf 127.0.0.1; fi; }
amqp_port() { echo $((BASE_PORT + $1 - 1)); }
node_dir() { printf '%s/n%s' "$CLUSTER_DIR" "$1"; }

# Namespace mode: node N's namespace, and the interfaces (at most 15 characters, so named
# after the subnet).
ns_name() { printf '%sns%s' "$PREFIX" "$1"; }
link_tag() {
    local b c
    IFS=. read -r _ b c <<<"$NETNS"
    printf 'sg%sx%s' "$b" "$c"
}
bridge_name() { printf '%sbr' "$(link_tag)"; }
veth_name() { printf '%sv%s' "$(link_tag)" "$1"; }

# Runs a command where node N lives: in its namespace, or here.
in_node_ns() {
    local n="$1"
    shift
    if [[ -n "$NETNS" ]]; then
        ip netns exec "$(ns_name "$n")" "$@"
    else
        "$@"
    fi
}

# rabbitmqctl against one node, from the node's namespace (where the host names resolve).
# `timeout`: a CLI call to a node that is half up can hang.
ctl() {
    local n="$1"
    shift
    in_node_ns "$n" timeout 60 rabbitmqctl -q -n "$(node_name "$n")" "$@"
}

need_netns() {
    [[ -n "$NETNS" ]] || die "$1 needs the nodes in network namespaces (SAGA_CLUSTER_NETNS=a.b.c)"
}

# Namespace mode: the bridge, and per node a namespace with its veth, address and hosts file.
netns_up() {
    is_root || die "network namespaces need root"
    command -v ip >/dev/null 2>&1 || apt_install iproute2
    if ip -o -4 addr show | grep -qF " ${NETNS}."; then
        die "${NETNS}.0/24 is in use on this machine; choose another SAGA_CLUSTER_NETNS"
    fi
    local br n m ns
    br="$(bridge_name)"
    log "bridge ${br} at ${NETNS}.254, a network namespace per node"
    ip link add "$br" type bridge
    ip addr add "${NETNS}.254/24" dev "$br"
    ip link set "$br" up
    for n in "${NODES[@]}"; do
        ns="$(ns_name "$n")"
        ip netns add "$ns"
        ip link add "$(veth_name "$n")" type veth peer name eth0 netns "$ns"
        ip link set "$(veth_name "$n")" master "$br" up
        ip -n "$ns" addr add "$(node_ip "$n")/24" dev eth0
        ip -n "$ns" link set eth0 up
        ip -n "$ns" link set lo up
        mkdir -p "/etc/netns/${ns}"
        {
            cat /etc/hosts
            for m in "${NODES[@]}"; do printf '%s %s\n' "$(node_ip "$m")" "$(node_host "$m")"; done
        } >"/etc/netns/${ns}/hosts"
    done
}

netns_down() {
    local n ns pids
    for n in "${NODES[@]}"; do
        ns="$(ns_name "$n")"
        if ip netns list | grep -qw "$ns"; then
            # The node, its epmd and whatever else was started there.
            pids="$(ip netns pids "$ns" || true)"
            # shellcheck disable=SC2086 # one pid per word
            [[ -z "$pids" ]] || kill -9 $pids 2>/dev/null || true
            ip netns del "$ns" || warn "could not remove the namespace ${ns}"
        fi
        ip link del "$(veth_name "$n")" 2>/dev/null || true
        rm -rf "/etc/netns/${ns}"
    done
    ip link del "$(bridge_name)" 2>/dev/null || true
    rmdir /etc/netns 2>/dev/null || true
}

# Blackhole routes between node N and the two others, in both directions: neither side's
# packets leave its namespace, so each sees the other fall silent (as with a cut cable),
# while the machine's own namespace, where the clients are, still reaches every node.
cmd_partition() {
    need_netns partition
    local cut="$1" m
    for m in "${NODES[@]}"; do
        [[ "$m" != "$cut" ]] || continue
        ip -n "$(ns_name "$cut")" route replace blackhole "$(node_ip "$m")/32"
        ip -n "$(ns_name "$m")" route replace blackhole "$(node_ip "$cut")/32"
    done
    log "$(node_name "$cut") cut off from the two other nodes"
}

cmd_heal() {
    need_netns heal
    local n dest
    for n in "${NODES[@]}"; do
        while read -r _ dest _; do
            [[ -z "$dest" ]] || ip -n "$(ns_name "$n")" route del blackhole "$dest"
        done < <(ip -n "$(ns_name "$n")" route show type blackhole)
    done
    log "partitions healed"
}

# Writes node N's environment file, config and plugin list. The environment file replaces
# /etc/rabbitmq/rabbitmq-env.conf (which names the machine's own broker) for this node.
prepare_node() {
    local n="$1" dir port ip
    dir="$(node_dir "$n")"
    port="$(amqp_port "$n")"
    ip="$(node_ip "$n")"
    mkdir -p "${dir}/mnesia" "${dir}/log"
    cat >"${dir}/rabbitmq-env.conf" <<EOF
NODENAME=$(node_name "$n")
NODE_IP_ADDRESS=${ip}
NODE_PORT=${port}
DIST_PORT=$((port + 20000))
MNESIA_BASE=${dir}/mnesia
LOG_BASE=${dir}/log
CONFIG_FILE=${dir}/rabbitmq.conf
ADVANCED_CONFIG_FILE=${dir}/advanced.config
ENABLED_PLUGINS_FILE=${dir}/enabled_plugins
PID_FILE=${dir}/pid
export ERL_FLAGS="-kernel inet_dist_use_interface {${ip//./,}}"
EOF
    cat >"${dir}/rabbitmq.conf" <<EOF
management.tcp.ip = ${ip}
management.tcp.port = $((port + 10000))
# As in deploy/: a node cut off from the two others pauses, closing its client connections,
# instead of serving a minority; it resumes by itself once it sees the majority again.
cluster_partition_handling = pause_minority
EOF
    [[ -z "$NET_TICKTIME" ]] || echo "net_ticktime = ${NET_TICKTIME}" >>"${dir}/rabbitmq.conf"
    # In namespaces the clients on this machine come from the bridge's address, not from
    # loopback: let `guest` (which the definitions create, for local use) log in from there.
    [[ -z "$NETNS" ]] || echo "loopback_users.guest = false" >>"${dir}/rabbitmq.conf"
    echo '[rabbitmq_management].' >"${dir}/enabled_plugins"
    chown -R rabbitmq:rabbitmq "$dir"
}

node_env() { printf 'RABBITMQ_CONF_ENV_FILE=%s/rabbitmq-env.conf' "$(node_dir "$1")"; }

start_node() {
    local n="$1"
    [[ -f "$(node_dir "$n")/rabbitmq-env.conf" ]] || prepare_node "$n"
    log "starting $(node_name "$n") (AMQP $(node_ip "$n"):$(amqp_port "$n"))"
    # In a namespace the node's epmd must answer the other nodes on the node's address (it
    # adds loopback by itself); left to the node or the CLI, it would listen on loopback
    # alone, as /etc/rabbitmq/rabbitmq-env.conf says. A second start finds it running.
    [[ -z "$NETNS" ]] || in_node_ns "$n" epmd -daemon -address "$(node_ip "$n")"
    in_node_ns "$n" env "$(node_env "$n")" rabbitmq-server -detached >/dev/null 2>&1 ||
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
    [[ -z "$NETNS" ]] || netns_up
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
    [[ -z "$NETNS" ]] || netns_down
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
            printf '%s\trunning\tamqp://%s:%s\n' "$(node_name "$n")" "$(node_ip "$n")" "$(amqp_port "$n")"
        else
            printf '%s\tdown\n' "$(node_name "$n")"
        fi
    done
    # Each node lists the queues it leads: a listing of the whole cluster streams from
    # every node to the CLI, which nodes in namespaces cannot reach.
    for n in "${NODES[@]}"; do
        if node_running "$n"; then
            ctl "$n" list_queues -p "$SAGA_RABBITMQ_VHOST" --local --no-table-headers \
                name type leader members
        fi
    done
}

# The services' SAGA_AMQP_URL for the cluster: one URL per node, comma-separated.
cmd_urls() {
    local n urls=()
    for n in "${NODES[@]}"; do
        urls+=("amqp://guest:guest@$(node_ip "$n"):$(amqp_port "$n")/${SAGA_RABBITMQ_VHOST}?heartbeat=5")
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
ctl)
    node_arg "${2:-}"
    ctl "$2" "${@:3}"
    ;;
partition)
    node_arg "${2:-}"
    cmd_partition "$2"
    ;;
heal) cmd_heal ;;
*) die "usage: $0 up|down|status|urls|start N|stop N|kill N|ctl N ARGS|partition N|heal" ;;
esac
