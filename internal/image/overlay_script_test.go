package image

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestApplyOverlayParsesMeta runs the overlay.json reading part of the
// shipped apply-overlay script (it cannot run whole on a build host: it
// writes /etc and talks to systemd) against table inputs.
func TestApplyOverlayParsesMeta(t *testing.T) {
	script, err := assets.ReadFile("assets/apply-overlay")
	if err != nil {
		t.Fatal(err)
	}
	s := string(script)
	begin := strings.Index(s, "# overlay.json is written")
	end := strings.Index(s, `if [ -n "$hostname" ]; then`)
	if begin < 0 || end < begin {
		t.Fatal("apply-overlay changed shape: markers around the parser not found")
	}
	parser := s[begin:end]
	tests := []struct {
		name, json, want string
		wantErr          bool
	}{
		{"compact", `{"enable":["containerd.service","kubelet.service"],"mask":["etcd.service"],"hostname":"cp1"}`,
			"containerd.service kubelet.service |etcd.service |cp1", false},
		{"indented", "{\n  \"enable\": [\n    \"a.service\",\n    \"b@x.service\"\n  ],\n  \"mask\": [],\n  \"hostname\": \"node-1.lab\"\n}\n",
			"a.service b@x.service ||node-1.lab", false},
		{"nothing", `{}`, "||", false},
		{"null arrays", `{"enable":null,"mask":null}`, "||", false},
		{"bad unit", `{"enable":["x; rm -rf /"]}`, "", true},
		{"bad hostname", `{"hostname":"a b"}`, "", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			meta := filepath.Join(t.TempDir(), "overlay.json")
			if err := os.WriteFile(meta, []byte(tt.json), 0o644); err != nil {
				t.Fatal(err)
			}
			prog := "set -eu\nmeta=" + meta + "\n" + parser + "\necho \"$enable|$mask|$hostname\"\n"
			out, err := exec.Command("sh", "-c", prog).CombinedOutput()
			if tt.wantErr {
				if err == nil {
					t.Fatalf("accepted: %s", out)
				}
				return
			}
			if err != nil {
				t.Fatalf("%v: %s", err, out)
			}
			if got := strings.TrimRight(string(out), "\n"); got != tt.want {
				t.Errorf("got %q, want %q", got, tt.want)
			}
		})
	}
}

// TestCloudInitConfigValid checks the baked cloud.cfg.d snippet against
// cloud-init's own schema.
func TestCloudInitConfigValid(t *testing.T) {
	requireTool(t, "cloud-init")
	data, err := assets.ReadFile("assets/99-kubelab.cfg")
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(t.TempDir(), "cfg.yaml")
	// The schema tool wants the user-data header; the settings are the same.
	if err := os.WriteFile(p, append([]byte("#cloud-config\n"), data...), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("cloud-init", "schema", "-c", p).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "Valid cloud-config") {
		t.Fatalf("cloud-init schema: %v\n%s", err, out)
	}
}
