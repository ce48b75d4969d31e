#!/usr/bin/env bash
# Soak (not part of CI): a sidecar on Redis with a small cache (8 MiB) serving 2 000 req/s of
# lookups over 30 000 sessions (more than the cache holds) for MINUTES minutes (default 10);
# prints latency percentiles per half minute and the sidecar's resident memory. Loopback only;
# everything stops when the script ends.
set -euo pipefail
cd "$(dirname "$0")/.."
MINUTES=${MINUTES:-10} RATE=${RATE:-2000}
command -v redis-server >/dev/null || { sudo=""; [ "$(id -u)" -eq 0 ] || sudo=sudo; $sudo apt-get update -qq; $sudo apt-get install -y -qq redis-server; }
cargo build --release -q -p session-sidecar -p session-bench
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
pids=()
trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true' EXIT
redis_port=$(free_port)
redis-server --port "$redis_port" --bind 127.0.0.1 --save "" --appendonly no --logfile /dev/null &
pids+=($!)
port=$(free_port)
RUST_LOG=warn target/release/session-sidecar --listen "127.0.0.1:$port" --redis-url "redis://127.0.0.1:$redis_port" \
  --create-rate-limit 0 --cache-max-bytes 8388608 &
pids+=($!)
sidecar_pid=$!
sleep 1
target/release/session-bench soak --target "127.0.0.1:$port" --pid "$sidecar_pid" --rate "$RATE" --minutes "$MINUTES"
