// Package lab runs a lab's lifecycle as ordered lists of named phases:
// render, and (growing) disks, network, boot, readiness, add-ons. Each
// phase is timed, printed as it completes, can describe itself for
// --dry-run, and its duration is kept for benchmarks.
package lab

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"time"
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

// Runner runs phases in order, printing one line per phase.
type Runner struct {
	Out    io.Writer
	DryRun bool
	Now    func() time.Time // default time.Now
}

// Run executes phases in order and stops at the first failure. It returns
// the timings of the phases that ran (the failed one included).
func (r Runner) Run(ctx context.Context, phases []Phase) ([]Timing, error) {
	now := r.Now
	if now == nil {
		now = time.Now
	}
	var timings []Timing
	start := now()
	for _, p := range phases {
		if r.DryRun {
			fmt.Fprintf(r.Out, "would %-10s %s\n", p.Name, p.Describe())
			continue
		}
		if err := ctx.Err(); err != nil {
			return timings, fmt.Errorf("before %s: %w", p.Name, err)
		}
		t0 := now()
		err := p.Run(ctx)
		d := now().Sub(t0)
		t := Timing{Phase: p.Name, Seconds: d.Seconds()}
		if err != nil {
			t.Error = err.Error()
			timings = append(timings, t)
			fmt.Fprintf(r.Out, "==> %-10s FAILED after %s\n", p.Name, round(d))
			return timings, fmt.Errorf("%s: %w", p.Name, err)
		}
		timings = append(timings, t)
		fmt.Fprintf(r.Out, "==> %-10s done in %s\n", p.Name, round(d))
	}
	if !r.DryRun {
		fmt.Fprintf(r.Out, "==> total      %s\n", round(now().Sub(start)))
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

func round(d time.Duration) time.Duration {
	if d < time.Second {
		return d.Round(time.Millisecond)
	}
	return d.Round(100 * time.Millisecond)
}
