#!/usr/bin/env bash
# Makes a base image for deploy/Dockerfile without pulling one from a registry: a Debian root filesystem made
# by mmdebstrap from this machine's apt sources, plus this machine's Node.js (20 or newer) and npm, laid out as
# the official Node image has them (/usr/local/bin/node, /usr/local/lib/node_modules/npm).
#
#   scripts/offline-base.sh OUT.tar                    # then: podman import --change 'ENV PATH=...' OUT.tar NAME
#   NODE=/opt/node/bin/node SUITE=bookworm scripts/offline-base.sh OUT.tar
#
# Settings (environment): NODE (default: `command -v node`), NPM_DIR (default: the npm package beside NODE),
# SUITE (default: bookworm), SOURCES (an apt sources file for mmdebstrap; default: this machine's).
# Runs as root (mmdebstrap --mode=root). Never reads stdin.
set -euo pipefail

out=${1:?usage: scripts/offline-base.sh OUT.tar}
node_bin=$(readlink -f "${NODE:-$(command -v node)}")
version=$("$node_bin" -p 'process.versions.node')
if [[ ${version%%.*} -lt 20 ]]; then
  echo "offline-base: $node_bin is Node.js $version; Shoal needs 20 or newer" >&2
  exit 1
fi
npm_dir=${NPM_DIR:-}
if [[ -z $npm_dir ]]; then
  for d in "$(dirname "$node_bin")/../lib/node_modules/npm" /usr/lib/node_modules/npm /usr/local/lib/node_modules/npm; do
    if [[ -f $d/package.json ]]; then npm_dir=$(readlink -f "$d"); break; fi
  done
fi
[[ -n $npm_dir && -f $npm_dir/package.json ]] || { echo "offline-base: npm not found beside $node_bin; set NPM_DIR" >&2; exit 1; }
suite=${SUITE:-bookworm}
sources=${SOURCES:-}
if [[ -z $sources ]]; then
  for f in /etc/apt/sources.list.d/debian.sources /etc/apt/sources.list; do
    if [[ -s $f ]]; then sources=$f; break; fi
  done
fi
[[ -n $sources ]] || { echo "offline-base: no apt sources found; set SOURCES to a sources.list or .sources file" >&2; exit 1; }
command -v mmdebstrap >/dev/null || { echo "offline-base: mmdebstrap is missing (apt-get install mmdebstrap)" >&2; exit 1; }

# Node's official Linux binary needs libc, libstdc++ and libgcc; TLS to registries needs the CA roots.
mmdebstrap --quiet --mode=root --variant=essential --include=libstdc++6,ca-certificates \
  --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/locale/*' \
  --dpkgopt='path-exclude=/usr/share/info/*' --dpkgopt='path-exclude=/usr/share/doc/*' \
  --dpkgopt='path-include=/usr/share/doc/*/copyright' \
  --customize-hook='mkdir -p "$1/usr/local/bin" "$1/usr/local/lib/node_modules"' \
  --customize-hook="copy-in $node_bin /usr/local/bin" \
  --customize-hook="copy-in $npm_dir /usr/local/lib/node_modules" \
  --customize-hook='ln -sf ../lib/node_modules/npm/bin/npm-cli.js "$1/usr/local/bin/npm"' \
  --customize-hook='ln -sf ../lib/node_modules/npm/bin/npx-cli.js "$1/usr/local/bin/npx"' \
  --customize-hook='chroot "$1" /usr/local/bin/node --version' \
  --customize-hook='rm -rf "$1/var/cache/apt" "$1/var/lib/apt/lists"; mkdir -p "$1/var/cache/apt" "$1/var/lib/apt/lists"' \
  "$suite" "$out" "$sources" </dev/null
echo "offline-base: $out (Debian $suite, Node.js $version, npm $("$node_bin" -p "require('$npm_dir/package.json').version"))" >&2
