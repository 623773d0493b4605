#!/usr/bin/env bash
# The main job: on a fresh Debian bookworm machine, as root, install what
# kubelab needs, build kubelab, build (or reuse) the node components and the
# node image, write the default lab and bring it up.
# Usage: hack/up.sh [--dir LABDIR]
set -euo pipefail
cd "$(dirname "$0")/.."

hack/install-deps.sh
export PATH="/usr/local/go/bin:$PATH"
go build -o bin/kubelab ./cmd/kubelab
kl() { bin/kubelab "$@"; }

kl components build
kl image build
if ! kl "$@" plan >/dev/null 2>&1; then
  kl "$@" init
fi
kl "$@" plan
kl "$@" render
if kl help up >/dev/null 2>&1; then
  kl "$@" up
else
  echo "kubelab up is not built yet (issue 4): the lab is planned and rendered; see the README"
fi
