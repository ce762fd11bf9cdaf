# shellcheck shell=bash
#
# Helpers shared by the scripts in this directory. Source it, do not run it:
#
#     source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
#
# It deliberately leaves the caller's shell options alone, but every function is
# safe under `set -euo pipefail`. Fatal problems end the calling script (exit 1)
# with a message that says what to do, because a half-prepared environment only
# produces confusing failures later on.
#
# The saga needs one PostgreSQL server and one RabbitMQ broker. On a developer
# machine or a fresh CI runner either may be missing or stopped; the ensure_*
# functions start (and, as root on Debian/Ubuntu, install) them, so that
# `./scripts/test.sh` and `./scripts/stack.sh` work from a clean checkout.

# Where the local PostgreSQL and RabbitMQ are expected. These match the defaults
# of the services (see the contract); they are variables only so that one place
# names them.
SAGA_PG_HOST="${SAGA_PG_HOST:-127.0.0.1}"
SAGA_PG_PORT="${SAGA_PG_PORT:-5432}"
SAGA_RABBITMQ_API="${SAGA_RABBITMQ_API:-http://127.0.0.1:15672}"
SAGA_RABBITMQ_VHOST="${SAGA_RABBITMQ_VHOST:-saga}"

# "user" or "user:password" for the role `postgres`, used to build database URLs.
# ensure_postgres switches it to postgres:postgres when the server insists on a
# password for TCP connections (Debian's default pg_hba.conf does).
export SAGA_PG_USERINFO="${SAGA_PG_USERINFO:-postgres}"

# The databases owned by the three services (one each, see the contract).
SAGA_DATABASES=(orders inventory payments)

log() { printf '==> %s\n' "$*" >&2; }
warn() { printf '==> WARNING: %s\n' "$*" >&2; }
die() {
    printf '==> ERROR: %s\n' "$*" >&2
    exit 1
}

is_root() { [[ "$(id -u)" -eq 0 ]]; }

# The binaries the stack runs: the three services and sagactl (stack.sh runs its
# dev-keys, the README's tour the rest), and nothing else of the workspace, so that the
# test crate's dependencies and features stay out of the build. bench.sh builds the same
# set and the benchmarks' own binary (`build_release saga-bench`), so that one build
# serves both.
RELEASE_PACKAGES=(order-svc inventory-svc payment-svc sagactl)
# build_release [PACKAGE]...: the release binaries of RELEASE_PACKAGES and of each PACKAGE.
build_release() {
    build_stack_binaries release "$@"
}
# build_stack_binaries PROFILE [PACKAGE]...: the binaries of RELEASE_PACKAGES and of each
# PACKAGE, in cargo's profile PROFILE (`dev`, whose binaries land in target/debug/, or
# `release`).
build_stack_binaries() {
    local profile="$1" args=() p
    shift
    for p in "${RELEASE_PACKAGES[@]}" "$@"; do args+=(-p "$p"); done
    log "building the ${profile} binaries (cargo build --profile ${profile} ${args[*]})"
    cargo build --profile "$profile" "${args[@]}"
}
# The directory of target/ where cargo puts the binaries of PROFILE.
profile_dir() {
    case "$1" in
    dev) echo target/debug ;;
    *) echo "target/$1" ;;
    esac
}

# Builds (and tests) with clippy's driver compiling the workspace's crates: cargo runs it
# only for members, and it lints them on the way; CLIPPY_ARGS is how
# `cargo clippy -- -D warnings` hands it its flags. Every script that builds the debug
# profile sets the same two variables, so that none of them compiles what another built
# (cargo rebuilds the workspace when they change).
use_clippy_driver() {
    local driver
    driver="$(rustc --print sysroot)/bin/clippy-driver"
    [[ -x "$driver" ]] || die "clippy is not installed for this toolchain: rustup component add clippy"
    export RUSTC_WORKSPACE_WRAPPER="$driver"
    export CLIPPY_ARGS="-D__CLIPPY_HACKERY__warnings__CLIPPY_HACKERY__"
}

# Polls a command once a second until it succeeds or the deadline passes.
# Usage: wait_until SECONDS DESCRIPTION COMMAND [ARGS...]
wait_until() {
    local seconds="$1" what="$2"
    shift 2
    local deadline=$((SECONDS + seconds))
    until "$@"; do
        if ((SECONDS >= deadline)); then
            log "gave up waiting for ${what} after ${seconds}s"
            return 1
        fi
        sleep 1
    done
}

# Usage: wait_http_200 URL SECONDS [PID]
# With a PID, stops early (returns 2) when that process has exited: a service that
# crashed at start-up will never answer, and waiting out the deadline only hides
# the real error in its log.
wait_http_200() {
    local url="$1" seconds="$2" pid="${3:-}"
    local deadline=$((SECONDS + seconds)) code
    while true; do
        code="$(http_code "$url")"
        [[ "$code" == 200 ]] && return 0
        if [[ -n "$pid" ]] && ! kill -0 "$pid" 2>/dev/null; then
            log "process ${pid} exited before ${url} answered"
            return 2
        fi
        if ((SECONDS >= deadline)); then
            log "${url} did not answer 200 within ${seconds}s (last status: ${code})"
            return 1
        fi
        sleep 1
    done
}

# Prints the HTTP status of a GET (000 when nothing answers); never fails.
http_code() {
    curl -s -o /dev/null -w '%{http_code}' --connect-timeout 2 --max-time 5 "$1" 2>/dev/null || true
}

# Installs Debian packages. Only called as root, and only when the thing is missing,
# so a configured machine is never modified.
apt_install() {
    log "installing $* with apt-get (this takes a while on a fresh machine)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

# True if a Docker engine is reachable and the Compose v2 plugin is present.
# A docker CLI alone (no daemon, or no permission on its socket) is not enough.
have_docker_engine() {
    command -v docker >/dev/null 2>&1 &&
        timeout 20 docker info >/dev/null 2>&1 &&
        docker compose version >/dev/null 2>&1
}

# ---------------------------------------------------------------- PostgreSQL

pg_url() { printf 'postgres://%s@%s:%s/%s' "$SAGA_PG_USERINFO" "$SAGA_PG_HOST" "$SAGA_PG_PORT" "$1"; }

_pg_ready() {
    command -v pg_isready >/dev/null 2>&1 &&
        pg_isready -q -h "$SAGA_PG_HOST" -p "$SAGA_PG_PORT" -t 3 >/dev/null 2>&1
}

# The newest installed major version, e.g. "16" (empty if none).
_pg_version() {
    [[ -d /etc/postgresql ]] || return 0
    find /etc/postgresql -mindepth 1 -maxdepth 1 -type d -printf '%f\n' | sort -V | tail -n 1
}

_pg_installed() { [[ -n "$(_pg_version)" ]] && command -v pg_ctlcluster >/dev/null 2>&1; }

_pg_start() {
    local version
    version="$(_pg_version)"
    log "starting PostgreSQL ${version} (cluster main)"
    # --skip-systemctl-redirect: containers and CI runners often have no systemd,
    # and where there is one, starting the cluster directly is still correct.
    pg_ctlcluster --skip-systemctl-redirect "$version" main start ||
        warn "pg_ctlcluster reported an error (it may already be starting)"
}

# -w: never prompt for a password (a prompt would hang CI); it fails instead.
_pg_select1() {
    PGCONNECT_TIMEOUT=5 psql -w -h "$SAGA_PG_HOST" -p "$SAGA_PG_PORT" -U postgres -d postgres \
        -Atqc 'select 1' </dev/null >/dev/null 2>&1
}

# psql as the superuser on database $1, stopping at the first error.
_pg_psql_on() {
    local db="$1"
    shift
    PGCONNECT_TIMEOUT=5 psql -w -h "$SAGA_PG_HOST" -p "$SAGA_PG_PORT" -U postgres -d "$db" \
        -v ON_ERROR_STOP=1 -Atq "$@" </dev/null
}

_pg_psql() { _pg_psql_on postgres "$@"; }

ensure_postgres() {
    if ! _pg_ready; then
        if ! _pg_installed; then
            if is_root; then
                apt_install postgresql
            else
                die "PostgreSQL is not running on ${SAGA_PG_HOST}:${SAGA_PG_PORT} and is not installed.
    Install it, e.g.:  sudo apt-get install -y postgresql
    (or run this script as root and it will do so), then run it again."
            fi
        fi
        # The package may have started the cluster itself; starting it twice is harmless
        # but noisy, so check first.
        _pg_ready || _pg_start
        wait_until 60 "PostgreSQL on ${SAGA_PG_HOST}:${SAGA_PG_PORT}" _pg_ready ||
            die "PostgreSQL did not become ready; see /var/log/postgresql/"
    fi
    log "PostgreSQL is ready on ${SAGA_PG_HOST}:${SAGA_PG_PORT}"

    # Connect as the superuser over TCP, as the services will. Trust auth, PGPASSWORD
    # or ~/.pgpass may already make this work.
    if _pg_select1; then
        :
    elif PGPASSWORD=postgres _pg_select1; then
        # An earlier run (see below) already gave the role its password.
        export PGPASSWORD=postgres SAGA_PG_USERINFO=postgres:postgres
    elif is_root && id postgres >/dev/null 2>&1; then
        # A fresh Debian cluster accepts the superuser only over the Unix socket
        # (peer auth); TCP needs a password, and the role has none. Give it a
        # well-known one: this is a local development/test server.
        log "setting password 'postgres' for role postgres (TCP connections require one)"
        (cd / && su postgres -s /bin/sh -c "psql -q -p ${SAGA_PG_PORT} -c \"ALTER ROLE postgres PASSWORD 'postgres'\"") ||
            die "could not set a password for role postgres"
        export PGPASSWORD=postgres SAGA_PG_USERINFO=postgres:postgres
        _pg_select1 || die "still cannot connect as postgres to ${SAGA_PG_HOST}:${SAGA_PG_PORT}; check pg_hba.conf"
    else
        die "cannot connect to PostgreSQL at ${SAGA_PG_HOST}:${SAGA_PG_PORT} as role postgres without a password.
    Either export PGPASSWORD (and SAGA_PG_USERINFO=postgres:<password>), or allow
    trust/md5 for 127.0.0.1 in pg_hba.conf, or run this script as root."
    fi
    # Children (services, tests, psql) pick these up; sqlx and libpq both read PGPASSWORD.
    export SAGA_PG_USERINFO
}

# Creates the services' databases if they do not exist (CREATE DATABASE has no
# IF NOT EXISTS). Requires ensure_postgres first.
ensure_databases() {
    local db
    for db in "${SAGA_DATABASES[@]}"; do
        if [[ "$(_pg_psql -c "select 1 from pg_database where datname = '${db}'")" != 1 ]]; then
            log "creating database ${db}"
            _pg_psql -c "create database \"${db}\"" >/dev/null || die "could not create database ${db}"
        fi
    done
}

# ------------------------------------------------------------------ RabbitMQ

_rmq_ctl_ok() {
    command -v rabbitmqctl >/dev/null 2>&1 && timeout 20 rabbitmqctl -q status >/dev/null 2>&1
}

_rmq_started() {
    timeout 20 rabbitmqctl -q await_startup >/dev/null 2>&1 && _rmq_ctl_ok
}

_rmq_api_ok() {
    curl -sf -o /dev/null --connect-timeout 2 --max-time 5 -u guest:guest "${SAGA_RABBITMQ_API}/api/overview"
}

# Creates the vhost and grants guest everything on it, through the management
# HTTP API. Used when the broker runs elsewhere (a container, a CI service) and
# rabbitmqctl cannot reach it; both calls are idempotent PUTs.
_rmq_vhost_via_api() {
    local vhost="$SAGA_RABBITMQ_VHOST"
    curl -sf -o /dev/null -u guest:guest -X PUT "${SAGA_RABBITMQ_API}/api/vhosts/${vhost}" &&
        curl -sf -o /dev/null -u guest:guest -X PUT -H 'content-type: application/json' \
            -d '{"configure":".*","write":".*","read":".*"}' \
            "${SAGA_RABBITMQ_API}/api/permissions/${vhost}/guest"
}

_rmq_vhost_via_ctl() {
    local vhost="$SAGA_RABBITMQ_VHOST"
    # add_vhost fails if the vhost exists (older brokers); look before leaping.
    if ! timeout 20 rabbitmqctl -q list_vhosts name 2>/dev/null | grep -qxF "$vhost"; then
        log "creating RabbitMQ vhost ${vhost}"
        timeout 20 rabbitmqctl -q add_vhost "$vhost" >/dev/null 2>&1 ||
            timeout 20 rabbitmqctl -q list_vhosts name 2>/dev/null | grep -qxF "$vhost" ||
            return 1
    fi
    timeout 20 rabbitmqctl -q set_permissions -p "$vhost" guest '.*' '.*' '.*' >/dev/null
}

ensure_rabbitmq() {
    if ! _rmq_ctl_ok && _rmq_api_ok; then
        # A broker is running but is not ours to control (e.g. a container); only
        # make sure the vhost exists.
        log "RabbitMQ answers on ${SAGA_RABBITMQ_API} (not controllable with rabbitmqctl here); using its HTTP API"
        _rmq_vhost_via_api || die "could not create vhost ${SAGA_RABBITMQ_VHOST} through ${SAGA_RABBITMQ_API}"
        log "RabbitMQ is ready (vhost ${SAGA_RABBITMQ_VHOST})"
        return 0
    fi

    if ! _rmq_ctl_ok; then
        if ! command -v rabbitmq-server >/dev/null 2>&1; then
            if is_root; then
                apt_install rabbitmq-server
            else
                die "RabbitMQ is not running and is not installed.
    Install it, e.g.:  sudo apt-get install -y rabbitmq-server
    (or run this script as root and it will do so), then run it again.
    If it runs but rabbitmqctl cannot reach it (Erlang cookie), run as root or
    enable its management plugin so it can be configured over HTTP."
            fi
        fi
        # The package may have started the broker already.
        if ! _rmq_ctl_ok; then
            log "starting RabbitMQ"
            rabbitmq-server -detached >/dev/null 2>&1 || warn "rabbitmq-server -detached reported an error"
        fi
        wait_until 120 "RabbitMQ to start" _rmq_started ||
            die "RabbitMQ did not start; see /var/log/rabbitmq/"
    fi

    # The management plugin gives the HTTP API (used by tests and sagactl) and the
    # console that operators read queues in. Enabling it twice is a no-op.
    if ! _rmq_api_ok; then
        log "enabling the RabbitMQ management plugin"
        timeout 60 rabbitmq-plugins -q enable rabbitmq_management >/dev/null ||
            die "could not enable rabbitmq_management"
        wait_until 60 "the RabbitMQ management API on ${SAGA_RABBITMQ_API}" _rmq_api_ok ||
            die "the management API does not answer on ${SAGA_RABBITMQ_API}"
    fi

    _rmq_vhost_via_ctl || die "could not create vhost ${SAGA_RABBITMQ_VHOST} or grant guest access to it"
    log "RabbitMQ is ready (vhost ${SAGA_RABBITMQ_VHOST}, console ${SAGA_RABBITMQ_API})"
}

# ------------------------------------------------------------------ pg_auto_failover

# The automatic database failover test (tests/tests/e2e/broker_and_database_faults/
# pg_auto_failover.rs) runs a monitor and two nodes of pg_auto_failover: `pg_autoctl` and
# the monitor's extension, Debian's postgresql-<version>-auto-failover for the PostgreSQL
# installed. Installed as root when missing; otherwise a hint.
ensure_pg_auto_failover() {
    local version
    version="$(_pg_version)"
    [[ -n "$version" ]] || die "PostgreSQL is not installed (ensure_postgres first)"
    if command -v pg_autoctl >/dev/null 2>&1 &&
        [[ -f "/usr/lib/postgresql/${version}/lib/pgautofailover.so" ]]; then
        return 0
    fi
    if is_root && command -v apt-get >/dev/null 2>&1; then
        apt_install "postgresql-${version}-auto-failover"
    else
        die "pg_auto_failover is missing (the automatic database failover test needs it).
    Install it, e.g.:  sudo apt-get install -y postgresql-${version}-auto-failover
    (or run this script as root and it will do so), then run it again."
    fi
}

# ------------------------------------------------------------------ headless browser

# The saga explorer's end-to-end test (tests/tests/e2e/explorer.rs) drives Debian's
# chromium through chromedriver. Installed as root when missing; otherwise a hint.
ensure_chromium() {
    if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then
        return 0
    fi
    if is_root && command -v apt-get >/dev/null 2>&1; then
        apt_install chromium chromium-driver
    else
        die "chromium and chromedriver are missing (the explorer test needs them).
    Install them, e.g.:  sudo apt-get install -y chromium chromium-driver
    (or run this script as root and it will do so), then run it again."
    fi
}

# Creates a Python virtual environment at $1 (replacing what is there), installing
# Debian's python3-venv first when the venv module is missing and we are root.
make_venv() {
    local dir="$1"
    rm -rf "$dir"
    mkdir -p "$(dirname "$dir")"
    python3 -m venv "$dir" >/dev/null 2>&1 && return 0
    rm -rf "$dir"
    # Debian and Ubuntu ship the venv module separately.
    if is_root && command -v apt-get >/dev/null 2>&1; then
        apt_install python3-venv
        python3 -m venv "$dir"
    else
        warn "python3 -m venv failed; install python3-venv (Debian/Ubuntu)"
        return 1
    fi
}
