#!/usr/bin/env bash
#
# Validates the deployment files without a Docker engine, a broker or a cluster:
#
#   1. compose.yaml           scripts/validate-compose.sh (Docker Compose, else YAML),
#                             then the Compose specification's JSON schema
#   2. deploy/k8s             every Kubernetes object (the broker cluster in rabbitmq/
#                             and the database's namespace and Secrets in postgres/
#                             too) against the Kubernetes schemas
#                             (kubernetes-validate --strict), the KEDA objects and the
#                             CloudNativePG Cluster (postgres/cluster*.yaml) against
#                             deploy/k8s/schemas/*.json, and `kubectl kustomize` of the
#                             three kustomizations when kubectl is installed
#   3. JSON files             every deploy/**/*.json parses (dashboards, definitions,
#                             schemas)
#   4. GitHub workflows       .github/workflows/*.yml against the workflow schema
#   5. consistency            deploy/tools/check_deploy.py: users, passwords, ports,
#                             metric names, permissions and topology agree across the
#                             files and with events/src; the production layout keeps
#                             its promises (replicas, disruption budgets, spreading over
#                             nodes, pause_minority, a synchronous database standby)
#
# The Python tools (pinned below; schemathesis among them, for the end-to-end test that
# runs it against each service's OpenAPI document) are installed once into a virtual environment,
# $SAGA_VALIDATE_VENV (default ~/.cache/order-saga/validate-venv), from PyPI; later
# runs reuse it and need no network. Nothing else is downloaded: every schema ships
# inside those packages or in this repository.
#
# Variables:
#   SAGA_VALIDATE_VENV            where the tools live (see above)
#   SAGA_K8S_VERSION              Kubernetes version to validate against (1.30.0)
#   SAGA_VALIDATE_DEPLOY_SCHEMAS  `required` (default): the tools must be installable;
#                                 `skip`: offline without the tools, run only the
#                                 checks that need none (and say so)
#   SAGA_VALIDATE_VERBOSE=1       print every consistency check, not only the failures
set -euo pipefail
# No __pycache__ in the work tree.
export PYTHONDONTWRITEBYTECODE=1

cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=scripts/lib.sh
source scripts/lib.sh

# Bump together; the stamp file makes a change reinstall the environment.
REQUIREMENTS=(kubernetes-validate==1.37.0 check-jsonschema==0.39.0 PyYAML==6.0.3 schemathesis==4.32.5)
K8S_VERSION="${SAGA_K8S_VERSION:-1.30.0}"
VENV="${SAGA_VALIDATE_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/order-saga/validate-venv}"
MODE="${SAGA_VALIDATE_DEPLOY_SCHEMAS:-required}"
K8S_DIR=deploy/k8s

step() { printf '==> [deploy] %s\n' "$*" >&2; }

case "$MODE" in
required | skip) ;;
*) die "SAGA_VALIDATE_DEPLOY_SCHEMAS must be required or skip (got '${MODE}')" ;;
esac
command -v python3 >/dev/null 2>&1 || die "python3 is required to validate the deployment files"

# ---------------------------------------------------------------- the tools

_venv_ok() {
    [[ -x "${VENV}/bin/python" && -x "${VENV}/bin/kubernetes-validate" && -x "${VENV}/bin/check-jsonschema" ]] &&
        [[ "$(cat "${VENV}/.saga-requirements" 2>/dev/null)" == "${REQUIREMENTS[*]}" ]] &&
        "${VENV}/bin/python" -c 'import yaml' >/dev/null 2>&1
}

_venv_build() {
    log "installing ${REQUIREMENTS[*]} into ${VENV} (once)"
    make_venv "$VENV" || return 1
    "${VENV}/bin/python" -m pip install -q --disable-pip-version-check --no-input "${REQUIREMENTS[@]}" || return 1
    printf '%s\n' "${REQUIREMENTS[*]}" >"${VENV}/.saga-requirements"
}

# True when the tools are ready; builds the environment when needed. Two runs at once
# (test.sh in two terminals) take turns instead of installing over each other.
ensure_tools() {
    _venv_ok && return 0
    mkdir -p "$(dirname "$VENV")"
    if command -v flock >/dev/null 2>&1; then
        (
            flock -w 600 9 || exit 1
            _venv_ok || _venv_build
        ) 9>"${VENV}.lock"
    else
        _venv_build
    fi
    _venv_ok
}

TOOLS=0
if [[ "$MODE" == required ]]; then
    ensure_tools || die "could not install the validation tools into ${VENV} (PyPI unreachable?).
    Offline, run with SAGA_VALIDATE_DEPLOY_SCHEMAS=skip to do only the checks that need no tools."
    TOOLS=1
    PY="${VENV}/bin/python"
else
    warn "SAGA_VALIDATE_DEPLOY_SCHEMAS=skip: the Compose, Kubernetes, KEDA, CloudNativePG and workflow schemas are NOT checked"
    PY=python3
fi

checked=()

# -------------------------------------------------------------- 1. compose

step "compose.yaml"
./scripts/validate-compose.sh
if ((TOOLS)); then
    "${VENV}/bin/check-jsonschema" -q --builtin-schema vendor.compose-spec compose.yaml ||
        die "compose.yaml does not follow the Compose specification"
    log "compose.yaml follows the Compose specification (JSON schema)"
    checked+=("compose.yaml (Compose and its schema)")
else
    checked+=("compose.yaml (Compose or YAML only)")
fi

# ---------------------------------------------------------- 2. Kubernetes

if ((TOOLS)); then
    step "Kubernetes manifests (${K8S_DIR}, Kubernetes ${K8S_VERSION}, strict)"
    # postgres/cluster*.yaml hold the CloudNativePG Cluster (a custom resource, checked
    # against its own schema below); everything else there is a Kubernetes kind.
    mapfile -t core < <(find "$K8S_DIR" "${K8S_DIR}/rabbitmq" "${K8S_DIR}/postgres" -maxdepth 1 -name '*.yaml' \
        ! -name kustomization.yaml ! -path "${K8S_DIR}/postgres/cluster*.yaml" | sort)
    mapfile -t scaled < <(find "${K8S_DIR}/keda" -name 'scaledobject-*.yaml' | sort)
    mapfile -t auths < <(find "${K8S_DIR}/keda" -name 'triggerauthentication*.yaml' | sort)
    mapfile -t clusters < <(find "${K8S_DIR}/postgres" -maxdepth 1 -name 'cluster*.yaml' | sort)
    ((${#core[@]} > 0 && ${#scaled[@]} > 0 && ${#auths[@]} > 0 && ${#clusters[@]} > 0)) ||
        die "missing manifests under ${K8S_DIR}"

    out="$("${VENV}/bin/kubernetes-validate" --strict --quiet -k "$K8S_VERSION" "${core[@]}" 2>&1)" || {
        printf '%s\n' "$out" >&2
        die "Kubernetes schema validation failed"
    }
    # A kind it has no schema for is only a warning there; here every object outside
    # keda/ and postgres/cluster*.yaml must be a Kubernetes kind.
    if [[ -n "$out" ]]; then
        printf '%s\n' "$out" >&2
        die "kubernetes-validate warned (an unknown kind outside ${K8S_DIR}/keda and ${K8S_DIR}/postgres/cluster*.yaml?)"
    fi
    log "${#core[@]} files valid against the Kubernetes ${K8S_VERSION} schemas"

    "${VENV}/bin/check-jsonschema" -q --check-metaschema "${K8S_DIR}"/schemas/*.json ||
        die "a schema under ${K8S_DIR}/schemas is not a valid JSON schema"
    "${VENV}/bin/check-jsonschema" -q --schemafile "${K8S_DIR}/schemas/keda-scaledobject.json" "${scaled[@]}" ||
        die "a KEDA ScaledObject is invalid"
    "${VENV}/bin/check-jsonschema" -q --schemafile "${K8S_DIR}/schemas/keda-triggerauthentication.json" "${auths[@]}" ||
        die "a KEDA TriggerAuthentication is invalid"
    log "$((${#scaled[@]} + ${#auths[@]})) KEDA objects valid against ${K8S_DIR}/schemas"
    # The Cluster is parsed and its shape checked (fields, types, synchronous replication);
    # what it must hold for the saga is check_deploy.py's part.
    "${VENV}/bin/check-jsonschema" -q --schemafile "${K8S_DIR}/schemas/cnpg-cluster.json" "${clusters[@]}" ||
        die "a CloudNativePG Cluster is invalid"
    log "${#clusters[@]} CloudNativePG Cluster(s) valid against ${K8S_DIR}/schemas/cnpg-cluster.json"
    checked+=("${#core[@]} Kubernetes files (schemas ${K8S_VERSION})"
        "$((${#scaled[@]} + ${#auths[@]})) KEDA files (${K8S_DIR}/schemas)"
        "${#clusters[@]} CloudNativePG Cluster file(s) (${K8S_DIR}/schemas)")

    if command -v kubectl >/dev/null 2>&1; then
        for dir in "$K8S_DIR" "${K8S_DIR}/rabbitmq" "${K8S_DIR}/postgres"; do
            kubectl kustomize "$dir" >/dev/null || die "kubectl kustomize ${dir} failed"
        done
        log "kubectl kustomize builds ${K8S_DIR}, ${K8S_DIR}/rabbitmq and ${K8S_DIR}/postgres"
        checked+=("kustomize build")
    else
        log "kubectl not installed: kustomize build skipped (the file list is still checked below)"
    fi
fi

# ---------------------------------------------------------------- 3. JSON

step "JSON files under deploy/"
mapfile -t json_files < <(find deploy -name '*.json' | sort)
python3 - "${json_files[@]}" <<'PY' || die "a JSON file under deploy/ does not parse"
import json, sys
bad = 0
for name in sys.argv[1:]:
    try:
        with open(name, encoding="utf-8") as f:
            json.load(f)
    except (OSError, ValueError) as e:
        print(f"{name}: {e}", file=sys.stderr)
        bad += 1
sys.exit(1 if bad else 0)
PY
log "${#json_files[@]} JSON files parse"
checked+=("${#json_files[@]} JSON files")

# -------------------------------------------------------- 4. GitHub workflows

if ((TOOLS)); then
    step "GitHub workflows"
    mapfile -t workflows < <(find .github/workflows -name '*.yml' -o -name '*.yaml' 2>/dev/null | sort)
    if ((${#workflows[@]} > 0)); then
        "${VENV}/bin/check-jsonschema" -q --builtin-schema vendor.github-workflows "${workflows[@]}" ||
            die "a GitHub workflow is invalid"
        log "${#workflows[@]} workflow(s) valid against the GitHub workflow schema"
        checked+=("${#workflows[@]} GitHub workflow(s)")
    fi
fi

# ----------------------------------------------------------- 5. consistency

step "consistency across the files and with events/src (deploy/tools/check_deploy.py)"
no_yaml=()
"$PY" -c 'import yaml' >/dev/null 2>&1 || no_yaml=(--no-yaml)
"$PY" deploy/tools/check_deploy.py "${no_yaml[@]}" >&2 || die "the deployment files disagree (see FAIL above)"
checked+=("consistency")

summary="$(printf '%s, ' "${checked[@]}")"
log "deployment files valid: ${summary%, }"
