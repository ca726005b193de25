#!/usr/bin/env bash
# Installs the system tools the integration and e2e tests drive (npm `pretest`): kubectl renders deploy/'s
# kustomizations, mmdebstrap makes the offline base of the image test, chromium renders the node's web page.
# Fast path: every command present -> exit 0. Otherwise, as root on Debian/Ubuntu: apt-get
# install them; not root: say what is missing and how to install it, exit 1.
# Never reads stdin; never prints repository hosts (apt's output goes to a log, URLs masked).
set -euo pipefail

# command -> Debian package that provides it
declare -A PKG=(
  [skopeo]=skopeo
  [umoci]=umoci
  [podman]=podman
  [docker-registry]=docker-registry
  [containerd]=containerd
  [ctr]=containerd
  [ip]=iproute2
  [curl]=curl
  [htpasswd]=apache2-utils
  [openssl]=openssl
  [kubectl]=kubernetes-client
  [setpriv]=util-linux
  [mmdebstrap]=mmdebstrap
  [chromium]=chromium
)
# Installed alongside: CA roots for TLS, and the OCI runtime podman depends on (crun),
# named so a minimal image with recommends off still gets a working rootful podman (vfs).
EXTRA_PKGS=(ca-certificates crun conmon)

have() {
  command -v "$1" >/dev/null 2>&1 && return 0
  # sbin may be off a non-root PATH (ip lives in /usr/sbin or /sbin)
  local d
  for d in /usr/local/sbin /usr/sbin /sbin /usr/bin /bin; do
    [[ -x "$d/$1" ]] && return 0
  done
  return 1
}

missing_cmds=()
for cmd in skopeo umoci podman docker-registry containerd ctr ip curl htpasswd openssl kubectl setpriv mmdebstrap chromium; do
  have "$cmd" || missing_cmds+=("$cmd")
done
if [[ ${#missing_cmds[@]} -eq 0 ]]; then
  exit 0
fi

declare -A seen=()
pkgs=()
for cmd in "${missing_cmds[@]}"; do
  p=${PKG[$cmd]}
  if [[ -z "${seen[$p]:-}" ]]; then
    seen[$p]=1
    pkgs+=("$p")
  fi
done

echo "test-deps: missing commands: ${missing_cmds[*]}" >&2

if [[ "$(id -u)" -ne 0 ]]; then
  echo "test-deps: not root, so not installing. On Debian/Ubuntu run:" >&2
  echo "  sudo apt-get update && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends ${pkgs[*]} ${EXTRA_PKGS[*]}" >&2
  exit 1
fi

if ! command -v apt-get >/dev/null 2>&1; then
  echo "test-deps: apt-get not found; install these packages with your system's package manager: ${pkgs[*]}" >&2
  exit 1
fi

log=$(mktemp -t shoal-test-deps.XXXXXX.log)
mask_urls() {
  sed -E 's#[A-Za-z][A-Za-z0-9+.-]*://[^ ]*#<url>#g; s#\b[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b#<host>#g'
}
fail() {
  echo "test-deps: $1 failed; last lines of $log (URLs masked):" >&2
  tail -n 25 "$log" | mask_urls >&2
  exit 1
}

export DEBIAN_FRONTEND=noninteractive
apt_opts=(-q -y -o Dpkg::Use-Pty=0 -o DPkg::Lock::Timeout=300)

echo "test-deps: installing ${pkgs[*]} ${EXTRA_PKGS[*]} (log: $log)" >&2
apt-get "${apt_opts[@]}" update </dev/null >>"$log" 2>&1 || fail "apt-get update"
apt-get "${apt_opts[@]}" install --no-install-recommends "${pkgs[@]}" "${EXTRA_PKGS[@]}" </dev/null >>"$log" 2>&1 \
  || fail "apt-get install"

still=()
for cmd in "${missing_cmds[@]}"; do
  have "$cmd" || still+=("$cmd")
done
if [[ ${#still[@]} -ne 0 ]]; then
  echo "test-deps: still missing after install: ${still[*]}" >&2
  exit 1
fi
rm -f "$log"
echo "test-deps: installed ${pkgs[*]}" >&2
