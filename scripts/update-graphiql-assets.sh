#!/usr/bin/env bash
# Refresh the vendored GraphiQL build in crates/api/assets/.
#
# authd serves GraphiQL from its own origin (docs/api.md: "no third-party script on
# the auth origin"), so the browser bundle is copied into the repository
# instead of being loaded from a CDN. This script is the only way those files
# should change: it fetches exact versions with `npm pack` (which checks the
# registry's integrity hash), copies the prebuilt UMD files verbatim, copies
# their licences, and writes SHA256SUMS so a reviewer can see exactly what
# changed.
#
# Usage: scripts/update-graphiql-assets.sh          # fetch and copy
#        scripts/update-graphiql-assets.sh --check  # only verify the committed files
#
# To move to a new version, edit the pins below, run the script, look at the
# page (tests/scripts/graphiql_screenshot.py) and update
# crates/api/assets/README.md.
set -euo pipefail

# GraphiQL 3.x is the last line that ships a ready-made UMD bundle
# (graphiql.min.js expects window.React and window.ReactDOM). React 18 is the
# newest major that still publishes UMD builds.
GRAPHIQL_VERSION=3.8.3
REACT_VERSION=18.3.1

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
ASSETS="$ROOT/crates/api/assets"

# The files we vendor, as "package-dir/path-in-package asset-name".
VENDORED=(
  "graphiql/graphiql.min.js graphiql.min.js"
  "graphiql/graphiql.min.css graphiql.min.css"
  "react/umd/react.production.min.js react.production.min.js"
  "react-dom/umd/react-dom.production.min.js react-dom.production.min.js"
)

step() { printf '==> %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# No asset may make the browser load anything from another origin: the page is
# served with `script-src 'self'` and `connect-src 'self'`, and a CDN reference
# would either break under that policy or (if the policy were loosened) put
# someone else's code on the auth origin. Only our own files are checked for
# tags; the vendored bundles are checked for loader calls, since they contain
# plenty of harmless URLs in comments and error messages.
check_assets() {
  local bad=0 f
  for f in index.html init.js init.css; do
    [[ -f "$ASSETS/$f" ]] || die "missing $ASSETS/$f"
  done
  # <script src=...>, <link href=...>, url(...) or import pointing off-origin.
  if grep -nE '(src|href)[[:space:]]*=[[:space:]]*["'"'"']?([a-z]+:)?//' "$ASSETS/index.html"; then
    echo "index.html references another origin" >&2
    bad=1
  fi
  if grep -nE '(https?:)?//[a-z0-9.-]+\.[a-z]{2,}' "$ASSETS/init.js" "$ASSETS/init.css" | grep -vE '^\S+:[0-9]+:\s*(//|\*|/\*)'; then
    echo "init.js/init.css reference another origin outside a comment" >&2
    bad=1
  fi
  if grep -nE '<script>|<script[^>]*>[^<]+</script>|[[:space:]]on[a-z]+[[:space:]]*=|javascript:' "$ASSETS/index.html"; then
    echo "index.html has inline script or an inline event handler (CSP forbids them)" >&2
    bad=1
  fi
  if grep -oE '(@import|url\()[[:space:]]*["'"'"']?(https?:)?//[^)"'"'"' ]*' "$ASSETS/graphiql.min.css" "$ASSETS/init.css"; then
    echo "a stylesheet loads a stylesheet, font or image from another origin" >&2
    bad=1
  fi
  if [[ -f "$ASSETS/SHA256SUMS" ]]; then
    (cd "$ASSETS" && sha256sum --quiet -c SHA256SUMS) || { echo "SHA256SUMS does not match" >&2; bad=1; }
  fi
  [[ $bad -eq 0 ]] || die "asset check failed"
  step "assets reference no other origin; checksums match"
}

if [[ "${1:-}" == "--check" ]]; then
  check_assets
  exit 0
fi

command -v npm >/dev/null || die "npm is required (Debian: apt-get install npm, or Node.js 20+)"

TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT

step "fetching graphiql@$GRAPHIQL_VERSION react@$REACT_VERSION react-dom@$REACT_VERSION"
(cd "$TMP" && npm pack --silent \
  "graphiql@$GRAPHIQL_VERSION" "react@$REACT_VERSION" "react-dom@$REACT_VERSION" >/dev/null)
for pkg in graphiql react react-dom; do
  mkdir -p "$TMP/$pkg"
  tar -xzf "$TMP/$pkg"-[0-9]*.tgz -C "$TMP/$pkg" --strip-components=1
done

step "copying into ${ASSETS#"$ROOT"/}"
mkdir -p "$ASSETS/licenses"
for entry in "${VENDORED[@]}"; do
  read -r from to <<<"$entry"
  install -m 0644 "$TMP/$from" "$ASSETS/$to"
done
for pkg in graphiql react react-dom; do
  install -m 0644 "$TMP/$pkg/LICENSE" "$ASSETS/licenses/$pkg.LICENSE"
done

(
  cd "$ASSETS"
  sha256sum graphiql.min.js graphiql.min.css react.production.min.js \
    react-dom.production.min.js licenses/*.LICENSE >SHA256SUMS
)

check_assets
step "done; now look at the page (tests/scripts/graphiql_screenshot.py) and update crates/api/assets/README.md"
