#!/usr/bin/env bash
# Builds, once, the Kubernetes binaries of the end-to-end cluster from Debian bookworm's
# `kubernetes` source package (v1.20.2) with Debian's Go 1.19, and the pause image's binary
# from the same source. The results are cached in $E2E_CACHE/bin and reused when present.
set -euo pipefail
: "${E2E_CACHE:=/var/cache/session-operator-e2e}"
bin="$E2E_CACHE/bin"
wanted=(kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy pause)
have_all() { for b in "${wanted[@]}"; do [ -x "$bin/$b" ] || return 1; done; }
have_all && exit 0

src="$E2E_CACHE/src"
mkdir -p "$src" "$bin"
if ! ls -d "$src"/kubernetes-*/ >/dev/null 2>&1; then
  echo "==> fetching Debian's kubernetes source package"
  (cd "$src" && apt-get source -qq kubernetes >/dev/null)
fi
tree=$(ls -d "$src"/kubernetes-*/ | head -1)
tree=${tree%/}

# reflect2 1.0.1 (vendored) reads Go runtime internals that changed in Go 1.18; Debian's 1.0.2
# is the fixed release with the same API.
reflect2=/usr/share/gocode/src/github.com/modern-go/reflect2
if ! grep -q 'unsafeMapIterType\|1.0.2' "$tree/vendor/github.com/modern-go/reflect2/go_above_118.go" 2>/dev/null; then
  rm -rf "$tree/vendor/github.com/modern-go/reflect2"
  cp -r "$reflect2" "$tree/vendor/github.com/modern-go/reflect2"
fi

# The package's Makefile expects a GOPATH layout, as debian/rules sets up.
mkdir -p "$tree/.go/src/k8s.io"
[ -L "$tree/.go/src/k8s.io/kubernetes" ] || ln -s ../../.. "$tree/.go/src/k8s.io/kubernetes"
echo "==> building kube-apiserver, kube-controller-manager, kube-scheduler, kubelet, kube-proxy (several minutes)"
rm -rf "$tree/_output"
(cd "$tree" \
  && env GOPATH="$tree/.go" CGO_ENABLED=0 GOCACHE="$E2E_CACHE/gocache" HOME="$E2E_CACHE" \
       KUBE_GIT_VERSION=v1.20.2 KUBE_GIT_TREE_STATE=clean \
       make WHAT="cmd/kube-apiserver cmd/kube-controller-manager cmd/kube-scheduler cmd/kubelet cmd/kube-proxy" >"$E2E_CACHE/build.log" 2>&1) \
  || { tail -40 "$E2E_CACHE/build.log"; exit 1; }
for b in kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy; do
  install -m 0755 "$(find "$tree/_output" -type f -name "$b" -path '*bin*' | head -1)" "$bin/$b"
done
gcc -Os -static -DVERSION=v1.20.2 -o "$bin/pause" "$tree/build/pause/linux/pause.c"
have_all
echo "==> kubernetes binaries in $bin"
