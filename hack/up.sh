#!/usr/bin/env bash
# The main job: on a fresh Debian bookworm machine, as root, install what
# kubelab needs, build kubelab, build (or reuse) the node components and the
# node image, write the default lab (unless one exists) and bring it up.
# Usage: hack/up.sh [--dir LABDIR]
#
# Installing and building need the network (Debian's archive, the Go module
# proxy), so they run here. The lab itself (bridge, taps, NAT rules, VMs)
# runs inside a network namespace this script makes (KUBELAB_NETNS, default
# "kubelab"), which has no link to the host's network: nothing of the lab
# touches the host's interfaces, routes or firewall. Reach the cluster from
# inside that namespace, as the script prints at the end.
set -euo pipefail
cd "$(dirname "$0")/.."

ns=${KUBELAB_NETNS:-kubelab}

hack/install-deps.sh
export PATH="/usr/local/go/bin:$PATH"
go build -o bin/kubelab ./cmd/kubelab
kl() { bin/kubelab "$@"; }

kl components build
kl "$@" image build
if ! kl "$@" plan >/dev/null 2>&1; then
  # No lab yet: write the default one. init refuses to overwrite an existing
  # lab.yaml; if that is why plan failed, show plan's own error instead.
  kl "$@" init || { kl "$@" plan; exit 1; }
fi
kl "$@" plan

if ! ip netns list | grep -qw "^$ns"; then
  echo "== network namespace $ns (the lab lives here, off the host's network)"
  ip netns add "$ns"
  ip -n "$ns" link set lo up
fi
inns() { ip netns exec "$ns" "$@"; }
inns bin/kubelab "$@" up --no-merge
inns bin/kubelab "$@" status

kubectl=$(ls -d "${KUBELAB_CACHE:-$HOME/.cache/kubelab}"/components/*/bin/kubectl 2>/dev/null | head -1)
cat <<EOF

The lab runs inside network namespace "$ns". From there:
  ip netns exec $ns bin/kubelab $* status
  ip netns exec $ns ${kubectl:-kubectl} --kubeconfig <labdir>/clusters/<cluster>/kubeconfig get nodes
  ip netns exec $ns bin/kubelab $* ssh w1
Remove everything with:
  ip netns exec $ns bin/kubelab $* destroy --purge && ip netns del $ns
EOF
