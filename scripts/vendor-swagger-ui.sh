#!/usr/bin/env bash
#
# Vendors Swagger UI (the npm package swagger-ui-dist) into platform/assets/swagger-ui/:
# its bundle, its stylesheet and its licence. The services serve these files from inside
# their binaries (include_bytes!, see platform/src/openapi.rs), so the API reference page
# needs no CDN and the build needs no network. The files are committed; run this script
# only to move to another version, then rebuild and commit the result.
#
#   ./scripts/vendor-swagger-ui.sh            # the pinned version below
#   SWAGGER_UI_VERSION=5.x.y ./scripts/vendor-swagger-ui.sh
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
version="${SWAGGER_UI_VERSION:-5.35.0}"
dest=platform/assets/swagger-ui
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

command -v npm >/dev/null || { echo "npm is needed to fetch swagger-ui-dist" >&2; exit 1; }
tarball="$(npm pack --silent --pack-destination "$work" "swagger-ui-dist@${version}")"
tar -xzf "${work}/${tarball}" -C "$work" \
    package/swagger-ui-bundle.js package/swagger-ui.css package/LICENSE package/package.json
mkdir -p "$dest"
for f in swagger-ui-bundle.js swagger-ui.css LICENSE; do
    cp "${work}/package/${f}" "${dest}/${f}"
done
# Source maps are not shipped: drop the comment that points browsers at them.
sed -i '/^\/\/# sourceMappingURL=/d; s#/\*\# sourceMappingURL=[^*]*\*/##' \
    "${dest}/swagger-ui-bundle.js" "${dest}/swagger-ui.css"
printf '%s\n' "$version" > "${dest}/VERSION"
echo "swagger-ui-dist ${version} vendored into ${dest}" >&2
