#!/usr/bin/env bash
# Side-by-side benchmark (not part of CI; about 3 minutes after the release build):
#   bare hyper server · sidecar cache hit · sidecar miss (reads Redis) · Redis GET itself,
# each at the same fixed request rate (open loop, latency from when each request was due) and at
# its closed-loop maximum; then the invalidation delay between two sidecars and the memory of a
# sidecar holding 100 000 cached sessions; then writes (creates, message appends, ends) per
# second with the calls to Redis and Redis CPU each costs, beside Redis's EVALSHA of a trivial
# script. Prints the tables.
# `bench/run.sh writes` runs the write section alone, with the default write hints, with hints
# that hold every session it touches, and with the default hints beside 16 other sidecars that
# track the same Redis (what a fleet costs each write; about three minutes).
# Everything runs on loopback ports and stops when the script ends.
set -euo pipefail
cd "$(dirname "$0")/.."
RATE=${RATE:-5000} SECONDS_PER_RUN=${SECONDS_PER_RUN:-10} MEMORY_SESSIONS=${MEMORY_SESSIONS:-100000}

command -v redis-server >/dev/null || { sudo=""; [ "$(id -u)" -eq 0 ] || sudo=sudo; $sudo apt-get update -qq; $sudo apt-get install -y -qq redis-server; }
cargo build --release -q -p session-sidecar -p session-bench
bin=target/release

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

redis_port=$(free_port)
redis-server --port "$redis_port" --bind 127.0.0.1 --save "" --appendonly no --logfile /dev/null &
pids+=($!)
url="redis://127.0.0.1:$redis_port"

sidecar() { # sidecar <port> <extra args...>
  local port=$1; shift
  RUST_LOG=warn "$bin/session-sidecar" --listen "127.0.0.1:$port" --redis-url "$url" --create-rate-limit 0 "$@" &
  pids+=($!)
}
if [ "${1:-}" = writes ]; then
  # Three times, each on a Redis and a writer sidecar of its own: with the default write hints
  # (16 MiB, about 13 000 sessions: the phases touch over 100 000, so most appends and ends
  # read first), with hints that hold every session the phases touch, and with the default
  # hints while 16 other sidecars track the same Redis, as the sidecars of a fleet do (Redis
  # tells a sidecar of the changes of the documents it read, so these cost the writes nothing).
  for setup in "16777216 0" "268435456 0" "16777216 16"; do
    read -r hints others <<< "$setup"
    redis_port=$(free_port)
    redis-server --port "$redis_port" --bind 127.0.0.1 --save "" --appendonly no --logfile /dev/null &
    pids+=($!)
    url="redis://127.0.0.1:$redis_port"
    writer=$(free_port); sidecar "$writer" --outbox-max-len 100000000 --write-hints-max-bytes "$hints"
    capped=$(free_port); sidecar "$capped" --outbox-max-len 100000000 --write-hints-max-bytes "$hints" \
      --max-active-per-user 3 --active-cap-policy end-oldest
    for _ in $(seq 1 "$others"); do sidecar "$(free_port)"; done
    sleep 1
    echo "== write hints: $hints bytes; other sidecars tracking: $others"
    "$bin/session-bench" writes --redis-url "$url" --writer "127.0.0.1:$writer" \
      --capped-writer "127.0.0.1:$capped" --seconds "$SECONDS_PER_RUN"
  done
  exit
fi
writer=$(free_port); sidecar "$writer" --outbox-max-len 100000000
hit=$(free_port); sidecar "$hit" --cache-max-bytes 268435456
miss=$(free_port); sidecar "$miss" --cache-max-bytes 0
other=$(free_port); sidecar "$other" --cache-max-bytes 268435456
memory=$(free_port); sidecar "$memory" --cache-max-bytes 201326592 --cache-max-age-ms 600000
memory_pid=$!
bare=$(free_port)
sleep 1

"$bin/session-bench" suite --redis-url "$url" --hit "127.0.0.1:$hit" --miss "127.0.0.1:$miss" \
  --other "127.0.0.1:$other" --memory "127.0.0.1:$memory" --memory-pid "$memory_pid" \
  --bare "127.0.0.1:$bare" --rate "$RATE" --seconds "$SECONDS_PER_RUN" --memory-sessions "$MEMORY_SESSIONS" \
  --writer "127.0.0.1:$writer"
