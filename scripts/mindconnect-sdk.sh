#!/usr/bin/env bash
# Installs the official MindConnect agent SDK (@mindconnect/mindconnect-nodejs,
# the version pinned in internal/agent/testdata/mindconnect/package-lock.json)
# outside the repository, and prints the directory whose node_modules holds
# it. internal/agent's interop test runs it as the real peer; scripts/deps.sh
# calls this once. Nothing is installed when the lock has not changed.
set -euo pipefail
src="$(cd "$(dirname "$0")/../internal/agent/testdata/mindconnect" && pwd)"
dir="${FIELDTRUST_MINDCONNECT_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/fieldtrust/mindconnect-sdk}"
mkdir -p "$dir"
if ! cmp -s "$src/package-lock.json" "$dir/package-lock.json" || [ ! -d "$dir/node_modules/@mindconnect/mindconnect-nodejs" ]; then
  command -v npm >/dev/null || { echo "mindconnect-sdk: npm is missing (scripts/deps.sh installs nodejs and npm)" >&2; exit 1; }
  cp "$src/package.json" "$src/package-lock.json" "$dir/"
  echo "mindconnect-sdk: installing the MindConnect SDK into $dir" >&2
  (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error >&2)
fi
echo "$dir"
