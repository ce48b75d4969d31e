#!/usr/bin/env bash
# The cluster tier of the test command: installs what it needs from Debian's packages, builds
# (once, cached in $E2E_CACHE) Kubernetes v1.20.2 from Debian's source and the images, starts
# the one-node cluster, runs the end-to-end suite on it, and always stops the cluster.
# `--install-only` installs the packages (buildah, debootstrap, …) and stops there.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
export E2E_CACHE="${E2E_CACHE:-/var/cache/session-operator-e2e}"
export E2E_STATE="${E2E_STATE:-/run/session-operator-e2e}"
as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo -E "$@"; fi; }

# Debian's source packages (for `apt-get source kubernetes`). The entry names the same keyring
# as the machine's own Debian entry: apt refuses two entries for one archive that disagree on
# Signed-By.
add_source_packages() {
  grep -rqs '^deb-src .* bookworm main\|^Types:.*deb-src' /etc/apt/sources.list /etc/apt/sources.list.d/ && return 0
  local keyring=/usr/share/keyrings/debian-archive-keyring.gpg
  local options=""
  if grep -rqs "^Signed-By: $keyring" /etc/apt/sources.list.d/ || grep -qs "signed-by=$keyring" /etc/apt/sources.list; then
    options="[signed-by=$keyring] "
  fi
  echo "deb-src ${options}http://deb.debian.org/debian bookworm main" \
    | as_root tee /etc/apt/sources.list.d/session-operator-e2e-src.list >/dev/null
}

packages=(golang-go golang-github-modern-go-reflect2-dev dpkg-dev rsync etcd-server containerd
  runc containernetworking-plugins buildah debootstrap dnsmasq-base iptables conntrack curl
  iproute2 procps)
missing=()
for p in "${packages[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
command -v kubectl >/dev/null 2>&1 || missing+=(kubernetes-client)
if [ ${#missing[@]} -gt 0 ]; then
  echo "==> installing ${missing[*]}"
  add_source_packages
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
if ! ls -d "$E2E_CACHE"/src/kubernetes-*/ >/dev/null 2>&1; then
  add_source_packages && as_root apt-get update -qq
fi
[ "${1:-}" = --install-only ] && exit 0

as_root "$here/build-kubernetes.sh"
as_root "$here/images.sh" build
trap 'as_root "$here/cluster.sh" down' EXIT
as_root "$here/cluster.sh" down >/dev/null 2>&1 || true
as_root "$here/cluster.sh" up
as_root "$here/images.sh" import
as_root env KUBECONFIG="$E2E_STATE/kubeconfig" "$here/e2e.sh"
