#!/usr/bin/env bash
#
# Checks the generated event contract in docs/asyncapi/ with real tools, when they are
# installed (each check is skipped with a message otherwise):
#
#   - docs/asyncapi/asyncapi.json is parsed and validated by the AsyncAPI parser
#     (@asyncapi/parser, installed with npm into a cache directory outside the repository,
#     ASYNCAPI_PARSER_DIR, default ~/.cache/saga-asyncapi-parser); errors fail the script,
#     warnings and hints are printed;
#   - every docs/asyncapi/schemas/*.json is checked against its JSON Schema meta-schema with
#     check-jsonschema, if it is on PATH (`pipx install check-jsonschema`).
#
# That the files match the code is checked by `cargo test -p saga-tests --test checks contract_docs`;
# regenerate them with `UPDATE_DOCS=1 cargo test -p saga-tests --test checks contract_docs`.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=scripts/lib.sh
source scripts/lib.sh

doc=docs/asyncapi/asyncapi.json
[[ -f "$doc" ]] || die "${doc} not found; generate it with UPDATE_DOCS=1 cargo test -p saga-tests --test checks contract_docs"

if command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1; then
    dir="${ASYNCAPI_PARSER_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/saga-asyncapi-parser}"
    if [[ ! -d "${dir}/node_modules/@asyncapi/parser" ]]; then
        log "installing @asyncapi/parser into ${dir}"
        mkdir -p "$dir"
        [[ -f "${dir}/package.json" ]] || printf '{"private": true}\n' >"${dir}/package.json"
        npm install --prefix "$dir" --no-audit --no-fund --silent '@asyncapi/parser@3' >&2
    fi
    cat >"${dir}/check.mjs" <<'JS'
import { readFileSync } from 'node:fs';
import { Parser, DiagnosticSeverity } from '@asyncapi/parser';

const file = process.argv[2];
const { document, diagnostics } = await new Parser().parse(readFileSync(file, 'utf8'), { source: file });
const severity = ['error', 'warning', 'info', 'hint'];
for (const d of diagnostics) {
  console.error(`${file}: ${severity[d.severity]} ${d.code} at /${d.path.join('/')}: ${d.message}`);
}
const errors = diagnostics.filter((d) => d.severity === DiagnosticSeverity.Error).length;
if (!document || errors > 0) {
  console.error(`${file}: ${errors} error(s)`);
  process.exit(1);
}
console.error(`${file}: valid AsyncAPI ${document.version()}: ${document.channels().length} channels, ` +
  `${document.operations().length} operations, ${document.components().messages().length} messages`);
JS
    node "${dir}/check.mjs" "$doc"
else
    warn "node/npm not installed; ${doc} was not checked by the AsyncAPI parser"
fi

if command -v check-jsonschema >/dev/null 2>&1; then
    check-jsonschema --check-metaschema docs/asyncapi/schemas/*.json
    log "docs/asyncapi/schemas/*.json are valid JSON Schemas"
else
    warn "check-jsonschema not installed; docs/asyncapi/schemas/ were not checked against the meta-schema"
fi
