package qemu

import (
	"os"
	"testing"

	"github.com/kubelab/kubelab/internal/driver/drivertest"
)

func requireVMs(t testing.TB) {
	t.Helper()
	if testing.Short() {
		t.Skip("boots a VM; skipped with -short")
	}
	if os.Geteuid() != 0 {
		drivertest.Missing(t, "needs root (network namespaces, taps)")
	}
	for _, tool := range []string{"qemu-system-x86_64", "qemu-img", "ip"} {
		drivertest.RequireTool(t, tool)
	}
}
