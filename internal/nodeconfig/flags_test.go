package nodeconfig

import (
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/kubelab/kubelab/internal/plan"
)

var flagRE = regexp.MustCompile(`(?m)^\s+(--[a-z0-9-]+)`)

// execFlags returns the binary and flag names of a unit's ExecStart.
func execFlags(unit string) (string, []string) {
	_, rest, ok := strings.Cut(unit, "\nExecStart=")
	if !ok {
		return "", nil
	}
	cmd, _, _ := strings.Cut(rest, "\n[")
	var lines []string
	for _, l := range strings.Split(cmd, "\n") {
		lines = append(lines, l)
		if !strings.HasSuffix(l, "\\") {
			break
		}
	}
	joined := strings.Join(lines, "\n")
	fields := strings.Fields(strings.ReplaceAll(joined, "\\\n", " "))
	var flags []string
	for _, f := range fields[1:] {
		if strings.HasPrefix(f, "--") {
			name, _, _ := strings.Cut(f, "=")
			flags = append(flags, name)
		}
	}
	return fields[0], flags
}

// TestUnitFlagsKnown asks each real component for its flags (--help) and
// checks every flag a generated unit passes exists, so a typo or a flag
// removed upstream fails here instead of in a booted VM.
func TestUnitFlagsKnown(t *testing.T) {
	p := planFor(t, labSpec("flannel", "", soloNodes...))
	built := buildAll(t, p, func(plan.Cluster) Credentials { return newFakeCreds() })
	n := built["solo"]
	for _, u := range n.Units {
		binary, flags := execFlags(u.Contents)
		if binary == "" || !strings.HasPrefix(binary, "/usr/local/bin/") || len(flags) == 0 {
			continue
		}
		t.Run(u.Name, func(t *testing.T) {
			bin := componentBinary(t, filepath.Base(binary))
			out, _ := exec.Command(bin, "--help").CombinedOutput()
			known := map[string]bool{}
			for _, m := range flagRE.FindAllStringSubmatch(string(out), -1) {
				known[m[1]] = true
			}
			// Go's flag package (etcd, flanneld) prints "  -name"; accept both.
			for _, m := range regexp.MustCompile(`(?m)^\s+-([a-z0-9-]+)`).FindAllStringSubmatch(string(out), -1) {
				known["--"+m[1]] = true
			}
			if len(known) < 3 {
				t.Fatalf("%s --help listed no flags:\n%.500s", bin, out)
			}
			for _, f := range flags {
				if !known[f] {
					t.Errorf("%s does not know %s", filepath.Base(binary), f)
				}
			}
		})
	}
}

func TestExecFlags(t *testing.T) {
	bin, flags := execFlags("[Service]\nExecStart=/usr/local/bin/x \\\n  --a=1 \\\n  --b\nRestart=always\n")
	if bin != "/usr/local/bin/x" || strings.Join(flags, " ") != "--a --b" {
		t.Fatalf("execFlags = %q %q", bin, flags)
	}
}
