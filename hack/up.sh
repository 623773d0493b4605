#!/usr/bin/env bash
# The main job: on a fresh Debian bookworm machine, as root, install what
# kubelab needs, build kubelab, build (or reuse) the node components and the
# node image, write the default lab (unless one exists) and bring it up.
# Usage: hack/up.sh [--dir LABDIR]
#
# The lab's bridge, taps and NAT rules are made in the network namespace this
# runs in. To keep them off the host's own network, run it in a namespace:
#   ip netns add lab && ip netns exec lab hack/up.sh
set -euo pipefail
cd "$(dirname "$0")/.."

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
kl "$@" up
kl "$@" status
