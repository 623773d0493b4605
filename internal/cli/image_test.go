package cli

import (
	"bytes"
	"strings"
	"testing"
)

func TestImageCommands(t *testing.T) {
	tests := []struct {
		name    string
		args    []string
		wantOut string
		wantErr string
	}{
		{"list empty lab", []string{"image", "list"}, "NAME", ""},
		{"import refuses unverified", []string{"image", "import", "/nonexistent/flatcar.img.bz2"}, "", "unverified"},
		{"import needs a source", []string{"image", "import"}, "", "accepts 1 arg"},
		{"build with missing components", []string{"image", "build", "--components", "/nonexistent"}, "", "components manifest"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var out, errOut bytes.Buffer
			t.Setenv("KUBELAB_CACHE", t.TempDir())
			code := Main(append(tt.args, "--dir", t.TempDir()), &out, &errOut)
			if tt.wantErr != "" {
				if code == 0 || !strings.Contains(errOut.String(), tt.wantErr) {
					t.Fatalf("exit %d, stderr %q, want error containing %q", code, errOut.String(), tt.wantErr)
				}
				return
			}
			if code != 0 || !strings.Contains(out.String(), tt.wantOut) {
				t.Fatalf("exit %d, stdout %q, stderr %q", code, out.String(), errOut.String())
			}
		})
	}
}
