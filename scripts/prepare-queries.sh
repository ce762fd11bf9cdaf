#!/usr/bin/env bash
#
# The offline data of the checked queries: what the query macros (sqlx::query!,
# query_as!, query_scalar!) learn of each statement from PostgreSQL (its parameters, its
# columns, their types and whether they can be NULL), one .sqlx/query-<hash>.json per
# statement. Every other build reads it (SQLX_OFFLINE in .cargo/config.toml) and needs no
# database.
#
#     ./scripts/prepare-queries.sh          rewrites .sqlx/: run it after changing a
#                                           checked query or a migration, commit .sqlx/
#     ./scripts/prepare-queries.sh --check  fails, naming the statements, when .sqlx/ is
#                                           not what the code and the migrations give
#                                           now (scripts/test.sh runs it)
#
# Each crate with checked queries names in its sqlx.toml the variable its macros take
# their database from. For each such crate this creates a fresh scratch database (crates
# with the same migrations share one) and migrates it as the services migrate theirs
# (messaging::migrator_with): the messaging migrations, then the crate's own migrations/
# if it has any, in version order, each file in one transaction. Then
# `cargo build --workspace --all-targets` compiles those crates again, and what depends on
# them, with the macros online against these databases, writing what they describe to a
# temporary directory (SQLX_OFFLINE_DIR) that is compared with .sqlx/ or replaces it. A
# query that no longer fits the migrated tables (a renamed column, say) fails that build,
# at the query. The scratch databases are dropped at the end.
#
# That build is scripts/test.sh's own, with the same compiler (lib.sh's
# use_clippy_driver): run just before it there, it leaves the build phase nothing to
# compile, and it never compiles a dependency (a narrower selection of packages or targets
# would unify the dependencies' features differently, and compile some of them, and every
# workspace crate, once more).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=scripts/lib.sh
source scripts/lib.sh

case "${1:-}" in
    "") check=false ;;
    --check) check=true ;;
    *) die "usage: $0 [--check]" ;;
esac
REGENERATE="./scripts/prepare-queries.sh"
COMMITTED=.sqlx

# The crates with checked queries, and the variable each takes its database from.
crates=()
vars=()
for toml in */sqlx.toml; do
    crates+=("${toml%/sqlx.toml}")
    vars+=("$(sed -n 's/^database-url-var *= *"\([A-Za-z0-9_]*\)".*/\1/p' "$toml")")
    [[ -n "${vars[-1]}" ]] || die "${toml} names no database-url-var"
done
# A checked query in a crate without one would be compiled against no database here.
while IFS= read -r file; do
    [[ -f "${file%%/*}/sqlx.toml" ]] ||
        die "${file} has a checked query, but ${file%%/*}/ has no sqlx.toml naming its database"
done < <(grep -rlE --include='*.rs' '\bquery(_as|_scalar)?(_unchecked)?!\(' -- */src || true)

# The migration files of a crate's database in the order the services' migrator runs
# them: by version, the messaging ones (1 to 999) before the service's own (from 1000).
migrations_of() {
    local crate="$1"
    {
        printf '%s\n' messaging/migrations/*.sql
        if [[ "$crate" != messaging && -d "${crate}/migrations" ]]; then
            printf '%s\n' "$crate"/migrations/*.sql
        fi
    } | grep -v '\.down\.sql$' |
        awk -F/ '{ v = $NF; sub(/_.*/, "", v); print v + 0, $0 }' | sort -n -k1,1 | cut -d' ' -f2-
}

scratch=()
out=""
cleanup() {
    local db
    for db in "${scratch[@]}"; do
        _pg_psql -c "DROP DATABASE IF EXISTS \"${db}\" WITH (FORCE)" >/dev/null ||
            warn "could not drop the scratch database ${db}"
    done
    [[ -z "$out" ]] || rm -rf "$out"
}
trap cleanup EXIT

use_clippy_driver
ensure_postgres
declare -A migrated=() # the scratch database of each list of migration files
for i in "${!crates[@]}"; do
    files="$(migrations_of "${crates[i]}")"
    if [[ -z "${migrated[$files]:-}" ]]; then
        db="sqlx_prepare_$$_${#scratch[@]}"
        _pg_psql -c "CREATE DATABASE \"${db}\"" >/dev/null
        scratch+=("$db")
        while IFS= read -r file; do
            PGOPTIONS="-c client_min_messages=warning" \
                _pg_psql_on "$db" --single-transaction -f "$file" >/dev/null ||
                die "migration ${file} failed on a fresh database"
        done <<<"$files"
        migrated[$files]="$db"
    fi
    export "${vars[i]}=$(pg_url "${migrated[$files]}")"
done

out="$(mktemp -d)"
# The macros run when their crate compiles: make these crates (and so what depends on
# them) compile again.
for crate in "${crates[@]}"; do
    for root in "$crate"/src/lib.rs "$crate"/src/main.rs; do
        [[ ! -f "$root" ]] || touch "$root"
    done
done
log "compiling the checked queries of ${crates[*]} against fresh migrated databases"
if ! SQLX_OFFLINE=false SQLX_OFFLINE_DIR="$out" cargo build --workspace --all-targets; then
    die "the build above failed: if a checked query does not fit the migrated tables, change
    the query or the migration; then run ${REGENERATE} and commit ${COMMITTED}/"
fi

# The statement a data file describes, on one line, after (with a second argument) where
# the code has it: the place of its first line.
statement() {
    local sql first where=""
    sql="$(sed -n 's/^  "query": "\(.*\)",$/\1/p' "$1")"
    sql="${sql//\\\"/\"}"
    if [[ -n "${2:-}" ]]; then
        first="${sql%%\\n*}"
        where="$(grep -rnF --include='*.rs' -- "$first" "${crates[@]/%//src}" | head -n 1 | cut -d: -f1,2)"
        where="${where:-(in no source file)}"$'\n        '
    fi
    printf '%s%s' "$where" "$(printf '%s' "${sql//\\n/ }" | tr -s ' ' | cut -c 1-300)"
}
names() { find "$1" -maxdepth 1 -name 'query-*.json' -printf '%f\n' 2>/dev/null | sort; }

mkdir -p "$COMMITTED"
differences=0
# Counts and reports, as $1, the statement of the data file $2/$3 (and where it is, with
# a fourth argument).
differs() {
    differences=$((differences + 1))
    printf '    %s: %s\n' "$1" "$(statement "$2/$3" "${4:-}")" >&2
}
while IFS= read -r name; do
    differs "new, not in ${COMMITTED}/" "$out" "$name" at
done < <(comm -13 <(names "$COMMITTED") <(names "$out"))
while IFS= read -r name; do
    differs "in ${COMMITTED}/, but no checked query has it now" "$COMMITTED" "$name"
done < <(comm -23 <(names "$COMMITTED") <(names "$out"))
while IFS= read -r name; do
    cmp -s "${COMMITTED}/${name}" "${out}/${name}" && continue
    differs "described differently now" "$out" "$name" at
    diff -u "${COMMITTED}/${name}" "${out}/${name}" | sed -n '3,40s/^/        /p' >&2 || true
done < <(comm -12 <(names "$COMMITTED") <(names "$out"))
total="$(names "$out" | wc -l)"

if $check; then
    ((differences == 0)) ||
        die "${COMMITTED}/ does not match the checked queries and the migrations (${differences} statements, above).
    Regenerate it with ${REGENERATE} and commit ${COMMITTED}/."
    log "${COMMITTED}/ matches the ${total} checked statements and the migrations"
else
    find "$COMMITTED" -maxdepth 1 -name 'query-*.json' -delete
    cp "$out"/query-*.json "$COMMITTED"/
    log "wrote ${total} statements to ${COMMITTED}/ (${differences} changed); commit it"
fi
