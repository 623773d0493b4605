// Command kubelab turns one Linux host into a lab of real multi-node
// Kubernetes clusters running in virtual machines.
package main

import (
	"os"

	"github.com/kubelab/kubelab/internal/cli"
)

func main() {
	os.Exit(cli.Main(os.Args[1:], os.Stdout, os.Stderr))
}
