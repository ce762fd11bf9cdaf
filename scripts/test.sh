#!/usr/bin/env bash
#
# The whole test suite, as CI runs it (.ci/run calls this):
#
#   1. formatting          cargo fmt --all --check
#   2. deployment files    scripts/validate-compose.sh, validate-deploy.sh (compose, the
#                          Kubernetes manifests), validate-openapi.sh, validate-alerts.sh
#                          (promtool's rule tests)
#   3. servers             PostgreSQL and RabbitMQ started, pg_auto_failover for the
#                          automatic database failover test, chromium for the explorer
#                          test (each installed as root if missing)
#   4. previous release    scripts/build-previous-release.sh: the services of the commit
#                          in PREVIOUS_RELEASE, built into target/ (its dependencies are
#                          this tree's) and kept in target/previous-release/bin/ for the
#                          rolling-upgrade test; nothing to do when they are there. It
#                          comes before the builds of this tree, which put this tree's
#                          binaries back in target/debug/ where the old build put its own
#   5. checked queries     scripts/prepare-queries.sh --check: the queries' offline data
#                          (.sqlx/) is what fresh databases, migrated as the services
#                          migrate theirs, describe. It runs the next phase's build with
#                          the query macros online, so that phase finds it all built
#   6. build and lints     cargo build --workspace --all-targets with clippy's driver
#                          compiling the workspace's own crates: the lints of
#                          `cargo clippy --all-targets -- -D warnings` come out of the one
#                          build, so the dependencies are compiled once, not once for
#                          clippy's check and again for the binaries
#   7. tests               the three binaries of tests/ and the unit tests of each crate:
#                          `chaos` (stops and starts the shared servers, so no other test
#                          that needs them runs meanwhile) beside `checks` (no servers:
#                          property tests, generated documents), then the unit tests,
#                          then `e2e` (the real binaries against the real servers, tests
#                          side by side). With ARGS: cargo test --workspace --no-fail-fast
#                          [ARGS...]
#
# Extra arguments go to `cargo test`, e.g. a test-name filter and test-binary flags:
#     ./scripts/test.sh outages -- --nocapture
#     ./scripts/test.sh --test e2e compensations
# The static checks come first because they are cheap and fail fast; the exit
# status is that of the first failing phase, or of cargo test. Each phase's time is
# printed at the end, whatever happened.
#
# Variables:
#   RUST_TEST_THREADS   tests of one binary run at once (default here 4: the end-to-end
#                       tests spend most of their time waiting, not on the CPU)
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=scripts/lib.sh
source scripts/lib.sh

PHASES=()
phase_started=$SECONDS
phase_name=""
# Closes the running phase and opens the next one (without an argument: just closes).
phase() {
    if [[ -n "$phase_name" ]]; then
        PHASES+=("$(printf '%-22s %4d s' "$phase_name" $((SECONDS - phase_started)))")
    fi
    phase_name="${2:-}"
    phase_started=$SECONDS
    [[ -z "$phase_name" ]] || printf '\n==> [%s] %s\n' "$1" "$3" >&2
}
print_times() {
    phase
    {
        printf '\n==> time per phase\n'
        printf '    %s\n' "${PHASES[@]}"
        printf '    %-22s %4d s\n' total "$SECONDS"
    } >&2
}
trap print_times EXIT

# The same compiler for the build and for cargo test (lib.sh), so the test run finds
# everything built and compiles nothing again.
use_clippy_driver

phase 1/7 fmt "formatting: cargo fmt --all --check"
cargo fmt --all --check

phase 2/7 deploy "deployment files: compose, Kubernetes, OpenAPI, alert rules"
./scripts/validate-compose.sh
./scripts/validate-deploy.sh
./scripts/validate-openapi.sh
./scripts/validate-alerts.sh

phase 3/7 servers "PostgreSQL, RabbitMQ, pg_auto_failover and a headless browser"
ensure_postgres
ensure_rabbitmq
ensure_pg_auto_failover
ensure_chromium

phase 4/7 previous "the previous release's services, for the rolling-upgrade test"
./scripts/build-previous-release.sh

phase 5/7 queries "checked queries: .sqlx/ against freshly migrated databases"
./scripts/prepare-queries.sh --check

phase 6/7 build "build and lints: cargo build --workspace --all-targets (clippy -D warnings)"
cargo build --workspace --all-targets

phase 7/7 tests "tests: cargo test --workspace --no-fail-fast $*"
export RUST_TEST_THREADS="${RUST_TEST_THREADS:-4}"
status=0
if (($# == 0)); then
    # cargo holds no lock while tests run, so two binaries can run at once: the checks
    # need no server, and take the CPU that chaos leaves while it waits on restarts.
    checks_log="$(mktemp)"
    cargo test -p saga-tests --test checks --no-fail-fast >"$checks_log" 2>&1 &
    checks_pid=$!
    cargo test -p saga-tests --test chaos --no-fail-fast || status=$?
    wait "$checks_pid" || status=$?
    log "the checks, run beside chaos:"
    cat "$checks_log"
    rm -f "$checks_log"
    cargo test --workspace --exclude saga-tests --no-fail-fast || status=$?
    cargo test -p saga-tests --lib --test e2e --no-fail-fast || status=$?
else
    cargo test --workspace --no-fail-fast "$@" || status=$?
fi
if ((status == 0)); then
    log "all tests passed"
else
    log "tests FAILED (cargo test exited with ${status})"
fi
exit "$status"
