package lab

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/kubelab/kubelab/internal/driver"
	"github.com/kubelab/kubelab/internal/plan"
	"github.com/kubelab/kubelab/internal/progress"
	"github.com/kubelab/kubelab/internal/spec"
	"github.com/kubelab/kubelab/internal/versions"
)

// stepClock advances by one second each time it is read.
func stepClock() func() time.Time {
	t := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	return func() time.Time {
		t = t.Add(time.Second)
		return t
	}
}

// jsonEvents parses a JSON progress stream.
func jsonEvents(t *testing.T, out string) []progress.JSONEvent {
	t.Helper()
	var evs []progress.JSONEvent
	for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
		if l == "" {
			continue
		}
		var ev progress.JSONEvent
		if err := json.Unmarshal([]byte(l), &ev); err != nil {
			t.Fatalf("not a JSON event: %q: %v", l, err)
		}
		evs = append(evs, ev)
	}
	return evs
}

func TestRunnerReportsPhases(t *testing.T) {
	boom := errors.New("boom")
	var rep *progress.Reporter
	phases := []Phase{
		{Name: "render", Run: func(context.Context) error { return nil }},
		{Name: "boot", Run: func(context.Context) error { rep.Status("cp1", "kernel"); return nil }},
		{Name: "apiserver", Run: func(context.Context) error { return boom }},
		{Name: "never", Run: func(context.Context) error { t.Error("a phase after a failure ran"); return nil }},
	}
	var out, human bytes.Buffer
	rep, err := progress.New(progress.Options{Out: &out, Err: &human, Format: progress.FormatJSON})
	if err != nil {
		t.Fatal(err)
	}
	timings, err := Runner{Progress: rep, Now: stepClock()}.Run(context.Background(), phases)
	rep.Close()
	if !errors.Is(err, boom) || !strings.HasPrefix(err.Error(), "apiserver: ") {
		t.Fatalf("error %v", err)
	}
	var got []string
	for _, ev := range jsonEvents(t, out.String()) {
		s := string(ev.Event) + " " + ev.Phase
		if ev.Subject != "" {
			s += " " + ev.Subject + "=" + ev.Status
		}
		if ev.Seconds != nil && ev.Event != progress.KindStatus {
			s += fmt.Sprintf(" %gs", *ev.Seconds)
		}
		if ev.Error != "" {
			s += " error=" + ev.Error
		}
		got = append(got, s)
	}
	want := []string{
		"phase-start render", "phase-done render 1s",
		"phase-start boot", "status boot cp1=kernel", "phase-done boot 1s",
		"phase-start apiserver", "phase-failed apiserver 1s error=boom",
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("events:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if human.Len() != 0 {
		t.Errorf("a failed run printed a total: %q", human.String())
	}
	// The timings are the runner's, as before.
	wantT := []Timing{{"render", 1, ""}, {"boot", 1, ""}, {"apiserver", 1, "boom"}}
	if fmt.Sprint(timings) != fmt.Sprint(wantT) {
		t.Errorf("timings %v, want %v", timings, wantT)
	}
}

// TestRunnerWithoutReporter: with only Out, the output is the one-line-
// per-phase text it always was.
func TestRunnerWithoutReporter(t *testing.T) {
	ok := func(context.Context) error { return nil }
	tests := []struct {
		name   string
		dry    bool
		phases []Phase
		want   string
	}{{
		name:   "run",
		phases: []Phase{{Name: "render", Run: ok}, {Name: "kubeconfig", Run: ok}},
		want:   "==> render     done in 1s\n==> kubeconfig done in 1s\n==> total      5s\n",
	}, {
		name:   "failure",
		phases: []Phase{{Name: "boot", Run: func(context.Context) error { return errors.New("x") }}},
		want:   "==> boot       FAILED after 1s\n",
	}, {
		name: "dry run",
		dry:  true,
		phases: []Phase{{Name: "boot", Describe: func() string { return "start every node" },
			Run: func(context.Context) error { t.Error("dry run ran a phase"); return nil }}},
		want: "would boot       start every node\n",
	}}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var out bytes.Buffer
			Runner{Out: &out, DryRun: tc.dry, Now: stepClock()}.Run(context.Background(), tc.phases)
			if out.String() != tc.want {
				t.Errorf("output %q, want %q", out.String(), tc.want)
			}
		})
	}
}

// fakeDriver boots machines by writing console text on a schedule.
type fakeDriver struct {
	mu      sync.Mutex
	running map[string]bool
	// boots maps a machine to what Start writes to its console: each
	// entry after a delay from the previous one. A machine in crash
	// stops running right after its first write.
	boots map[string][]timedLine
	crash map[string]bool
	wg    sync.WaitGroup
}

type timedLine struct {
	after time.Duration
	text  string
}

func (d *fakeDriver) Name() string                                 { return "fake" }
func (d *fakeDriver) Create(context.Context, driver.Machine) error { return nil }
func (d *fakeDriver) Stop(context.Context, driver.Machine) error   { return nil }
func (d *fakeDriver) Delete(context.Context, driver.Machine) error { return nil }
func (d *fakeDriver) ConsolePath(m driver.Machine) string          { return filepath.Join(m.Dir, "console.log") }
func (d *fakeDriver) State(_ context.Context, m driver.Machine) (driver.State, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.running[m.Name] {
		return driver.StateRunning, nil
	}
	return driver.StateStopped, nil
}

func (d *fakeDriver) Start(_ context.Context, m driver.Machine) error {
	if err := os.MkdirAll(m.Dir, 0o755); err != nil {
		return err
	}
	f, err := os.OpenFile(d.ConsolePath(m), os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		return err
	}
	lines := d.boots[m.Name]
	// The first line is written before Start returns.
	f.WriteString(lines[0].text)
	d.mu.Lock()
	d.running[m.Name] = !d.crash[m.Name]
	d.mu.Unlock()
	d.wg.Add(1)
	go func() {
		defer d.wg.Done()
		defer f.Close()
		for _, l := range lines[1:] {
			time.Sleep(l.after)
			f.WriteString(l.text)
		}
	}()
	return nil
}

// TestBootReportsStages boots three fake nodes: one goes through its
// stages, one was running already, one crashes after the kernel banner.
func TestBootReportsStages(t *testing.T) {
	dir := t.TempDir()
	ready := func(n string) string { return versions.ReadyMarker + " " + n + "\n" }
	d := &fakeDriver{
		running: map[string]bool{"cp2": true},
		boots: map[string][]timedLine{
			"cp1": {{0, "SeaBIOS\n[ 0.0] Linux version 6.1.0\n"}, {500 * time.Millisecond, "[ 3.1] systemd[1]: starting\n"},
				{time.Second, ready("cp1")}},
			"w1": {{0, "Linux version 6.1.0\nKernel panic - not syncing\n"}},
		},
		crash: map[string]bool{"w1": true},
	}
	defer d.wg.Wait()
	e := &Env{Layout: Layout{Dir: dir}, Lab: &spec.Lab{Name: "lab"}, Plan: &plan.Plan{}, Driver: d}
	cls := []plan.Cluster{{Name: "k1", Nodes: []plan.Node{{Name: "cp1"}, {Name: "cp2"}, {Name: "w1"}}}}
	// cp2 runs already and has booted.
	m, _ := e.Machine(cls[0], cls[0].Nodes[1])
	if err := os.MkdirAll(m.Dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(d.ConsolePath(m), []byte("Linux version\nsystemd[1]: x\n"+ready("cp2")), 0o644); err != nil {
		t.Fatal(err)
	}

	var out bytes.Buffer
	rep, err := progress.New(progress.Options{Out: &out, Format: progress.FormatJSON})
	if err != nil {
		t.Fatal(err)
	}
	e.Progress = rep
	rep.PhaseStart("boot")
	err = e.boot(context.Background(), cls, 30*time.Second)
	rep.Close()
	if err == nil || !strings.Contains(err.Error(), "node w1: did not finish booting") || strings.Contains(err.Error(), "node cp1") {
		t.Fatalf("error %v, want only w1 failing", err)
	}

	statuses := map[string][]string{}
	for _, ev := range jsonEvents(t, out.String()) {
		if ev.Event != progress.KindStatus {
			continue
		}
		if ev.Phase != "boot" {
			t.Errorf("status outside its phase: %+v", ev)
		}
		s := ev.Status
		if ev.Final {
			s = "final:" + s
		}
		statuses[ev.Subject] = append(statuses[ev.Subject], s)
	}
	// cp1 goes forward through its stages; polls are a second apart, so a
	// middle stage may be skipped, but the order never breaks.
	order := map[string]int{"starting": 0, "kernel": 1, "systemd": 2, "final:ready": 3}
	cp1 := statuses["cp1"]
	if len(cp1) < 2 || cp1[0] != "starting" || cp1[len(cp1)-1] != "final:ready" {
		t.Errorf("cp1: %v", cp1)
	}
	for i := 1; i < len(cp1); i++ {
		a, okA := order[cp1[i-1]]
		b, okB := order[cp1[i]]
		if !okA || !okB || b <= a {
			t.Errorf("cp1 stages out of order: %v", cp1)
		}
	}
	if got := strings.Join(statuses["cp2"], ","); got != "running, reading its console,final:ready" {
		t.Errorf("cp2: %s", got)
	}
	if got := strings.Join(statuses["w1"], ","); got != "starting,kernel,final:failed during stage kernel" {
		t.Errorf("w1: %s", got)
	}
}
