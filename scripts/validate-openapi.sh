#!/usr/bin/env bash
#
# Checks the services' OpenAPI 3.1 documents in docs/openapi/ with a real validator:
# openapi-spec-validator (PyPI, pinned below), installed once into a virtual environment
# outside the repository ($SAGA_OPENAPI_VENV, default ~/.cache/order-saga/openapi-venv).
# Without python3 the check is skipped with a message.
#
# That the files match the code is checked by `cargo test -p saga-tests --test checks openapi_docs`;
# regenerate them with `UPDATE_DOCS=1 cargo test -p saga-tests --test checks openapi_docs`.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=scripts/lib.sh
source scripts/lib.sh

VALIDATOR="openapi-spec-validator==0.9.0"
VENV="${SAGA_OPENAPI_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/order-saga/openapi-venv}"

shopt -s nullglob
docs=(docs/openapi/*.json)
((${#docs[@]} > 0)) ||
    die "no docs/openapi/*.json; generate them with UPDATE_DOCS=1 cargo test -p saga-tests --test checks openapi_docs"

if ! command -v python3 >/dev/null 2>&1; then
    warn "python3 not installed; docs/openapi/ was not validated"
    exit 0
fi
if [[ "$(cat "${VENV}/.saga-requirements" 2>/dev/null)" != "$VALIDATOR" ]]; then
    log "installing ${VALIDATOR} into ${VENV} (once)"
    make_venv "$VENV" || die "cannot create a Python virtual environment in ${VENV}"
    "${VENV}/bin/python" -m pip install -q --disable-pip-version-check --no-input "$VALIDATOR"
    printf '%s\n' "$VALIDATOR" >"${VENV}/.saga-requirements"
fi
"${VENV}/bin/openapi-spec-validator" "${docs[@]}"
log "docs/openapi/*.json are valid OpenAPI documents"
