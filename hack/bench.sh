#!/usr/bin/env bash
# The benchmark: the default lab against the boot floor, in one run on this
# machine (see test/bench). Installs and builds on the host (the network is
# needed for that), then runs every VM inside a network namespace it makes
# and deletes afterwards. Writes bench/report.md and bench/report.json.
# Usage: hack/bench.sh [-n RUNS] [-idle 60s] [-skip floor,stopstart,suspend,snapshot]
set -euo pipefail
cd "$(dirname "$0")/.."

hack/install-deps.sh
export PATH="/usr/local/go/bin:$PATH"
go build -o bin/kubelab ./cmd/kubelab
go build -o bin/kubelab-bench ./test/bench
bin/kubelab components build

ns="klbench-$$"
dir=$(mktemp -d /tmp/kubelab-bench-XXXXXX)
cleanup() {
  ip netns exec "$ns" bin/kubelab --dir "$dir" destroy --purge >/dev/null 2>&1 || true
  ip netns del "$ns" 2>/dev/null || true
  rm -rf "$dir"
}
trap cleanup EXIT
# The image needs Debian's archive when its base is not cached: build it here.
bin/kubelab --dir "$dir" init >/dev/null
bin/kubelab --dir "$dir" image build
ip netns add "$ns"
ip -n "$ns" link set lo up
ip netns exec "$ns" bin/kubelab-bench -kubelab bin/kubelab -dir "$dir" -out bench "$@"
