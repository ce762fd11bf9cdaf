#!/usr/bin/env bash
#
# The whole test suite, as CI runs it (.ci/run calls this):
#
#   1. formatting          cargo fmt --all --check
#   2. lints               cargo clippy --workspace --all-targets -- -D warnings
#   3. compose file        scripts/validate-compose.sh (and the deploy manifests, the
#                          OpenAPI documents)
#   4. PostgreSQL+RabbitMQ started, chromium for the explorer test (installed as
#      root if missing)
#   5. build               cargo build --workspace --all-targets: the binaries the
#                          end-to-end tests run and the tests themselves, in one build,
#                          so the dependencies are built once with one set of features
#   6. tests               cargo test --workspace --no-fail-fast [ARGS...]
#
# Extra arguments go to `cargo test`, e.g. a test-name filter and test-binary flags:
#     ./scripts/test.sh cancel -- --nocapture
# The static checks come first because they are cheap and fail fast; the exit
# status is that of the first failing phase, or of cargo test.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=scripts/lib.sh
source scripts/lib.sh

phase() { printf '\n==> [%s] %s\n' "$1" "$2" >&2; }

phase 1/6 "formatting: cargo fmt --all --check"
cargo fmt --all --check

phase 2/6 "lints: cargo clippy --workspace --all-targets -- -D warnings"
cargo clippy --workspace --all-targets -- -D warnings

phase 3/6 "compose file: scripts/validate-compose.sh"
./scripts/validate-compose.sh
./scripts/validate-deploy.sh
./scripts/validate-openapi.sh

phase 4/6 "PostgreSQL, RabbitMQ and a headless browser"
ensure_postgres
ensure_rabbitmq
ensure_chromium

phase 5/6 "binaries and tests: cargo build --workspace --all-targets"
cargo build --workspace --all-targets

phase 6/6 "tests: cargo test --workspace --no-fail-fast $*"
if cargo test --workspace --no-fail-fast "$@"; then
    log "all tests passed"
else
    status=$?
    log "tests FAILED (cargo test exited with ${status})"
    exit "$status"
fi
