#!/usr/bin/env bash
# The Dockerfile: 1. its properties: multi-stage, base images pinned to exact versions,
# non-root final images, nothing secret copied, a .dockerignore that keeps build output and
# keys out; 2. built for real with buildah (no Docker engine runs here), its images' binaries
# run. The end-to-end cluster runs these very images.
set -euo pipefail
cd "$(dirname "$0")/.."

fail() { echo "Dockerfile: $*" >&2; exit 1; }

froms=$(grep -E '^FROM ' Dockerfile)
[ "$(echo "$froms" | wc -l)" -ge 2 ] || fail "not multi-stage"
while read -r _ image _; do
  case "$image" in
    build|runtime) continue ;;  # a stage of this file
  esac
  [[ "$image" =~ :[0-9]+\.[0-9]+(\.[0-9]+)?(-[a-z0-9.-]+)?$ || "$image" =~ @sha256: ]] \
    || fail "base image $image is not pinned to an exact version"
done <<< "$froms"
grep -qiE '^FROM .*:latest' Dockerfile && fail "a :latest base image"
for target in sidecar operator; do
  user=$(awk -v t="$target" '$1=="FROM" {stage=$NF} stage==t && $1=="USER" {u=$2} END {print u}' Dockerfile)
  [[ "$user" =~ ^[1-9][0-9]*(:[1-9][0-9]*)?$ ]] || fail "stage $target does not run as a non-root numeric user ($user)"
done
grep -E '^(COPY|ADD) ' Dockerfile | grep -qiE '\.env|\.pem|\.key|id_rsa|secret|credential' \
  && fail "copies something secret"
grep -qE '^ADD ' Dockerfile && fail "uses ADD (COPY is explicit)"
for ignored in target/ .git/ '**/*.pem' '**/*.key' '**/.env'; do
  grep -qxF "$ignored" .dockerignore || fail ".dockerignore does not exclude $ignored"
done
echo "Dockerfile properties: multi-stage, pinned bases, non-root images, no secrets: ok"

# 2. The Dockerfile built for real with buildah (tests/k8s/images.sh: base images made here from
#    Debian's packages, tagged as the Dockerfile names them), and the images' binaries run.
[ "$(id -u)" -eq 0 ] || fail "building the images needs root (buildah, debootstrap)"
tests/k8s/images.sh build
bin=$(mktemp -d)
for image in session-sidecar session-operator; do
  container=$(buildah from --pull-never "localhost/$image:e2e")
  cp "$(buildah mount "$container")/usr/local/bin/$image" "$bin/"
  buildah umount "$container" >/dev/null && buildah rm "$container" >/dev/null
  "$bin/$image" --version
done
# The sidecar image's entrypoint really serves: start it on the embedded store and probe it.
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"$bin/session-sidecar" --listen "127.0.0.1:$port" >/dev/null 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null || true; rm -rf "$bin"' EXIT
for _ in $(seq 100); do
  if python3 -c "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:$port/readyz').status==200 else 1)" 2>/dev/null; then
    echo "the sidecar image's session-sidecar serves /readyz: ok"
    "$bin/session-operator" crd | grep -q 'kind: CustomResourceDefinition' && echo "the operator image's session-operator prints the CRD: ok"
    exit 0
  fi
  sleep 0.1
done
fail "the image's session-sidecar did not become ready"
