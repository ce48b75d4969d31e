#!/usr/bin/env bash
# The end-to-end suite on the real one-node cluster of cluster.sh, with the images of
# images.sh (the operator and sidecar built from the Dockerfile, Redis from Debian):
#   1. the operator binary alone: SIGTERM with no CRD, a CRD installed after start, SIGTERM
#      while leading;
#   2. `helm install` of the chart; the operator pods run and reconcile as their ServiceAccount;
#   3. a standalone SessionService: Redis and the session service run, Ready, a second pass
#      changes nothing, human messages, deletion collects everything but the data volume;
#   4. injection: a labelled application pod gets the sidecar and creates and reads a session
#      through Redis from 127.0.0.1:7070; unlabelled and excluded pods are untouched; with no
#      webhook answering, labelled pods follow failurePolicy;
#   5. leader election: the leader pod deleted, the other replica takes over;
#   6. a cluster-mode SessionService: six Redis pods form a cluster; all six deleted at once come
#      back with new IPs and the cluster heals by itself, every session still there;
#   7. `kubectl sessions status` (the operator binary as a kubectl plugin) shows that cluster.
# Prints the time each step took. Needs KUBECONFIG (cluster-admin) and the images imported.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
: "${E2E_STATE:=/run/session-operator-e2e}"
export KUBECONFIG="${KUBECONFIG:-$E2E_STATE/kubeconfig}"
OPERATOR_IMAGE=localhost/session-operator:e2e
SIDECAR_IMAGE=localhost/session-sidecar:e2e
REDIS_IMAGE=localhost/redis:7.0-debian
NS=session-system
k() { kubectl --request-timeout=30s "$@"; }

since() { awk -v a="$(date +%s.%N)" -v b="$1" 'BEGIN {printf "%.2f", a - b}'; }
results=()
step() { echo "==> e2e: $*"; step_started=$(date +%s.%N); }
passed() { # passed <figure...>: the step's result line
  local took
  took=$(since "$step_started")
  results+=("$(printf '%-58s %7s s  %s' "$current" "$took" "$*")")
  echo "    ok ($took s) $*"
}
diagnose() {
  echo "---- diagnostics ----"
  k get pods -A -o wide || true
  k get sessionservices -A -o yaml 2>/dev/null | grep -A4 "type:" | head -80 || true
  k get events -A --sort-by=.lastTimestamp 2>/dev/null | tail -40 || true
  for pod in $(k get pods -n "$NS" -o name 2>/dev/null); do
    echo "--- $pod"; k logs -n "$NS" "$pod" --tail=40 || true
  done
  [ -f "$E2E_STATE/host-operator.log" ] && tail -40 "$E2E_STATE/host-operator.log"
}
fail() { trap - EXIT; echo "e2e FAILED in \"$current\": $*" >&2; diagnose >&2; exit 1; }
trap 'code=$?; [ $code -eq 0 ] || { echo "e2e: a command failed (exit $code) in \"$current\"" >&2; diagnose >&2; }' EXIT

within() { # within <seconds> <command...>: true once the command succeeds
  local deadline=$(( $(date +%s) + $1 )); shift
  until "$@" >/dev/null 2>&1; do
    [ "$(date +%s)" -lt "$deadline" ] || return 1
    sleep 1
  done
}

condition() { # condition <namespace> <name> <type>: its status
  k get sessionservice -n "$1" "$2" -o jsonpath="{.status.conditions[?(@.type==\"$3\")].status}"
}
is_ready() { [ "$(condition "$1" "$2" Ready)" = True ]; }

session_service() { # session_service <namespace> <name> <mode> [extra spec yaml]
  cat <<EOF
apiVersion: sessions.io/v1alpha1
kind: SessionService
metadata: {name: $2, namespace: $1}
spec:
  redis:
    mode: $3
    image: $REDIS_IMAGE
    maxmemory: 100mb
    persistence: {size: 1Gi}
    resources: {requests: {cpu: 10m, memory: 32Mi}, limits: {memory: 192Mi}}
    ${4:-}
  server:
    image: $SIDECAR_IMAGE
    resources: {requests: {cpu: 10m, memory: 32Mi}, limits: {memory: 256Mi}}
  autoscaling: {minReplicas: 1, maxReplicas: 2}
  sidecar:
    image: $SIDECAR_IMAGE
    resources: {requests: {cpu: 10m, memory: 32Mi}, limits: {memory: 192Mi}}
  monitoring: {serviceMonitor: false, prometheusRule: false}
EOF
}

app_pod() { # app_pod <namespace> <name> [inject label value]
  cat <<EOF
apiVersion: v1
kind: Pod
metadata:
  name: $2
  namespace: $1
  labels: {app: e2e${3:+, sessions.io/inject: $3}}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: app
    image: $REDIS_IMAGE
    imagePullPolicy: Never
    command: [sleep, "3600"]
    resources: {requests: {cpu: 10m, memory: 16Mi}}
EOF
}

# An HTTP request from the application container to its sidecar, with bash's /dev/tcp (the
# application image has no HTTP client): prints the status code, then the body.
call() { # call <namespace> <pod> <method> <path> [json body]
  k exec -n "$1" "$2" -c app -- bash -c '
    exec 3<>/dev/tcp/127.0.0.1/7070
    printf "%s %s HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s" "$1" "$2" "${#3}" "$3" >&3
    response=$(cat <&3)
    code=${response#HTTP/1.1 }; echo "${code%% *}"
    echo "${response#*$'"'"'\r\n\r\n'"'"'}"' _ "$3" "$4" "${5:-}"
}
session_id() { grep -o '"session_id":"[^"]*"' | head -1 | cut -d'"' -f4; }

# ---------------------------------------------------------------------------------------------
current="operator alone: SIGTERM without the CRD"
step "$current"
host_bin="$E2E_STATE/session-operator"
container=$(buildah from --pull-never "$OPERATOR_IMAGE")
cp "$(buildah mount "$container")/usr/local/bin/session-operator" "$host_bin"
buildah umount "$container" >/dev/null && buildah rm "$container" >/dev/null
k create namespace e2e-host >/dev/null
run_host_operator() {
  env POD_NAMESPACE=e2e-host POD_NAME=host-operator OPERATOR_METRICS_LISTEN=127.0.0.1:18080 \
    RUST_LOG=info "$host_bin" run >"$E2E_STATE/host-operator.log" 2>&1 &
  host_pid=$!
}
stop_host_operator() { # prints the seconds from SIGTERM to exit; fails past 5 s
  local sent=$(date +%s.%N)
  kill -TERM "$host_pid"
  for _ in $(seq 100); do
    if ! kill -0 "$host_pid" 2>/dev/null; then
      wait "$host_pid" || true
      since "$sent"
      return 0
    fi
    sleep 0.05
  done
  kill -KILL "$host_pid"; fail "the operator was still running 5 s after SIGTERM"
}
run_host_operator
within 30 grep -q "SessionService CRD is not installed" "$E2E_STATE/host-operator.log" \
  || fail "the operator did not report the missing CRD"
took=$(stop_host_operator)
passed "exited $took s after SIGTERM (limit 5 s)"

current="operator alone: a CRD installed after start"
step "$current"
run_host_operator
within 30 grep -q "SessionService CRD is not installed" "$E2E_STATE/host-operator.log" || fail "no CRD message"
# Servers before 1.25 do not know the CRD's CEL rules: kubectl's client-side check refuses
# them, the server drops them (the FeaturesAvailable condition says so).
"$host_bin" crd | k create --validate=false -f - >/dev/null
installed=$(date +%s.%N)
session_service e2e-host early standalone | k apply -f - >/dev/null
within 10 sh -c "[ -n \"\$(kubectl get sessionservice -n e2e-host early -o jsonpath='{.status.conditions}')\" ]" \
  || fail "the SessionService had no status 10 s after the CRD was installed"
seen=$(since "$installed")
features=$(k get sessionservice -n e2e-host early -o jsonpath='{.status.conditions[?(@.type=="FeaturesAvailable")].message}')
echo "$features" | grep -q "does not enforce the CRD's validation rules" || fail "FeaturesAvailable says: $features"
passed "reconciled $seen s after the CRD was installed (limit 10 s)"

current="operator alone: SIGTERM while leading"
step "$current"
took=$(stop_host_operator)
k delete namespace e2e-host --wait=false >/dev/null
passed "exited $took s after SIGTERM (limit 5 s)"

# ---------------------------------------------------------------------------------------------
current="helm install"
step "$current"
helm install session-operator "$repo/charts/session-operator" -n "$NS" --create-namespace \
  --set image.repository=localhost/session-operator --set image.tag=e2e \
  --set image.pullPolicy=Never --set resources.requests.cpu=10m \
  --wait --timeout 180s >/dev/null || fail "helm install did not finish"
ready=$(k get deployment -n "$NS" session-operator -o jsonpath='{.status.readyReplicas}')
[ "$ready" = 2 ] || fail "$ready of 2 operator replicas ready"
within 30 sh -c "kubectl get lease -n $NS session-operator-leader -o jsonpath='{.spec.holderIdentity}' | grep -q session-operator-" \
  || fail "no operator replica holds the leader lease"
passed "2 of 2 operator replicas Ready, one leads"

# ---------------------------------------------------------------------------------------------
current="standalone SessionService becomes Ready"
step "$current"
k create namespace shop >/dev/null
session_service shop sessions standalone | k apply -f - >/dev/null
within 240 is_ready shop sessions || fail "not Ready after 240 s"
passed "Ready; Redis pod and session-service pod running"

current="later passes change nothing (30 s)"
step "$current"
# What the operator writes: the spec's generation, and the time of the operator's own managed
# fields (a no-op apply leaves both alone). Status written by other controllers (the
# StatefulSet's, the HPA's) may change and does not count.
versions() {
  k get statefulset,deployment,service,configmap,secret,poddisruptionbudget,horizontalpodautoscaler,networkpolicy,sessionservice \
    -n shop -o jsonpath='{range .items[*]}{.kind}/{.metadata.name} generation={.metadata.generation} operator-writes={.metadata.managedFields[?(@.manager=="session-operator")].time}{"\n"}{end}' \
    | grep -v '^Secret/default-token' | sort
}
# The passes right after Ready may still touch an object once (seen on 1.20: one apply's
# managed-field time moved 7 s after Ready); then nothing may change for 30 s.
settle_started=$(date +%s)
before=$(versions)
while sleep 10; after=$(versions); [ "$before" != "$after" ]; do
  [ $(( $(date +%s) - settle_started )) -lt 60 ] || fail "the operator still writes a minute after Ready: $(diff <(echo "$before") <(echo "$after"))"
  before=$after
done
settled=$(( $(date +%s) - settle_started - 10 ))
sleep 30
after=$(versions)
[ "$before" = "$after" ] || fail "objects changed without a spec change: $(diff <(echo "$before") <(echo "$after"))"
echo "$before" | grep -q 'operator-writes=2' || fail "no object shows the operator's writes: $before"
passed "$(echo "$before" | wc -l) objects; settled ${settled} s after Ready, then no write by the operator for 30 s"

current="conditions and Events are human messages"
step "$current"
texts=$(k get sessionservice -n shop sessions -o jsonpath='{range .status.conditions[*]}{.message}{"\n"}{end}'; \
        k get events -n shop -o jsonpath='{range .items[*]}{.note}{.message}{"\n"}{end}')
if echo "$texts" | grep -E 'Status \{|ApiError|Some\(|\{ *[a-z_]+: ' >/dev/null; then
  fail "a Debug dump in a message: $(echo "$texts" | grep -E 'Status \{|ApiError|Some\(' | head -3)"
fi
k get sessionservice -n shop sessions -o jsonpath='{.status.conditions[?(@.type=="FeaturesAvailable")].message}' \
  | grep -q "v1.20.2" || fail "FeaturesAvailable does not name the server's version"
passed "$(echo "$texts" | grep -c .) messages, no Debug dumps"

# ---------------------------------------------------------------------------------------------
current="injection: the application reaches its sidecar"
step "$current"
app_pod shop app sessions | k apply -f - >/dev/null
within 120 sh -c "kubectl get pod -n shop app -o jsonpath='{.status.containerStatuses[*].ready}' | grep -qx 'true true'" \
  || fail "the injected pod did not become ready"
containers=$(k get pod -n shop app -o jsonpath='{.spec.containers[*].name}')
[ "$containers" = "app session-sidecar" ] || fail "containers: $containers (a plain sidecar container on 1.20)"
created=$(call shop app POST /v1/sessions '{"user_id":"alice","title":"e2e"}')
[ "$(echo "$created" | head -1)" = 201 ] || fail "create answered: $created"
id=$(echo "$created" | session_id)
read_back=$(call shop app GET "/v1/sessions/$id")
[ "$(echo "$read_back" | head -1)" = 200 ] && echo "$read_back" | grep -q '"user_id":"alice"' || fail "read answered: $read_back"
password=$(k get secret -n shop sessions-redis-admin -o jsonpath='{.data.password}' | base64 -d)
keys=$(k exec -n shop sessions-redis-0 -- redis-cli --no-auth-warning --user admin -a "$password" dbsize)
[ "$keys" -gt 0 ] || fail "Redis holds no keys after a create"
passed "201 create, 200 read of $id; Redis holds $keys keys"

current="least privilege: the injected sidecar holds the sidecar user, which may not run admin commands"
step "$current"
source=$(k get pod -n shop app -o jsonpath='{.spec.volumes[?(@.name=="redis-url")].secret.secretName}')
[ "$source" = sessions-redis-sidecar ] || fail "the sidecar's Redis URL comes from $source"
file=$(k get pod -n shop app -o jsonpath='{.spec.containers[1].env[?(@.name=="SESSION_REDIS_URL_FILE")].value}')
[ "$file" = /etc/session/redis-url/url ] || fail "the sidecar reads its Redis URL from '$file'"
sidecar_password=$(k get secret -n shop sessions-redis-sidecar -o jsonpath='{.data.password}' | base64 -d)
as_sidecar() { k exec -n shop sessions-redis-0 -- redis-cli --no-auth-warning --user sidecar -a "$sidecar_password" "$@" 2>&1; }
for command in "flushall" "config get maxmemory" "keys sess" "acl list" "get other:key"; do
  # shellcheck disable=SC2086 # each command is split into its words on purpose
  answer=$(as_sidecar $command)
  grep -q NOPERM <<<"$answer" || fail "as the sidecar user, $command answered: $answer"
done
answer=$(k exec -n shop sessions-redis-0 -- redis-cli --no-auth-warning -a "$password" ping 2>&1)
grep -q -E 'WRONGPASS|NOAUTH' <<<"$answer" || fail "the default user answered: $answer"
passed "the app's sidecar reads sessions-redis-sidecar (mounted); as that user FLUSHALL, CONFIG, KEYS, ACL and a foreign key are refused (NOPERM); the default user is off"

current="rotation: every Redis password, the session service rolled, the application's sidecar moved without a restart"
step "$current"
rotation() { k get sessionservice -n shop sessions -o jsonpath='{.status.redisPasswordRotation}'; }
reloads() { call shop app GET /metrics | grep '^session_redis_url_reloads_total' | awk '{print $2}'; }
replication_password=$(k get secret -n shop sessions-redis-acl -o jsonpath='{.data.replication-password}' | base64 -d)
app_uid=$(k get pod -n shop app -o jsonpath='{.metadata.uid}')
restarts_before=$(k get pod -n shop app -o jsonpath='{.status.containerStatuses[*].restartCount}')
[ "$(reloads)" = 0 ] || fail "the sidecar reloaded its URL before the rotation: $(reloads)"
started=$(date +%s.%N)
k annotate sessionservice -n shop sessions sessions.io/rotate-redis-passwords=e2e-1 >/dev/null
# The kubelet updates the mounted Secrets within its sync period; the operator waits 2 minutes
# for that (plus the sidecars' 5 s reread) before it drops the old sidecar and replication
# passwords.
within 300 sh -c "kubectl get sessionservice -n shop sessions -o jsonpath='{.status.redisPasswordRotation}' | grep -q '^Redis passwords rotated'" \
  || fail "the rotation did not finish: $(rotation)"
took=$(awk "BEGIN { print $(date +%s.%N) - $started }")
[ "$(k get pod -n shop app -o jsonpath='{.metadata.uid}')" = "$app_uid" ] || fail "the application pod was replaced"
restarts=$(k get pod -n shop app -o jsonpath='{.status.containerStatuses[*].restartCount}')
[ "$restarts" = "$restarts_before" ] || fail "containers of the application pod restarted: $restarts_before, now $restarts"
[ "$(reloads)" = 1 ] || fail "the sidecar did not move to the new URL once: $(reloads)"
answer=$(k exec -n shop sessions-redis-0 -- redis-cli --no-auth-warning --user sidecar -a "$sidecar_password" ping 2>&1)
grep -q WRONGPASS <<<"$answer" || fail "the sidecar's old password still works: $answer"
answer=$(k exec -n shop sessions-redis-0 -- redis-cli --no-auth-warning --user replication -a "$replication_password" ping 2>&1)
grep -q WRONGPASS <<<"$answer" || fail "the old replication password still works: $answer"
# Every sidecar connection cut: what the sidecar opens now must use the new password.
password=$(k get secret -n shop sessions-redis-admin -o jsonpath='{.data.password}' | base64 -d)
k exec -n shop sessions-redis-0 -- redis-cli --no-auth-warning --user admin -a "$password" client kill user sidecar >/dev/null
created_after() { call shop app POST /v1/sessions '{"user_id":"carol"}' | head -1 | grep -qx 201; }
within 20 created_after || fail "after its connections were cut the sidecar could not write: $(call shop app POST /v1/sessions '{"user_id":"carol"}')"
read_back=$(call shop app GET "/v1/sessions/$id")
[ "$(echo "$read_back" | head -1)" = 200 ] || fail "after the rotation the sidecar answered: $read_back"
within 120 is_ready shop sessions || fail "not Ready after the rotation"
ready=$(k get pod -n shop sessions-redis-0 -o jsonpath='{.status.containerStatuses[0].ready}')
[ "$ready" = true ] || fail "the Redis pod's probe fails after the rotation"
passed "$(printf '%.1f' "$took") s: $(rotation); the application pod kept running (sidecar moved once, no restart); the old sidecar and replication passwords are refused; with its connections cut the sidecar writes on the new one and reads $id; the Redis pod stays ready"

current="injection: unlabelled and excluded pods are untouched"
step "$current"
app_pod shop plain | k apply -f - >/dev/null
app_pod "$NS" own sessions | k apply -f - >/dev/null
app_pod kube-system system sessions | k apply -f - >/dev/null
for pod in shop/plain "$NS"/own kube-system/system; do
  containers=$(k get pod -n "${pod%/*}" "${pod#*/}" -o jsonpath='{.spec.containers[*].name}')
  [ "$containers" = app ] || fail "$pod got containers: $containers"
done
k delete pod -n "$NS" own --wait=false >/dev/null
k delete pod -n kube-system system --wait=false >/dev/null
passed "an unlabelled pod, and labelled pods in $NS and kube-system, have no sidecar"

current="injection: no webhook answering follows failurePolicy Fail"
step "$current"
k scale deployment -n "$NS" session-operator --replicas=0 >/dev/null
# Stopped means no operator container runs (the kubelet may take longer to remove the pods
# themselves, which does not matter here: a terminating pod is out of the webhook's endpoints).
within 60 sh -c "[ -z \"\$(kubectl get pods -n $NS -l app.kubernetes.io/name=session-operator -o jsonpath='{.items[*].status.containerStatuses[*].state.running}')\" ]" || fail "operator containers did not stop: $(k get pods -n "$NS" -l app.kubernetes.io/name=session-operator)"
if refusal=$(app_pod shop refused sessions | k apply -f - 2>&1); then
  fail "a labelled pod was admitted with no webhook answering"
fi
echo "$refusal" | grep -q "inject.sessions.io" || fail "refused for another reason: $refusal"
app_pod shop plain2 | k apply -f - >/dev/null || fail "an unlabelled pod was refused with the webhook down"
k scale deployment -n "$NS" session-operator --replicas=2 >/dev/null
k rollout status deployment -n "$NS" session-operator --timeout=120s >/dev/null
passed "labelled pod refused by inject.sessions.io, unlabelled admitted"

# ---------------------------------------------------------------------------------------------
current="leader election: the leader pod deleted"
step "$current"
holder() { k get lease -n "$NS" session-operator-leader -o jsonpath='{.spec.holderIdentity}'; }
leads_now() { # the holder is a running operator pod
  local h
  h=$(holder)
  [ -n "$h" ] && k get pods -n "$NS" -l app.kubernetes.io/name=session-operator --field-selector=status.phase=Running -o name | grep -qx "pod/$h"
}
within 60 leads_now || fail "no running operator pod holds the lease"
leader=$(holder)
# From SIGTERM (the deletion) to the replica's "stopped cleanly", read from its own log.
follow_log() { k logs -n "$NS" -f "$1" >"$E2E_STATE/$1.log" 2>&1 & sleep 1; }
stop_seconds() { # stop_seconds <pod> <deleted at>
  local line at
  line=$(grep -m1 '"stopped cleanly"' "$E2E_STATE/$1.log") || fail "$1 never logged \"stopped cleanly\""
  at=$(echo "$line" | grep -o '"timestamp":"[^"]*"' | cut -d'"' -f4)
  awk -v a="$(date -d "$at" +%s.%N)" -v b="$2" 'BEGIN {printf "%.2f", a - b}'
}
logged_stop() { grep -q '"stopped cleanly"' "$E2E_STATE/$1.log"; }
checked_stop() { # checked_stop <role> <pod> <deleted at>: prints the seconds; fails past 5 s
  # The process's own word, not the pod's disappearance: this kubelet can take a minute to
  # remove a pod whose container has long exited.
  within 15 logged_stop "$2" || fail "the deleted $1 did not log \"stopped cleanly\" within 15 s"
  local stopped
  stopped=$(stop_seconds "$2" "$3")
  awk -v s="$stopped" 'BEGIN {exit !(s < 5)}' || fail "the $1 stopped $stopped s after SIGTERM (limit 5 s)"
  echo "$stopped"
}
follow_log "$leader"
deleted=$(date +%s.%N)
k delete pod -n "$NS" "$leader" --wait=false >/dev/null
took_over() { [ "$(holder)" != "$leader" ] && leads_now; }
within 20 took_over || fail "no other replica took the lease within 20 s (lease 15 s)"
took=$(since "$deleted")
stopped=$(checked_stop leader "$leader" "$deleted")
passed "$(holder) leads $took s after $leader was deleted (lease 15 s); the old leader stopped $stopped s after SIGTERM"

current="SIGTERM of a standby replica"
step "$current"
k rollout status deployment -n "$NS" session-operator --timeout=120s >/dev/null
# A running replica that is not leading and not already terminating (the old leader may be).
standby=$(k get pods -n "$NS" -l app.kubernetes.io/name=session-operator \
  -o jsonpath='{range .items[*]}{.metadata.name} {.status.phase} {.metadata.deletionTimestamp}x{"\n"}{end}' \
  | awk '$2 == "Running" && $3 == "x" {print $1}' | grep -vx "$(holder)" | head -1)
[ -n "$standby" ] || fail "no standby replica"
follow_log "$standby"
deleted=$(date +%s.%N)
k delete pod -n "$NS" "$standby" --wait=false >/dev/null
stopped=$(checked_stop standby "$standby" "$deleted")
passed "the standby stopped $stopped s after SIGTERM"

# ---------------------------------------------------------------------------------------------
current="deleting the SessionService collects all but the data"
step "$current"
k delete pod -n shop app plain plain2 --wait=false >/dev/null
k delete sessionservice -n shop sessions >/dev/null
left() { k get statefulset,deployment,service,configmap,poddisruptionbudget,horizontalpodautoscaler,networkpolicy -n shop -l sessions.io/session-service=sessions -o name; }
within 120 sh -c "[ -z \"\$(kubectl get statefulset,deployment,service,configmap,poddisruptionbudget,horizontalpodautoscaler,networkpolicy -n shop -l sessions.io/session-service=sessions -o name)\" ]" \
  || fail "left behind: $(left)"
pvc=$(k get pvc -n shop -o name)
[ -n "$pvc" ] || fail "the Redis data volume was deleted with the SessionService"
passed "every object collected; $pvc kept"

# ---------------------------------------------------------------------------------------------
current="cluster mode: six Redis pods form a cluster"
step "$current"
k create namespace ha >/dev/null
session_service ha sessions cluster "shards: 3
    replicasPerShard: 1" | k apply -f - >/dev/null
within 420 is_ready ha sessions || fail "not Ready after 420 s"
password=$(k get secret -n ha sessions-redis-admin -o jsonpath='{.data.password}' | base64 -d)
cluster_ok() {
  local pod
  for pod in $(seq 0 5); do
    k exec -n ha "sessions-redis-$pod" -- redis-cli --no-auth-warning --user admin -a "$password" cluster info 2>/dev/null \
      | grep -q '^cluster_state:ok' || return 1
  done
}
cluster_ok || fail "Ready, but not every node reports cluster_state:ok"
passed "Ready; cluster_state:ok on all 6 nodes"

current="cluster mode: sessions written through an injected sidecar"
step "$current"
app_pod ha app sessions | k apply -f - >/dev/null
within 120 sh -c "kubectl get pod -n ha app -o jsonpath='{.status.containerStatuses[*].ready}' | grep -qx 'true true'" \
  || fail "the injected pod did not become ready"
ids=()
for user in u1 u2 u3 u4 u5 u6 u7 u8 u9 u10; do
  created=$(call ha app POST /v1/sessions "{\"user_id\":\"$user\"}")
  [ "$(echo "$created" | head -1)" = 201 ] || fail "create answered: $created"
  ids+=("$(echo "$created" | session_id)")
done
passed "${#ids[@]} sessions created"

current="cluster mode: all six pods deleted at once heal by themselves"
step "$current"
redis_pods() { # uid, deletion mark, phase and IP of each Redis pod
  k get pods -n ha -l app.kubernetes.io/component=redis \
    -o jsonpath='{range .items[*]}{.metadata.uid} {.metadata.deletionTimestamp}x {.status.phase} {.status.podIP}{"\n"}{end}'
}
old_uids=$(redis_pods | cut -d' ' -f1)
old_ips=$(redis_pods | awk '{print $4}')
all_new_and_running() { # six pods, none of the old ones, none terminating, all Running
  local pods
  pods=$(redis_pods)
  [ "$(echo "$pods" | awk '$2 == "x" && $3 == "Running" && $4 != ""' | wc -l)" -eq 6 ] || return 1
  ! echo "$pods" | cut -d' ' -f1 | grep -qxF "$old_uids"
}
deleted=$(date +%s.%N)
k delete pod -n ha -l app.kubernetes.io/component=redis --wait=false >/dev/null
within 180 all_new_and_running || fail "the six pods did not come back"
back=$(since "$deleted")
restarted=$(date +%s.%N)
within 300 cluster_ok || fail "the cluster did not heal within 300 s of the pods running again"
healed=$(since "$restarted")
within 120 is_ready ha sessions || fail "RedisReady did not return"
ips_after=$(redis_pods | awk '{print $4}')
echo "$ips_after" | grep -qxF "$old_ips" && fail "a pod came back with its old IP: the test would not prove a repair"
ips_after=$(echo $ips_after)
for id in "${ids[@]}"; do
  answer=$(call ha app GET "/v1/sessions/$id")
  [ "$(echo "$answer" | head -1)" = 200 ] || fail "session $id after the restart: $answer"
done
passed "Kubernetes ran six new pods $back s after the deletion (new IPs $ips_after); cluster_state:ok $healed s after the last started; ${#ids[@]} of ${#ids[@]} sessions read back"

current="status command: kubectl sessions status on the healed cluster"
step "$current"
plugins="$E2E_STATE/plugins"
mkdir -p "$plugins"
ln -sf "$host_bin" "$plugins/kubectl-sessions"
screen=$(PATH="$plugins:$PATH" kubectl sessions status sessions -n ha) || fail "kubectl sessions status failed"
for expected in "SessionService ha/sessions: Ready for" "RedisReady" "ClusterReady" \
  "master sessions-redis-" "replicas: sessions-redis-" "failing: none" "Session service:" \
  "Webhook certificate: $NS/session-operator-webhook-tls expires"; do
  grep -qF "$expected" <<<"$screen" || fail "the status screen lacks \"$expected\": $screen"
done
json=$(PATH="$plugins:$PATH" kubectl sessions status sessions -n ha -o json) || fail "status -o json failed"
summary=$(python3 -c '
import json, sys
r = json.loads(sys.argv[1])
masters = r["sessionServices"][0]["redisCluster"]["masters"]
assert len(masters) == 3, masters
assert all(len(m["replicas"]) == 1 for m in masters), masters
assert sum(m["slots"] for m in masters) == 16384, masters
assert sum(m["dataSlots"] for m in masters) == 64, masters
days = r["webhookCertificate"]["daysLeft"]
assert days > 300, r["webhookCertificate"]
print("3 masters, data slots " + "/".join(str(m["dataSlots"]) for m in masters) + ", webhook certificate " + str(days) + " days left")
' "$json") || fail "the JSON status is not what the cluster is: $json"
echo "$screen" | sed 's/^/    | /'
passed "$summary"

current="dead letters: kubectl sessions dead-letters against the session service"
step "$current"
password=$(k get secret -n ha sessions-redis-admin -o jsonpath="{.data.password}" | base64 -d)
# A poison entry on the events stream the session service's consumer reads (the default key
# prefix `sess`; -c follows the cluster's redirection to the stream's master).
k exec -n ha sessions-redis-0 -- redis-cli -c --no-auth-warning --user admin -a "$password" \
  XADD 'sess:{events}:stream' '*' garbage e2e >/dev/null || fail "could not write the poison entry"
server_ip=$(k get pods -n ha -l sessions.io/session-service=sessions,app.kubernetes.io/component=server \
  --field-selector=status.phase=Running -o jsonpath='{.items[0].status.podIP}')
[ -n "$server_ip" ] || fail "no running session-service pod in ha"
letters() { PATH="$plugins:$PATH" kubectl sessions dead-letters sessions -n ha --url "http://$server_ip:7070" "$@"; }
within 60 sh -c "PATH=\"$plugins:\$PATH\" kubectl sessions dead-letters sessions -n ha --url http://$server_ip:7070 list | grep -q '1 dead letter'" \
  || fail "the consumer did not set the poison entry aside: $(letters list 2>&1)"
listed=$(letters list) || fail "dead-letters list failed"
grep -q malformed <<<"$listed" || fail "the dead letter is not listed as malformed: $listed"
id=$(letters -o json list | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["id"])')
status_line=$(PATH="$plugins:$PATH" kubectl sessions status sessions -n ha --url "http://$server_ip:7070" | grep 'Dead letters:') \
  || fail "the status screen does not count dead letters"
letters discard "$id" | grep -q "Discarded dead letter $id" || fail "discard failed"
letters list | grep -q "No dead letters" || fail "the dead letter is still listed after discard"
echo "$listed" | sed 's/^/    | /'
passed "set aside as malformed, listed, counted by status (\"$status_line\"), discarded"

trap - EXIT
echo
echo "==> e2e: all passed on Kubernetes $(k get --raw /version | grep gitVersion | cut -d'"' -f4)"
printf '%s\n' "${results[@]}"
