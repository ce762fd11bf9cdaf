#!/usr/bin/env bash
#
# The checks that need no servers (the property tests of the three state machines, the
# generated docs and schemas, the docs' lists of events, the module graph), built the way
# scripts/test.sh builds them, so that neither compiles the workspace again for the other:
#
#   1. cargo build -p sagactl           the binary the checks run (`sagactl publish --help`,
#                                       its completions), rebuilt after a catalog change
#   2. cargo test -p saga-tests --test checks [ARGS...]
#
# With UPDATE_DOCS=1 the checks rewrite the generated docs instead of failing on them:
#     UPDATE_DOCS=1 ./scripts/checks.sh
# Extra arguments go to `cargo test`, e.g. a module's checks only:
#     ./scripts/checks.sh routing_docs
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=scripts/lib.sh
source scripts/lib.sh

use_clippy_driver
cargo build -p sagactl
cargo test -p saga-tests --test checks "$@"
