#!/usr/bin/env bash
# The test command: installs what the tests need, builds (or reuses from
# the cache) the node components, then runs every test, including the ones
# that boot real VMs under QEMU inside network namespaces they create.
# Usage: hack/test.sh [--e2e all] [extra go test flags, e.g. -run TestX]
#   --e2e all  also runs the end-to-end scenarios that do not fit CI's time
#              budget (listed in the README): extra steps on the same
#              clusters, the smallest libvirt cluster with a CA rotation,
#              and kubelab on a real Xen nested under QEMU (test/xen).
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "${1:-}" = "--e2e" ]; then
  [ "${2:-}" = "all" ] || { echo "usage: hack/test.sh [--e2e all] [go test flags]" >&2; exit 2; }
  export KUBELAB_E2E_EXTRA=1
  shift 2
fi

hack/install-deps.sh
export PATH="/usr/local/go/bin:$PATH"

echo "== gofmt, go vet"
unformatted=$(gofmt -l cmd internal test 2>/dev/null || true)
if [ -n "$unformatted" ]; then
  echo "gofmt would change: $unformatted" >&2
  exit 1
fi
go vet ./...

echo "== components (built from Go modules once per version, then cached in ${KUBELAB_CACHE:-~/.cache/kubelab})"
go build -o bin/kubelab ./cmd/kubelab
bin/kubelab components build

echo "== go test"
# One package at a time: the VM tests need both cores, and TCG boots slow
# down badly when they compete with compilation.
go test -p 1 -timeout 80m -count=1 "$@" ./...
