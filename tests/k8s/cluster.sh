#!/usr/bin/env bash
# A real one-node Kubernetes cluster on this machine, for the end-to-end suite:
#   cluster.sh up     start etcd, the control plane, containerd, the kubelet, kube-proxy and DNS
#   cluster.sh down   stop all of it and remove every pod, container and rule it made
# Binaries come from build-kubernetes.sh (Debian's kubernetes v1.20.2), the runtime from
# Debian's containerd and runc (through runc-wrapper), pod networking from Debian's CNI
# bridge plugin on a bridge inside this machine (no masquerade: pods reach nothing outside),
# Services from kube-proxy in iptables mode, and cluster DNS from dnsmasq fed by dns-feeder.py.
# Writes $E2E_STATE/kubeconfig (cluster-admin) for the suite.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
: "${E2E_CACHE:=/var/cache/session-operator-e2e}"
: "${E2E_STATE:=/run/session-operator-e2e}"
bin="$E2E_CACHE/bin"
S="$E2E_STATE"
NODE=e2e-node
BRIDGE=sess0
GATEWAY=10.244.0.1        # the node's IP, the API server's address and cluster DNS
POD_CIDR=10.244.0.0/24
SERVICE_CIDR=10.96.0.0/24
API_SERVICE_IP=10.96.0.1
API="https://$GATEWAY:6443"

log() { echo "==> cluster: $*"; }

start() { # start <name> <command...>: in the background, logging to $S/log/<name>.log
  local name=$1; shift
  setsid "$@" >"$S/log/$name.log" 2>&1 &
  echo $! >"$S/pid/$name"
}

wait_for() { # wait_for <seconds> <description> <command...>
  local seconds=$1 what=$2; shift 2
  for _ in $(seq $((seconds * 5))); do
    "$@" >/dev/null 2>&1 && return 0
    sleep 0.2
  done
  echo "cluster: $what did not happen within ${seconds}s" >&2
  return 1
}

pki() {
  local d="$S/pki"
  mkdir -p "$d"
  [ -f "$d/apiserver.crt" ] && return 0
  openssl req -x509 -newkey rsa:2048 -nodes -days 30 -subj "/CN=e2e-ca" \
    -keyout "$d/ca.key" -out "$d/ca.crt" 2>/dev/null
  openssl req -newkey rsa:2048 -nodes -subj "/CN=kube-apiserver" \
    -keyout "$d/apiserver.key" -out "$d/apiserver.csr" 2>/dev/null
  printf 'subjectAltName=IP:%s,IP:%s,IP:127.0.0.1,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local\n' \
    "$API_SERVICE_IP" "$GATEWAY" >"$d/san.ext"
  openssl x509 -req -in "$d/apiserver.csr" -CA "$d/ca.crt" -CAkey "$d/ca.key" -CAcreateserial \
    -days 30 -extfile "$d/san.ext" -out "$d/apiserver.crt" 2>/dev/null
  openssl genrsa -out "$d/sa.key" 2048 2>/dev/null
  openssl rsa -in "$d/sa.key" -pubout -out "$d/sa.pub" 2>/dev/null
  # Static tokens: one identity per component, as kubeadm would give them certificates.
  local admin cm sched kubelet proxy
  admin=$(openssl rand -hex 16); cm=$(openssl rand -hex 16); sched=$(openssl rand -hex 16)
  kubelet=$(openssl rand -hex 16); proxy=$(openssl rand -hex 16)
  cat >"$d/tokens.csv" <<EOF
$admin,e2e-admin,1,"system:masters"
$cm,system:kube-controller-manager,2
$sched,system:kube-scheduler,3
$kubelet,system:node:$NODE,4,"system:nodes"
$proxy,system:kube-proxy,5
EOF
  kubeconfig "$S/kubeconfig" "$admin"
  kubeconfig "$S/controller-manager.kubeconfig" "$cm"
  kubeconfig "$S/scheduler.kubeconfig" "$sched"
  kubeconfig "$S/kubelet.kubeconfig" "$kubelet"
  kubeconfig "$S/kube-proxy.kubeconfig" "$proxy"
}

kubeconfig() { # kubeconfig <file> <token>
  cat >"$1" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: e2e
  cluster: {server: "$API", certificate-authority: "$S/pki/ca.crt"}
users:
- name: e2e
  user: {token: "$2"}
contexts:
- name: e2e
  context: {cluster: e2e, user: e2e}
current-context: e2e
EOF
}

network() {
  sysctl -qw net.ipv4.ip_forward=1
  sysctl -qw net.bridge.bridge-nf-call-iptables=1 2>/dev/null || true
  if ! ip link show "$BRIDGE" >/dev/null 2>&1; then
    ip link add "$BRIDGE" type bridge
  fi
  ip addr replace "$GATEWAY/24" dev "$BRIDGE"
  ip link set "$BRIDGE" up
  mkdir -p "$S/cni"
  cat >"$S/cni/10-e2e.conflist" <<EOF
{
  "cniVersion": "0.4.0",
  "name": "e2e",
  "plugins": [
    {"type": "bridge", "bridge": "$BRIDGE", "isGateway": true, "ipMasq": false, "hairpinMode": true,
     "ipam": {"type": "host-local", "ranges": [[{"subnet": "$POD_CIDR", "gateway": "$GATEWAY"}]],
              "routes": [{"dst": "0.0.0.0/0"}], "dataDir": "$S/cni-ipam"}},
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
EOF
}

containerd_up() {
  mkdir -p "$E2E_CACHE/containerd" "$S/containerd"
  cat >"$S/containerd.toml" <<EOF
version = 2
root = "$E2E_CACHE/containerd"
state = "$S/containerd/state"
[grpc]
  address = "$S/containerd/containerd.sock"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "localhost/pause:3.4.1"
  enable_unprivileged_ports = false
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        BinaryName = "$here/runc-wrapper"
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$S/cni"
EOF
  start containerd containerd --config "$S/containerd.toml"
  wait_for 30 "containerd serving" ctr --address "$S/containerd/containerd.sock" version
}

control_plane_up() {
  mkdir -p "$S/etcd"
  start etcd etcd --data-dir "$S/etcd" --listen-client-urls http://127.0.0.1:2479 \
    --advertise-client-urls http://127.0.0.1:2479 --listen-peer-urls http://127.0.0.1:2480
  wait_for 30 "etcd serving" curl -sf http://127.0.0.1:2479/health
  start kube-apiserver "$bin/kube-apiserver" \
    --etcd-servers=http://127.0.0.1:2479 \
    --bind-address="$GATEWAY" --advertise-address="$GATEWAY" --secure-port=6443 \
    --tls-cert-file="$S/pki/apiserver.crt" --tls-private-key-file="$S/pki/apiserver.key" \
    --client-ca-file="$S/pki/ca.crt" --token-auth-file="$S/pki/tokens.csv" \
    --authorization-mode=Node,RBAC \
    --service-cluster-ip-range="$SERVICE_CIDR" \
    --service-account-issuer=https://kubernetes.default.svc.cluster.local \
    --service-account-key-file="$S/pki/sa.pub" \
    --service-account-signing-key-file="$S/pki/sa.key" \
    --api-audiences=https://kubernetes.default.svc.cluster.local \
    --allow-privileged=true --enable-admission-plugins=NodeRestriction \
    --kubelet-preferred-address-types=InternalIP
  wait_for 60 "the API server serving" kubectl --kubeconfig "$S/kubeconfig" get --raw /readyz
  start kube-controller-manager "$bin/kube-controller-manager" \
    --kubeconfig="$S/controller-manager.kubeconfig" \
    --authentication-kubeconfig="$S/controller-manager.kubeconfig" \
    --authorization-kubeconfig="$S/controller-manager.kubeconfig" \
    --service-account-private-key-file="$S/pki/sa.key" --root-ca-file="$S/pki/ca.crt" \
    --use-service-account-credentials=true --leader-elect=false \
    --bind-address=127.0.0.1 --port=0 --secure-port=10257 \
    --controllers='*'
  start kube-scheduler "$bin/kube-scheduler" \
    --kubeconfig="$S/scheduler.kubeconfig" \
    --authentication-kubeconfig="$S/scheduler.kubeconfig" \
    --authorization-kubeconfig="$S/scheduler.kubeconfig" \
    --leader-elect=false --bind-address=127.0.0.1 --port=0 --secure-port=10259
}

node_up() {
  mkdir -p "$S/kubelet" "$S/pv"
  printf 'nameserver %s\n' "$GATEWAY" >"$S/resolv.conf"
  start kubelet "$bin/kubelet" \
    --kubeconfig="$S/kubelet.kubeconfig" --hostname-override="$NODE" --node-ip="$GATEWAY" \
    --container-runtime=remote \
    --container-runtime-endpoint="unix://$S/containerd/containerd.sock" \
    --cgroup-driver=cgroupfs --cgroups-per-qos=false --enforce-node-allocatable= \
    --root-dir="$S/kubelet" --cert-dir="$S/kubelet/pki" \
    --cluster-dns="$GATEWAY" --cluster-domain=cluster.local --resolv-conf="$S/resolv.conf" \
    --anonymous-auth=true --authorization-mode=AlwaysAllow --read-only-port=0 \
    --fail-swap-on=false --serialize-image-pulls=false \
    --eviction-hard='memory.available<100Mi,nodefs.available<1%,imagefs.available<1%' \
    --image-gc-high-threshold=99 --image-gc-low-threshold=98 \
    --volume-plugin-dir="$S/kubelet/volume-plugins"
  start kube-proxy "$bin/kube-proxy" \
    --kubeconfig="$S/kube-proxy.kubeconfig" --hostname-override="$NODE" \
    --proxy-mode=iptables --cluster-cidr="$POD_CIDR" --bind-address="$GATEWAY" \
    --conntrack-max-per-core=0 --metrics-bind-address=127.0.0.1:10249 \
    --healthz-bind-address=127.0.0.1:10256
  mkdir -p "$S/dns"
  : >"$S/dns/cluster.hosts"
  start dnsmasq dnsmasq --keep-in-foreground --no-resolv --no-hosts --no-poll \
    --listen-address="$GATEWAY" --bind-interfaces --hostsdir="$S/dns" \
    --local=/cluster.local/ --domain-needed --local-ttl=1 --user=root --pid-file=
  start dns-feeder python3 "$here/dns-feeder.py" "$S/kubeconfig" "$S/dns/cluster.hosts"
  local k=(kubectl --kubeconfig "$S/kubeconfig")
  wait_for 120 "node $NODE registered" "${k[@]}" get node "$NODE"
  wait_for 120 "node $NODE Ready" sh -c "$(printf '%q ' "${k[@]}") get node $NODE -o jsonpath='{.status.conditions[?(@.type==\"Ready\")].status}' | grep -qx True"
  # One node, no lifecycle decisions to make: the not-ready taint of its start goes now.
  "${k[@]}" taint node "$NODE" node.kubernetes.io/not-ready- >/dev/null 2>&1 || true
  # Volumes: hostPath PersistentVolumes under $S/pv, bound by a default no-provisioner class.
  "${k[@]}" apply -f - >/dev/null <<EOF
apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata:
  name: e2e-local
  annotations: {storageclass.kubernetes.io/is-default-class: "true"}
provisioner: kubernetes.io/no-provisioner
volumeBindingMode: Immediate
reclaimPolicy: Retain
EOF
  for i in $(seq 0 15); do
    mkdir -p "$S/pv/pv$i" && chmod 0777 "$S/pv/pv$i"
    cat <<EOF
---
apiVersion: v1
kind: PersistentVolume
metadata: {name: e2e-pv$i}
spec:
  capacity: {storage: 2Gi}
  accessModes: [ReadWriteOnce]
  persistentVolumeReclaimPolicy: Retain
  storageClassName: e2e-local
  hostPath: {path: "$S/pv/pv$i", type: DirectoryOrCreate}
EOF
  done | "${k[@]}" apply -f - >/dev/null
}

up() {
  for b in kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy; do
    [ -x "$bin/$b" ] || { echo "cluster: $bin/$b is missing: run build-kubernetes.sh" >&2; exit 1; }
  done
  mkdir -p "$S/log" "$S/pid"
  pki
  network
  containerd_up
  control_plane_up
  node_up
  log "up: kubectl --kubeconfig $S/kubeconfig (logs in $S/log)"
}

down() {
  local k=(kubectl --kubeconfig "$S/kubeconfig" --request-timeout=5s)
  if [ -f "$S/pid/kubelet" ]; then
    # Pods first, while the kubelet can still stop them.
    "${k[@]}" delete namespace --all --wait=false >/dev/null 2>&1 || true
  fi
  for name in dns-feeder dnsmasq kube-proxy kubelet kube-scheduler kube-controller-manager kube-apiserver etcd; do
    [ -f "$S/pid/$name" ] || continue
    kill -- "-$(cat "$S/pid/$name")" 2>/dev/null || kill "$(cat "$S/pid/$name")" 2>/dev/null || true
    rm -f "$S/pid/$name"
  done
  if [ -S "$S/containerd/containerd.sock" ]; then
    local c=(ctr --address "$S/containerd/containerd.sock" -n k8s.io)
    for task in $("${c[@]}" tasks ls -q 2>/dev/null); do "${c[@]}" tasks kill -s SIGKILL "$task" >/dev/null 2>&1 || true; done
    sleep 1
    for task in $("${c[@]}" tasks ls -q 2>/dev/null); do "${c[@]}" tasks delete -f "$task" >/dev/null 2>&1 || true; done
    for container in $("${c[@]}" containers ls -q 2>/dev/null); do "${c[@]}" containers delete "$container" >/dev/null 2>&1 || true; done
  fi
  if [ -f "$S/pid/containerd" ]; then
    kill "$(cat "$S/pid/containerd")" 2>/dev/null || true
    rm -f "$S/pid/containerd"
  fi
  pkill -f "containerd-shim-runc-v2 -namespace k8s.io -address $S/containerd" 2>/dev/null || true
  # kube-proxy's rules and the pod network.
  [ -x "$bin/kube-proxy" ] && "$bin/kube-proxy" --cleanup >/dev/null 2>&1 || true
  ip link delete "$BRIDGE" 2>/dev/null || true
  for mount in $(awk -v s="$S" '$2 ~ "^"s {print $2}' /proc/mounts | sort -r); do umount -l "$mount" 2>/dev/null || true; done
  rm -rf "$S"
  log "down"
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  *) echo "usage: $0 up|down" >&2; exit 2 ;;
esac
