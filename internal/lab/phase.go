// Package lab runs a lab's lifecycle as ordered lists of named phases:
// render, and (growing) disks, network, boot, readiness, add-ons. Each
// phase is timed, reported as it starts and completes (with live status
// of the nodes and clusters it waits for), can describe itself for
// --dry-run, and its duration is kept for benchmarks.
package lab

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/kubelab/kubelab/internal/progress"
)

// Phase is one named step of a lifecycle command.
type Phase struct {
	Name string
	// Describe says what Run would do, for --dry-run.
	Describe func() string
	Run      func(ctx context.Context) error
}

// Timing is how long one phase took.
type Timing struct {
	Phase   string  `json:"phase"`
	Seconds float64 `json:"seconds"`
	Error   string  `json:"error,omitempty"`
}

// Runner runs phases in order, reporting each one's start and end.
type Runner struct {
	// Out receives one line per phase when Progress is nil.
	Out    io.Writer
	DryRun bool
	Now    func() time.Time // default time.Now
	// Progress receives the phases' starts, ends and failures, the total
	// and the dry run's plan; nil means a plain reporter on Out.
	Progress *progress.Reporter
}

// Run executes phases in order and stops at the first failure. It returns
// the timings of the phases that ran (the failed one included).
func (r Runner) Run(ctx context.Context, phases []Phase) ([]Timing, error) {
	now := r.Now
	if now == nil {
		now = time.Now
	}
	rep := r.Progress
	if rep == nil {
		out := r.Out
		if out == nil {
			out = io.Discard
		}
		var err error
		if rep, err = progress.New(progress.Options{Out: out}); err != nil {
			return nil, fmt.Errorf("progress reporter: %w", err)
		}
		defer rep.Close()
	}
	var timings []Timing
	start := now()
	for _, p := range phases {
		if r.DryRun {
			rep.Summary(fmt.Sprintf("would %-10s %s", p.Name, p.Describe()))
			continue
		}
		if err := ctx.Err(); err != nil {
			return timings, fmt.Errorf("before %s: %w", p.Name, err)
		}
		rep.PhaseStart(p.Name)
		t0 := now()
		err := p.Run(ctx)
		d := now().Sub(t0)
		t := Timing{Phase: p.Name, Seconds: d.Seconds()}
		if err != nil {
			t.Error = err.Error()
			timings = append(timings, t)
			rep.PhaseFailed(p.Name, d, err)
			return timings, fmt.Errorf("%s: %w", p.Name, err)
		}
		timings = append(timings, t)
		rep.PhaseDone(p.Name, d)
	}
	if !r.DryRun {
		rep.Summary(fmt.Sprintf("==> total      %s", progress.Round(now().Sub(start))))
	}
	return timings, nil
}

// WriteTimings stores phase timings as JSON (for benchmarks and reports).
func WriteTimings(path string, command string, timings []Timing) error {
	doc := struct {
		Command string   `json:"command"`
		At      string   `json:"at"`
		Phases  []Timing `json:"phases"`
	}{command, time.Now().UTC().Format(time.RFC3339), timings}
	b, err := json.MarshalIndent(doc, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, append(b, '\n'), 0o644)
}
