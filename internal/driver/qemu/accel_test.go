package qemu

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestKVMProbeAnswers(t *testing.T) {
	t.Setenv("KUBELAB_CACHE", t.TempDir())
	notAKernel := filepath.Join(t.TempDir(), "vmlinuz")
	if err := os.WriteFile(notAKernel, []byte("not a kernel"), 0o644); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name, forced, kernel, defaultKernel string
		want, wantErr                       string
	}{
		{name: "forced kvm", forced: AccelKVM, want: AccelKVM},
		{name: "forced tcg", forced: AccelTCG, kernel: notAKernel, want: AccelTCG},
		{name: "unknown", forced: "hvf", wantErr: `unknown accelerator "hvf"`},
		// KVM is never assumed without a kernel booted under it.
		{name: "no kernel at all", want: AccelTCG},
		{name: "default kernel not there yet", defaultKernel: filepath.Join(t.TempDir(), "missing"), want: AccelTCG},
		// QEMU cannot boot it, so it does not reach a panic: not KVM,
		// whatever /dev/kvm says.
		{name: "a file that is no kernel", kernel: notAKernel, want: AccelTCG},
		{name: "default kernel that is no kernel", defaultKernel: notAKernel, want: AccelTCG},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := &KVMProbe{Kernel: tt.defaultKernel}
			got, err := p.Answer(context.Background(), "qemu-system-x86_64", tt.forced, tt.kernel)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("Answer = %q, %v; want %q", got, err, tt.want)
			}
		})
	}
}

// A kernel's answer stands for later questions without a kernel: the
// machines started with it and the timeouts agree.
func TestKVMProbeRemembersTheKernelsAnswer(t *testing.T) {
	t.Setenv("KUBELAB_CACHE", t.TempDir())
	notAKernel := filepath.Join(t.TempDir(), "vmlinuz")
	if err := os.WriteFile(notAKernel, []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	p := &KVMProbe{}
	if _, err := p.Answer(context.Background(), "qemu-system-x86_64", "", notAKernel); err != nil {
		t.Fatal(err)
	}
	if p.answers[notAKernel] != AccelTCG || p.last != AccelTCG {
		t.Fatalf("answers %v last %q; want the kernel's tcg remembered", p.answers, p.last)
	}
	if got, _ := p.Answer(context.Background(), "qemu-system-x86_64", "", ""); got != AccelTCG {
		t.Fatalf("later answer without a kernel = %q", got)
	}
}

// A later command (a new probe value) takes the kept answer without
// probing: a kept "kvm" for a file that is no kernel proves no boot was
// tried. A changed kernel file asks again.
func TestKVMProbeAnswerKeptForLaterCommands(t *testing.T) {
	t.Setenv("KUBELAB_CACHE", t.TempDir())
	kernel := filepath.Join(t.TempDir(), "vmlinuz")
	if err := os.WriteFile(kernel, []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if a, err := (&KVMProbe{}).Answer(ctx, "qemu-system-x86_64", "", kernel); err != nil || a != AccelTCG {
		t.Fatalf("first probe: %q %v", a, err)
	}
	cache := probeCacheFile("qemu-system-x86_64", kernel)
	if got := readProbeCache(cache); got != AccelTCG {
		t.Fatalf("kept answer in %s: %q", cache, got)
	}
	writeProbeCache(cache, AccelKVM)
	if a, _ := (&KVMProbe{}).Answer(ctx, "qemu-system-x86_64", "", kernel); a != AccelKVM {
		t.Fatalf("a later command probed again instead of taking the kept answer: %q", a)
	}
	if err := os.WriteFile(kernel, []byte("another kernel"), 0o644); err != nil {
		t.Fatal(err)
	}
	if a, _ := (&KVMProbe{}).Answer(ctx, "qemu-system-x86_64", "", kernel); a != AccelTCG {
		t.Fatalf("a changed kernel took the old answer: %q", a)
	}
}
