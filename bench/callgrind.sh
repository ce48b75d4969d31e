#!/usr/bin/env bash
# Instructions per request of a cache hit, beside a bare hyper server answering the same bytes,
# counted by callgrind: deterministic where wall-clock figures on this noisy two-core machine
# are not. Each server runs under valgrind with one worker thread; after a warm-up the counters
# are zeroed, N keep-alive GETs are sent, and the counters dumped: instructions / N. Then both
# run natively, one worker thread each, and the project's load generator measures each one's
# closed-loop requests per second, alternating, ROUNDS times: the hit's throughput as a share
# of the bare server's. Not part of CI (about 3 minutes after the release build).
set -euo pipefail
cd "$(dirname "$0")/.."
N=${N:-5000} WARMUP=${WARMUP:-500} ROUNDS=${ROUNDS:-3} SECONDS_PER_RUN=${SECONDS_PER_RUN:-5}
command -v valgrind >/dev/null || { echo "valgrind is needed (apt-get install valgrind)"; exit 1; }
cargo build --release -q -p session-sidecar -p session-bench
bin=target/release
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 1 600); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done; return 1; }

# GETs `path` on `port` `count` times over one keep-alive connection; prints the status seen.
get_loop() { python3 - "$@" <<'PY'
import http.client, sys
port, path, count = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
c = http.client.HTTPConnection("127.0.0.1", port)
statuses = set()
for _ in range(count):
    c.request("GET", path)
    r = c.getresponse(); r.read(); statuses.add(r.status)
print(",".join(map(str, sorted(statuses))))
PY
}

# Ir of one run: start the server under callgrind, warm up, zero, N requests, dump.
measure() { # measure <name> <port> <path> <command...>
  local name=$1 port=$2 path=$3; shift 3
  RUST_LOG=warn valgrind --tool=callgrind --callgrind-out-file="$work/$name.%p" "$@" >"$work/$name.log" 2>&1 &
  local pid=$!; pids+=("$pid")
  wait_port "$port"
  get_loop "$port" "$path" "$WARMUP" >/dev/null
  callgrind_control -z "$pid" >/dev/null 2>&1
  local statuses; statuses=$(get_loop "$port" "$path" "$N")
  callgrind_control -d "$pid" >/dev/null 2>&1
  sleep 0.5
  local total
  # The dump asked for is <file>.1; the one written at exit (the shutdown) is not counted.
  total=$(awk '/^totals:/ {print $2}' "$work/$name.$pid.1")
  kill "$pid"; wait "$pid" 2>/dev/null || true
  echo "$name $statuses $total"
}

redis_port=$(free_port)
redis-server --port "$redis_port" --bind 127.0.0.1 --save "" --appendonly no --logfile /dev/null &
pids+=($!)
wait_port "$redis_port"

# A session to look up, created through a plain sidecar; its body is what the bare server sends.
seed=$(free_port)
RUST_LOG=warn "$bin/session-sidecar" --listen "127.0.0.1:$seed" --redis-url "redis://127.0.0.1:$redis_port" &
seed_pid=$!; pids+=("$seed_pid")
wait_port "$seed"
id=$(python3 - "$seed" <<'PY'
import http.client, json, sys
c = http.client.HTTPConnection("127.0.0.1", int(sys.argv[1]))
c.request("POST", "/v1/sessions", json.dumps({"user_id": "alice", "title": "callgrind"}), {"content-type": "application/json"})
print(json.loads(c.getresponse().read())["session_id"])
PY
)
python3 - "$seed" "$id" "$work/body.json" <<'PY'
import http.client, sys
c = http.client.HTTPConnection("127.0.0.1", int(sys.argv[1]))
c.request("GET", "/v1/sessions/" + sys.argv[2]); open(sys.argv[3], "wb").write(c.getresponse().read())
PY
kill "$seed_pid"

hit=$(free_port)
read -r _ hit_status hit_ir < <(measure sidecar "$hit" "/v1/sessions/$id" \
  "$bin/session-sidecar" --listen "127.0.0.1:$hit" --redis-url "redis://127.0.0.1:$redis_port" --worker-threads 1)
bare=$(free_port)
read -r _ bare_status bare_ir < <(measure bare "$bare" "/v1/sessions/$id" \
  "$bin/session-bench" bare --listen "127.0.0.1:$bare" --body-file "$work/body.json")
[ "$hit_status" = 200 ] && [ "$bare_status" = 200 ] || { echo "unexpected statuses: sidecar $hit_status, bare $bare_status"; exit 1; }
python3 - "$N" "$hit_ir" "$bare_ir" "$(wc -c <"$work/body.json")" <<'PY'
import sys
n, hit, bare, size = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
print(f"instructions per request (callgrind, {n} keep-alive GETs of a {size}-byte session, one worker thread)")
print(f"  bare hyper server   {bare / n:>10.0f}")
print(f"  sidecar cache hit   {hit / n:>10.0f}")
print(f"  ratio               {hit / bare:>10.2f}x")
PY

# Throughput, natively: the same two servers, one worker thread each, measured in turns.
hit=$(free_port)
RUST_LOG=warn "$bin/session-sidecar" --listen "127.0.0.1:$hit" --redis-url "redis://127.0.0.1:$redis_port" --worker-threads 1 &
pids+=($!)
bare=$(free_port)
"$bin/session-bench" bare --listen "127.0.0.1:$bare" --body-file "$work/body.json" &
pids+=($!)
wait_port "$hit"; wait_port "$bare"
get_loop "$hit" "/v1/sessions/$id" 100 >/dev/null # fills the cache
hits=() bares=()
for _ in $(seq 1 "$ROUNDS"); do
  bares+=("$("$bin/session-bench" throughput --addr "127.0.0.1:$bare" --path "/v1/sessions/$id" --seconds "$SECONDS_PER_RUN")")
  hits+=("$("$bin/session-bench" throughput --addr "127.0.0.1:$hit" --path "/v1/sessions/$id" --seconds "$SECONDS_PER_RUN")")
done
python3 - "${bares[*]}" "${hits[*]}" <<'PY'
import sys
bare = [float(x) for x in sys.argv[1].split()]
hit = [float(x) for x in sys.argv[2].split()]
print("requests per second (closed loop, 64 connections, one worker thread each; rounds in turn)")
print("  bare hyper server   " + "  ".join(f"{b:>8.0f}" for b in bare))
print("  sidecar cache hit   " + "  ".join(f"{h:>8.0f}" for h in hit))
print("  hit / bare          " + "  ".join(f"{h / b:>7.0%} " for h, b in zip(hit, bare))
      + f"  (of the sums: {sum(hit) / sum(bare):.0%})")
PY
