#!/usr/bin/env bash
#
# The services of the previous release, for the rolling-upgrade test
# (tests/tests/e2e/upgrades.rs): the commit named in PREVIOUS_RELEASE is checked out into a
# scratch worktree (target/previous-release/src, removed afterwards, also on failure) and
# built there into THIS repository's target directory, so that the dependencies compiled
# for the current tree are reused. The three services are copied to
# target/previous-release/bin/, with a stamp (target/previous-release/commit) naming the
# commit they were built from; when the stamp names the commit of PREVIOUS_RELEASE and the
# binaries are there, nothing is done.
#
#     ./scripts/build-previous-release.sh
#
# The old tree is built with its own .sqlx/ (SQLX_OFFLINE), so it needs no database.
#
# How it shares target/ without harm:
# - Its workspace crates must not land on the current tree's files. Cargo names a
#   workspace crate's artefacts by its path relative to the workspace root, which is the
#   same in both trees, so with the same compiler settings the old build would overwrite
#   the current build's files (target/debug/deps/order_svc-<hash>, its fingerprint) with
#   files that the next build of the current tree may take for fresh: it compares
#   modification times, and the old files are the newer. What tells them apart is
#   RUSTC_WORKSPACE_WRAPPER, which cargo mixes into the names of workspace crates only:
#   the old tree is built through a wrapper of its own (target/previous-release/rustc, which
#   runs rustc as is), neither clippy's driver (scripts/test.sh's builds) nor none (a plain
#   cargo build).
# - The dependencies must be the current tree's. Cargo compiles a dependency once per set
#   of features, and unifies features over the packages and targets a build selects; the
#   current tree is built with --workspace --all-targets, so the old one selects the same
#   packages (--workspace) and, with --examples (there are none), dev-dependencies as
#   --all-targets does, but builds only binaries (--bins): its services, sagactl and
#   saga-bench, and no test. A narrower selection (-p order-svc -p inventory-svc
#   -p payment-svc) compiled some 60 dependencies again with other features.
# - Cargo copies ("uplifts") each binary it builds to target/debug/<name>, so the old
#   build replaces target/debug/order-svc and the other binaries, where the tests look
#   for the current ones. The current ones are saved before it and put back afterwards
#   (also on failure); where there were none, the old ones are removed. Run it before the
#   current tree's build all the same (scripts/test.sh does): that build links
#   target/debug/ again, even when it has nothing to compile.
#
# Variables:
#   CARGO_TARGET_DIR    the target directory (default: target/ of this repository)
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=scripts/lib.sh
source scripts/lib.sh

ROOT="$PWD"
TARGET="$(realpath -m "${CARGO_TARGET_DIR:-$ROOT/target}")"
OUT="$TARGET/previous-release"
BIN="$OUT/bin"
STAMP="$OUT/commit"
SRC="$OUT/src"
SAVED="$OUT/current"
SERVICES=(order-svc inventory-svc payment-svc)

# The commit: the one line of PREVIOUS_RELEASE that is neither a comment nor blank.
mapfile -t lines < <(grep -vE '^[[:space:]]*(#|$)' PREVIOUS_RELEASE | tr -d '[:space:]')
((${#lines[@]} == 1)) ||
    die "PREVIOUS_RELEASE must hold exactly one line that is not a comment (found ${#lines[@]})"
commit="${lines[0]}"
[[ "$commit" =~ ^[0-9a-f]{40}$ ]] ||
    die "PREVIOUS_RELEASE names ${commit@Q}, not a full 40-hex commit hash"

up_to_date() {
    local b
    [[ -f "$STAMP" && "$(<"$STAMP")" == "$commit" ]] || return 1
    for b in "${SERVICES[@]}"; do [[ -x "$BIN/$b" ]] || return 1; done
}
if up_to_date; then
    log "the previous release's services (${commit}) are built already: ${BIN}"
    exit 0
fi

# A shallow or partial clone may lack it: fetch it from origin once before giving up (the
# compatibility checks read the same commit, and run after this script in scripts/test.sh).
if ! git cat-file -e "${commit}^{commit}" 2>/dev/null && git remote get-url origin >/dev/null 2>&1; then
    log "the previous release ${commit} is not in this clone; fetching it from origin"
    if [[ "$(git rev-parse --is-shallow-repository)" == true ]]; then
        git fetch --quiet --unshallow origin || true
    fi
    git fetch --quiet origin "$commit" || true
fi
git cat-file -e "${commit}^{commit}" 2>/dev/null ||
    die "the previous release ${commit} (PREVIOUS_RELEASE) is not in this clone; fetch it:
    git fetch origin ${commit}
(a shallow clone may need: git fetch --unshallow)"

# A worktree left by a run that was killed (a trap does not run on SIGKILL).
remove_worktree() {
    git worktree remove --force "$SRC" >/dev/null 2>&1 || rm -rf "$SRC"
    git worktree prune
}
# The binaries cargo put in target/debug/ (executables, directly in it).
uplifted() { find "$TARGET/debug" -maxdepth 1 -type f -perm -u+x -printf '%f\n' 2>/dev/null; }
# Puts back the current tree's binaries that the old build replaced, and removes the old
# ones where there were none: the tests must never find an old binary in their place.
restore_current() {
    local b saved
    while IFS= read -r b; do
        [[ -e "$SAVED/$b" ]] || rm -f "$TARGET/debug/$b"
    done < <(uplifted)
    for saved in "$SAVED"/*; do
        [[ -e "$saved" ]] || continue
        b="${saved##*/}"
        # Still the same file where the old build built no binary of that name.
        [[ "$saved" -ef "$TARGET/debug/$b" ]] || mv -f "$saved" "$TARGET/debug/$b"
    done
    rm -rf "$SAVED"
}
cleanup() {
    restore_current
    remove_worktree
}
[[ ! -e "$SRC" ]] || remove_worktree
mkdir -p "$OUT"
# Saved first, so that a failure from here on restores them.
rm -rf "$SAVED"
mkdir -p "$SAVED"
trap cleanup EXIT
while IFS= read -r b; do
    # A second link to the file, not a copy: cargo replaces the name, not the file.
    ln -f "$TARGET/debug/$b" "$SAVED/$b" 2>/dev/null || cp -p "$TARGET/debug/$b" "$SAVED/$b"
done < <(uplifted)

log "checking out the previous release ${commit} into ${SRC}"
git worktree add --quiet --detach "$SRC" "$commit"

# The wrapper that gives the old tree's workspace crates names of their own (see above).
WRAPPER="$OUT/rustc"
printf '#!/bin/sh\n# Runs rustc as is; see scripts/build-previous-release.sh.\nexec "$@"\n' >"$WRAPPER"
chmod +x "$WRAPPER"

log "building the previous release (cargo build --workspace --bins --examples, target ${TARGET})"
(
    cd "$SRC"
    unset CLIPPY_ARGS DATABASE_URL
    export RUSTC_WORKSPACE_WRAPPER="$WRAPPER" SQLX_OFFLINE=true CARGO_TARGET_DIR="$TARGET"
    cargo build --workspace --bins --examples
)

rm -f "$STAMP"
mkdir -p "$BIN"
for b in "${SERVICES[@]}"; do
    cp -f "$TARGET/debug/$b" "$BIN/$b"
done
printf '%s\n' "$commit" >"$STAMP"
log "the previous release's services (${commit}) are in ${BIN}"
