#!/usr/bin/env bash
# Every image the end-to-end cluster runs, built here: no registry is reachable.
#   - the Dockerfile's base images, made from Debian's packages with debootstrap and tagged as
#     the Dockerfile names them (debian:12.12-slim; rust:1.95.0-slim-bookworm = that plus gcc
#     and this machine's Rust 1.95 toolchain);
#   - the project's two images, built from the Dockerfile itself with buildah
#     (`--target operator`, `--target sidecar`);
#   - Redis from Debian's redis-server, and the pause image from the Kubernetes source.
# Base root filesystems are cached in $E2E_CACHE/rootfs; buildah keeps its layers.
# With `import`, the images are loaded into the cluster's containerd (namespace k8s.io).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
: "${E2E_CACHE:=/var/cache/session-operator-e2e}"
: "${E2E_STATE:=/run/session-operator-e2e}"
export BUILDAH_RUNTIME="$here/runc-wrapper"
MIRROR=http://deb.debian.org/debian

# The tags the suite and the Dockerfile use.
DEBIAN=docker.io/library/debian:12.12-slim
RUST=docker.io/library/rust:1.95.0-slim-bookworm
REDIS=localhost/redis:7.0-debian
PAUSE=localhost/pause:3.4.1
OPERATOR=localhost/session-operator:e2e
SIDECAR=localhost/session-sidecar:e2e

log() { echo "==> images: $*"; }
have() { buildah inspect --type image "$1" >/dev/null 2>&1; }

rootfs() { # rootfs <name> <packages,...>: a cached Debian bookworm root filesystem
  local dir="$E2E_CACHE/rootfs/$1"
  [ -f "$dir.done" ] && return 0
  log "debootstrap $1 ${2:-}"
  rm -rf "$dir" && mkdir -p "$dir"
  debootstrap --variant=minbase ${2:+--include="$2"} bookworm "$dir" "$MIRROR" >"$dir.log" 2>&1 \
    || { tail -20 "$dir.log"; exit 1; }
  rm -rf "$dir"/var/cache/apt/archives/*.deb "$dir"/var/lib/apt/lists/*
  touch "$dir.done"
}

from_rootfs() { # from_rootfs <rootfs> <tag> [buildah config args...]
  local fs="$E2E_CACHE/rootfs/$1" tag=$2; shift 2
  have "$tag" && return 0
  log "image $tag from the $(basename "$fs") root filesystem"
  local c
  c=$(buildah from scratch)
  buildah copy --quiet "$c" "$fs/" / >/dev/null
  buildah config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin "$@" "$c"
  buildah commit --quiet --rm "$c" "$tag" >/dev/null
}

bases() {
  rootfs debian-slim "" &
  rootfs rust-build gcc,libc6-dev,ca-certificates &
  rootfs redis redis-server,redis-tools &
  wait
  from_rootfs debian-slim "$DEBIAN" --cmd '["bash"]'
  from_rootfs redis "$REDIS" --user 999:999 --cmd '["redis-server"]'
  if ! have "$RUST"; then
    log "image $RUST: the rust-build root filesystem and Rust $(rustc --version | cut -d' ' -f2)"
    local c sysroot
    c=$(buildah from scratch)
    sysroot=$(rustc --print sysroot)
    buildah copy --quiet "$c" "$E2E_CACHE/rootfs/rust-build/" / >/dev/null
    buildah copy --quiet "$c" "$sysroot/" /usr/local/rust >/dev/null
    # This machine's CA roots (its egress proxy signs crates.io), so cargo can fetch crates.
    buildah copy --quiet "$c" /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt >/dev/null
    buildah config --env CARGO_HOME=/usr/local/cargo \
      --env PATH=/usr/local/cargo/bin:/usr/local/rust/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
      --cmd '["bash"]' "$c"
    buildah commit --quiet --rm "$c" "$RUST" >/dev/null
  fi
  if ! have "$PAUSE"; then
    local c
    # The pause binary comes from the Kubernetes build (also when tests/dockerfile.sh runs
    # first on a fresh machine).
    "$here/build-kubernetes.sh"
    c=$(buildah from scratch)
    buildah copy --quiet "$c" "$E2E_CACHE/bin/pause" /pause >/dev/null
    buildah config --entrypoint '["/pause"]' --user 65535:65535 "$c"
    buildah commit --quiet --rm "$c" "$PAUSE" >/dev/null
  fi
}

project() {
  # The Dockerfile exactly as a platform team builds it (buildah reads it as docker would).
  for target in operator sidecar; do
    local tag=$OPERATOR
    [ "$target" = sidecar ] && tag=$SIDECAR
    log "buildah bud --target $target -t $tag (the Dockerfile)"
    (cd "$repo" && buildah bud --quiet --layers --isolation chroot --network host \
      --pull-never --target "$target" -t "$tag" -f Dockerfile . >"$E2E_CACHE/bud-$target.log" 2>&1) \
      || { tail -30 "$E2E_CACHE/bud-$target.log"; exit 1; }
  done
}

import() {
  local sock="$E2E_STATE/containerd/containerd.sock"
  for tag in "$PAUSE" "$REDIS" "$OPERATOR" "$SIDECAR" "$DEBIAN"; do
    local archive="$E2E_CACHE/images/$(echo "$tag" | tr '/:' '__').tar"
    mkdir -p "$E2E_CACHE/images"
    rm -f "$archive"
    buildah push --quiet "$tag" "docker-archive:$archive:$tag" >/dev/null
    ctr --address "$sock" -n k8s.io images import "$archive" >/dev/null
    rm -f "$archive"
  done
  log "imported into the cluster: $PAUSE $REDIS $OPERATOR $SIDECAR $DEBIAN"
}

case "${1:-build}" in
  build) bases; project ;;
  bases) bases ;;
  import) import ;;
  *) echo "usage: $0 build|bases|import" >&2; exit 2 ;;
esac
