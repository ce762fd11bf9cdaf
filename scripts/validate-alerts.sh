#!/usr/bin/env bash
#
# Checks the Prometheus alerting rules without a Prometheus server:
#
#   1. promtool check rules  deploy/prometheus/alerts.yml       (syntax, PromQL, templates)
#   2. promtool test rules   deploy/prometheus/alerts.test.yml  (each alert fires when it
#                            should and stays silent when it should not)
#   3. promtool check config deploy/prometheus/prometheus.yml   (the configuration loads
#                            the rules file)
#
# promtool comes with Debian's `prometheus` package. When it is missing and this runs as
# root on Debian/Ubuntu, the package is installed (without recommends) and the server it
# ships is kept from running: service starts are refused during the install, and a
# prometheus process that appears all the same is stopped. Otherwise the script says
# what to install.
#
# Variables:
#   SAGA_PROMTOOL   the promtool to use (default: `promtool` from PATH)
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=scripts/lib.sh
source scripts/lib.sh

RULES=deploy/prometheus/alerts.yml
TESTS=deploy/prometheus/alerts.test.yml
CONFIG=deploy/prometheus/prometheus.yml
PROMTOOL="${SAGA_PROMTOOL:-promtool}"
POLICY=/usr/sbin/policy-rc.d
OWN_POLICY=0

step() { printf '==> [alerts] %s\n' "$*" >&2; }

# The PIDs of running prometheus servers, one per line (none: empty).
_prometheus_pids() { pgrep -x prometheus 2>/dev/null || true; }

# Installs Debian's prometheus package for its promtool, leaving no server running.
install_promtool() {
    local before after pid
    before="$(_prometheus_pids)"
    # invoke-rc.d and deb-systemd-invoke ask policy-rc.d before starting a service;
    # 101 means "not now". One already there (containers have one) is left alone.
    if [[ ! -e "$POLICY" ]]; then
        OWN_POLICY=1
        trap 'rm -f "$POLICY"' EXIT
        printf '#!/bin/sh\n# Written by scripts/validate-alerts.sh for the time of one install.\nexit 101\n' >"$POLICY"
        chmod 755 "$POLICY"
    fi
    log "installing Debian's prometheus package for promtool (once)"
    local rc=0
    {
        apt-get update -qq &&
            DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null
    } || rc=$?
    if ((OWN_POLICY)); then
        rm -f "$POLICY"
        trap - EXIT
    fi
    ((rc == 0)) || die "apt-get could not install prometheus (exit ${rc})"

    # Under systemd the unit is enabled by the package: keep it from starting at boot
    # and stop it if it started anyway. Without systemd there is no unit to speak of.
    if [[ -d /run/systemd/system ]] && command -v systemctl >/dev/null 2>&1; then
        systemctl disable --now prometheus.service >/dev/null 2>&1 ||
            warn "could not disable prometheus.service; stop it with: systemctl disable --now prometheus"
    fi
    # A server started by the install (not one that was running before) is stopped.
    after="$(_prometheus_pids)"
    for pid in $after; do
        if ! grep -qxF "$pid" <<<"$before"; then
            log "stopping the prometheus server the package started (pid ${pid})"
            kill "$pid" 2>/dev/null || true
        fi
    done
}

if ! command -v "$PROMTOOL" >/dev/null 2>&1; then
    if [[ -n "${SAGA_PROMTOOL:-}" ]]; then
        die "SAGA_PROMTOOL=${SAGA_PROMTOOL} is not an executable"
    elif is_root && command -v apt-get >/dev/null 2>&1; then
        install_promtool
        command -v promtool >/dev/null 2>&1 || die "the prometheus package is installed but promtool is not on PATH"
    else
        die "promtool is missing; it comes with Debian's prometheus package.
    Install it, e.g.:  sudo apt-get install -y --no-install-recommends prometheus
    (then, if your system started it:  sudo systemctl disable --now prometheus)
    or run this script as root and it will do both; or put promtool from a Prometheus
    release on PATH (or point SAGA_PROMTOOL at it), then run it again."
    fi
fi
log "$("$PROMTOOL" --version 2>&1 | head -n 1)"

step "promtool check rules ${RULES}"
"$PROMTOOL" check rules "$RULES" || die "${RULES} is not valid"

step "promtool test rules ${TESTS}"
"$PROMTOOL" test rules "$TESTS" || die "an alert test failed (see above)"

step "promtool check config ${CONFIG}"
"$PROMTOOL" check config "$CONFIG" || die "${CONFIG} does not load (or does not load ${RULES})"

log "alerting rules valid and tested: ${RULES}"
