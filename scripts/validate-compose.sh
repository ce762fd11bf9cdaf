#!/usr/bin/env bash
#
# Checks compose.yaml without needing a Docker engine: with Compose (v2 plugin or
# the standalone docker-compose) when one is installed, which validates it against
# the Compose schema; otherwise by at least parsing it as YAML.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=scripts/lib.sh
source scripts/lib.sh

file=compose.yaml
[[ -f "$file" ]] || die "${file} not found"

if command -v docker >/dev/null 2>&1 && docker compose version >/dev/null 2>&1; then
    docker compose -f "$file" config -q
    log "${file} is valid (docker compose config)"
elif command -v docker-compose >/dev/null 2>&1; then
    docker-compose -f "$file" config -q
    log "${file} is valid (docker-compose config)"
elif python3 -c 'import yaml' >/dev/null 2>&1; then
    python3 - "$file" <<'PY'
import sys, yaml
doc = yaml.safe_load(open(sys.argv[1], encoding="utf-8"))
services = doc.get("services") if isinstance(doc, dict) else None
if not isinstance(services, dict) or not services:
    sys.exit(f"{sys.argv[1]}: no 'services' mapping")
PY
    log "${file} parses as YAML (install Docker Compose for a full schema check)"
else
    warn "neither Docker Compose nor python3-yaml is installed; ${file} was not checked"
fi
