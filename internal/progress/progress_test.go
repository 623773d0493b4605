package progress

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// clock is a fake clock the tests move by hand.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func newClock() *clock { return &clock{t: time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)} }

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// syncBuffer is a bytes.Buffer safe for the ticker goroutine.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// step is one thing a test does to a reporter: wait (on the fake clock),
// then act.
type step struct {
	wait time.Duration
	do   func(r *Reporter)
}

func tick(r *Reporter) { r.tick() }

func run(t *testing.T, o Options, steps []step) (out, errOut string) {
	t.Helper()
	c := newClock()
	var ob, eb bytes.Buffer
	o.Out, o.Err, o.Now, o.manualTick = &ob, &eb, c.Now, true
	r, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range steps {
		c.add(s.wait)
		s.do(r)
	}
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	return ob.String(), eb.String()
}

func lines(s string) []string {
	s = strings.TrimSuffix(s, "\n")
	if s == "" {
		return nil
	}
	return strings.Split(s, "\n")
}

func TestPlain(t *testing.T) {
	start := func(r *Reporter) { r.PhaseStart("boot") }
	status := func(subj, st string) func(*Reporter) { return func(r *Reporter) { r.Status(subj, st) } }
	final := func(subj, st string) func(*Reporter) { return func(r *Reporter) { r.Final(subj, st) } }
	done := func(d time.Duration) func(*Reporter) { return func(r *Reporter) { r.PhaseDone("boot", d) } }
	tests := []struct {
		name  string
		steps []step
		want  []string
	}{{
		name: "changes, folding, still lines, final",
		steps: []step{
			{0, start},
			{0, status("cp1", "starting")},
			{time.Second, status("cp1", "kernel")}, // within the 5s gap: held back
			{time.Second, tick},
			{3 * time.Second, tick}, // 5s since the last line: printed now
			{19 * time.Second, tick},
			{time.Second, tick}, // 20s without a line: "still"
			{10 * time.Second, tick},
			{0, final("cp1", "ready")}, // never held back
			{30 * time.Second, tick},   // a final subject is not waited on
			{0, done(65 * time.Second)},
		},
		want: []string{
			"    cp1: starting (0s)",
			"    cp1: kernel (1s)",
			"    cp1: still kernel (25s)",
			"    cp1: ready (35s)",
			"==> boot       done in 1m5s",
		},
	}, {
		name: "the newest held-back status is printed before the summary",
		steps: []step{
			{0, start},
			{0, status("w1", "starting")},
			{time.Second, status("w1", "kernel")},
			{time.Second, status("w1", "systemd")},
			{0, done(2 * time.Second)},
		},
		want: []string{
			"    w1: starting (0s)",
			"    w1: systemd (2s)",
			"==> boot       done in 2s",
		},
	}, {
		name: "repeats are no events; subjects are throttled separately",
		steps: []step{
			{0, start},
			{0, status("a", "x")},
			{0, status("b", "y")},
			{time.Second, status("a", "x")},
			{0, status("b", "y")},
			{0, func(r *Reporter) { r.PhaseFailed("boot", 1500*time.Millisecond, errors.New("boom")) }},
		},
		want: []string{
			"    a: x (0s)",
			"    b: y (0s)",
			"==> boot       FAILED after 1.5s",
		},
	}, {
		name: "notes and summaries pass, statuses go on one line",
		steps: []step{
			{0, func(r *Reporter) { r.Note("hint\tone") }},
			{0, start},
			{0, status("k1", "waiting, last seen:\nHTTP 503\x1b[0m")},
			{0, done(time.Second)},
			{0, func(r *Reporter) { fmt.Fprint(r.Writer(), "partial") }},
			{0, func(r *Reporter) { r.Summary("==> total      1s") }},
		},
		want: []string{
			"hint one",
			"    k1: waiting, last seen: HTTP 503 (0s)",
			"==> boot       done in 1s",
			"==> total      1s",
			"partial", // flushed by Close
		},
	}}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			out, _ := run(t, Options{}, tc.steps)
			if got := lines(out); strings.Join(got, "\n") != strings.Join(tc.want, "\n") {
				t.Errorf("output:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(tc.want, "\n"))
			}
		})
	}
}

// TestPlainNoFlood: a status changing every 100ms for a minute, ticked as
// often, gives at most one line per gap.
func TestPlainNoFlood(t *testing.T) {
	steps := []step{{0, func(r *Reporter) { r.PhaseStart("apiserver") }}}
	for i := range 600 {
		steps = append(steps, step{100 * time.Millisecond, func(r *Reporter) {
			r.Status("k1", fmt.Sprintf("waiting, last seen: check %d", i))
			r.tick()
		}})
	}
	steps = append(steps, step{0, func(r *Reporter) { r.PhaseDone("apiserver", time.Minute) }})
	out, _ := run(t, Options{ChangeGap: 5 * time.Second}, steps)
	got := lines(out)
	if len(got) > 60/5+2 {
		t.Errorf("%d lines for a minute of changes:\n%s", len(got), out)
	}
	if len(got) < 2 || got[len(got)-2] != "    k1: waiting, last seen: check 599 (1m0s)" {
		t.Errorf("the last status is not the last line before the summary:\n%s", out)
	}
}

func TestQuiet(t *testing.T) {
	out, errOut := run(t, Options{Quiet: true}, []step{
		{0, func(r *Reporter) { r.PhaseStart("boot") }},
		{0, func(r *Reporter) { r.Status("cp1", "kernel") }},
		{time.Second, func(r *Reporter) { r.Final("cp1", "ready") }},
		{0, func(r *Reporter) { r.Note("kubectl hint") }},
		{0, func(r *Reporter) { fmt.Fprintln(r.Writer(), "image step") }},
		{0, func(r *Reporter) { r.PhaseDone("boot", 2*time.Second) }},
		{0, func(r *Reporter) { r.PhaseStart("dns") }},
		{0, func(r *Reporter) { r.PhaseFailed("dns", time.Minute, errors.New("x")) }},
		{0, func(r *Reporter) { r.Summary("==> total      1m2s") }},
	})
	want := "==> boot       done in 2s\n==> dns        FAILED after 1m0s\n==> total      1m2s\n"
	if out != want || errOut != "" {
		t.Errorf("out %q err %q, want %q", out, errOut, want)
	}
}

func TestJSON(t *testing.T) {
	out, errOut := run(t, Options{Format: FormatJSON, Terminal: true}, []step{
		{0, func(r *Reporter) { r.PhaseStart("boot") }},
		{1500 * time.Millisecond, func(r *Reporter) { r.Status("cp1", "kernel") }},
		{0, func(r *Reporter) { r.Note("a note") }},
		{time.Second, func(r *Reporter) { r.Final("cp1", "ready") }},
		{0, func(r *Reporter) { r.PhaseDone("boot", 2500*time.Millisecond) }},
		{0, func(r *Reporter) { r.PhaseStart("dns") }},
		{0, func(r *Reporter) { r.PhaseFailed("dns", 3*time.Second, errors.New("coredns not available")) }},
		{0, func(r *Reporter) { r.Summary("==> total 5.5s") }},
	})
	if errOut != "a note\n==> total 5.5s\n" {
		t.Errorf("human text: %q", errOut)
	}
	type want struct {
		event, phase, subject, status, err string
		final                              bool
		seconds                            float64 // -1: absent
		at                                 time.Duration
	}
	wants := []want{
		{event: "phase-start", phase: "boot", seconds: -1},
		{event: "status", phase: "boot", subject: "cp1", status: "kernel", seconds: 1.5, at: 1500 * time.Millisecond},
		{event: "status", phase: "boot", subject: "cp1", status: "ready", final: true, seconds: 2.5, at: 2500 * time.Millisecond},
		{event: "phase-done", phase: "boot", seconds: 2.5, at: 2500 * time.Millisecond},
		{event: "phase-start", phase: "dns", seconds: -1, at: 2500 * time.Millisecond},
		{event: "phase-failed", phase: "dns", seconds: 3, err: "coredns not available", at: 2500 * time.Millisecond},
	}
	got := lines(out)
	if len(got) != len(wants) {
		t.Fatalf("%d lines, want %d:\n%s", len(got), len(wants), out)
	}
	t0 := newClock().Now()
	for i, l := range got {
		var raw map[string]any
		if err := json.Unmarshal([]byte(l), &raw); err != nil {
			t.Fatalf("line %d is not JSON: %v: %s", i, err, l)
		}
		var ev JSONEvent
		if err := json.Unmarshal([]byte(l), &ev); err != nil {
			t.Fatal(err)
		}
		w := wants[i]
		ts, err := time.Parse(time.RFC3339Nano, ev.Time)
		if err != nil || !ts.Equal(t0.Add(w.at)) {
			t.Errorf("line %d: time %q (%v), want %v", i, ev.Time, err, t0.Add(w.at))
		}
		if string(ev.Event) != w.event || ev.Phase != w.phase || ev.Subject != w.subject ||
			ev.Status != w.status || ev.Final != w.final || ev.Error != w.err {
			t.Errorf("line %d: %s, want %+v", i, l, w)
		}
		switch {
		case w.seconds < 0 && ev.Seconds != nil:
			t.Errorf("line %d: seconds present: %s", i, l)
		case w.seconds >= 0 && (ev.Seconds == nil || *ev.Seconds != w.seconds):
			t.Errorf("line %d: seconds, want %v: %s", i, w.seconds, l)
		}
		if _, ok := raw["phase"]; !ok {
			t.Errorf("line %d has no phase field: %s", i, l)
		}
	}
}

// screen is a tiny terminal: it understands newline, "cursor up N" and
// "erase to end of screen", which is all the terminal renderer may use.
type screen struct {
	rows []string
	row  int
}

var csi = regexp.MustCompile(`^\x1b\[(\d*)([A-Za-z])`)

func (s *screen) feed(t *testing.T, out string) {
	t.Helper()
	for len(out) > 0 {
		switch {
		case out[0] == '\x1b':
			m := csi.FindStringSubmatch(out)
			if m == nil {
				t.Fatalf("bad escape sequence at %q", out)
			}
			n := 1
			if m[1] != "" {
				n, _ = strconv.Atoi(m[1])
			}
			switch m[2] {
			case "A":
				s.row -= n
				if s.row < 0 {
					t.Fatalf("cursor moved above the screen")
				}
			case "J":
				s.rows = s.rows[:s.row]
			default:
				t.Fatalf("unexpected escape sequence %q", m[0])
			}
			out = out[len(m[0]):]
		case out[0] == '\n':
			s.row++
			out = out[1:]
		default:
			i := strings.IndexAny(out, "\n\x1b")
			if i < 0 {
				i = len(out)
			}
			for len(s.rows) <= s.row {
				s.rows = append(s.rows, "")
			}
			if s.rows[s.row] != "" {
				t.Fatalf("text %q written over %q without erasing", out[:i], s.rows[s.row])
			}
			s.rows[s.row] = out[:i]
			out = out[i:]
		}
	}
}

func TestTerminal(t *testing.T) {
	c := newClock()
	var buf bytes.Buffer
	r, err := New(Options{Out: &buf, Terminal: true, Width: 40, Now: c.Now, manualTick: true})
	if err != nil {
		t.Fatal(err)
	}
	var scr screen
	// check feeds what was written since the last check to the screen and
	// compares the screen with want.
	check := func(step string, want ...string) string {
		t.Helper()
		written := buf.String()
		buf.Reset()
		scr.feed(t, written)
		if strings.Join(scr.rows, "\n") != strings.Join(want, "\n") {
			t.Errorf("%s: screen\n%s\nwant\n%s", step, strings.Join(scr.rows, "\n"), strings.Join(want, "\n"))
		}
		return written
	}

	r.Note("before")
	check("note", "before")
	r.PhaseStart("boot")
	check("start", "before", "==> boot       running 0s")
	r.Status("cp1", "starting")
	c.add(2 * time.Second)
	r.Status("worker1", "kernel")
	w := check("status", "before", "==> boot       running 2s",
		"    cp1          2s  starting",
		"    worker1      2s  kernel")
	if !strings.HasPrefix(w, "\x1b[1A\x1b[J") || !strings.Contains(w, "\n\x1b[2A\x1b[J") {
		t.Errorf("redraws of a block of one line, then two, do not go up one, then two: %q", w)
	}
	c.add(40 * time.Second)
	r.Status("cp1", "systemd")
	c.add(time.Second)
	r.Final("cp1", "ready")
	check("final", "before", "==> boot       running 43s",
		"    cp1         43s  ready",
		"    worker1     43s  kernel")
	c.add(time.Second)
	r.tick()
	w = check("tick", "before", "==> boot       running 44s",
		"    cp1         43s  ready",
		"    worker1     44s  kernel")
	if strings.Count(w, "\x1b[3A\x1b[J") != 1 {
		t.Errorf("one tick, one redraw of three lines: %q", w)
	}
	r.Status("worker1", "waiting, last seen: "+strings.Repeat("x", 100))
	check("long line", "before", "==> boot       running 44s",
		"    cp1         43s  ready",
		"    worker1     44s  waiting, last see…")
	fmt.Fprint(r.Writer(), "image: step 1\nimage: ")
	check("note during a phase", "before", "image: step 1", "==> boot       running 44s",
		"    cp1         43s  ready",
		"    worker1     44s  waiting, last see…")
	c.add(time.Second)
	r.Final("worker1", "ready")
	r.PhaseDone("boot", 45*time.Second)
	check("done", "before", "image: step 1", "==> boot       done in 45s",
		"    cp1         43s  ready",
		"    worker1     45s  ready")
	r.tick() // nothing runs: nothing to draw
	r.Summary("==> total      45s")
	r.Close()
	check("close", "before", "image: step 1", "==> boot       done in 45s",
		"    cp1         43s  ready",
		"    worker1     45s  ready",
		"==> total      45s",
		"image: ")
	for i, row := range scr.rows {
		if n := len([]rune(row)); n > 39 {
			t.Errorf("row %d has %d columns, more than the width less one", i, n)
		}
	}
}

func TestNewChoosesRenderer(t *testing.T) {
	tests := []struct {
		o    Options
		want string
	}{
		{Options{}, "*progress.plainRenderer"},
		{Options{Terminal: true}, "*progress.terminalRenderer"},
		{Options{Terminal: true, Quiet: true}, "*progress.quietRenderer"},
		{Options{Terminal: true, Quiet: true, Format: "json"}, "*progress.jsonRenderer"},
		{Options{Format: "text"}, "*progress.plainRenderer"},
	}
	for _, tc := range tests {
		tc.o.Out = &bytes.Buffer{}
		r, err := New(tc.o)
		if err != nil {
			t.Fatal(err)
		}
		if got := fmt.Sprintf("%T", r.r); got != tc.want {
			t.Errorf("%+v: %s, want %s", tc.o, got, tc.want)
		}
		r.Close()
	}
	if _, err := New(Options{Out: &bytes.Buffer{}, Format: "yaml"}); err == nil || !strings.Contains(err.Error(), "text, json") {
		t.Errorf("format yaml: %v", err)
	}
	if _, err := New(Options{Format: "json"}); err == nil {
		t.Error("no error without an output writer")
	}
}

func TestNilReporter(t *testing.T) {
	var r *Reporter
	r.PhaseStart("x")
	r.Status("a", "b")
	r.Final("a", "b")
	r.PhaseDone("x", time.Second)
	r.PhaseFailed("x", time.Second, errors.New("e"))
	r.Note("n")
	r.Summary("s")
	fmt.Fprintln(r.Writer(), "w")
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
}

// TestConcurrent drives every renderer from many goroutines with the real
// ticker running fast; run with -race. The JSON output must hold exactly
// one whole line per event.
func TestConcurrent(t *testing.T) {
	const workers, updates = 8, 200
	for _, o := range []Options{{}, {Terminal: true}, {Quiet: true}, {Format: FormatJSON}} {
		t.Run(fmt.Sprintf("%+v", o), func(t *testing.T) {
			var out, errOut syncBuffer
			o.Out, o.Err, o.Refresh, o.ChangeGap, o.StillEvery = &out, &errOut, time.Millisecond, time.Millisecond, 2*time.Millisecond
			r, err := New(o)
			if err != nil {
				t.Fatal(err)
			}
			r.PhaseStart("boot")
			var wg sync.WaitGroup
			for w := range workers {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for i := range updates {
						r.Status(fmt.Sprintf("n%d", w), fmt.Sprintf("stage %d", i))
						if i%50 == 0 {
							fmt.Fprintf(r.Writer(), "note %d from %d\n", i, w)
						}
					}
					r.Final(fmt.Sprintf("n%d", w), "ready")
				}()
			}
			wg.Wait()
			r.PhaseDone("boot", time.Second)
			r.Close()
			r.Status("late", "ignored after Close")
			if o.Format != FormatJSON {
				if !strings.Contains(out.String(), "==> boot       done in 1s") {
					t.Errorf("no summary in %q", out.String())
				}
				return
			}
			n := 0
			sc := bufio.NewScanner(strings.NewReader(out.String()))
			for sc.Scan() {
				var ev JSONEvent
				if err := json.Unmarshal(sc.Bytes(), &ev); err != nil {
					t.Fatalf("line %d: %v: %q", n, err, sc.Text())
				}
				n++
			}
			if want := 2 + workers*(updates+1); n != want {
				t.Errorf("%d events, want %d", n, want)
			}
			if got := strings.Count(errOut.String(), "note "); got != workers*updates/50 {
				t.Errorf("%d notes on stderr, want %d", got, workers*updates/50)
			}
		})
	}
}

func TestClipAndOneLine(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"a\r\nb\t c", "a b c"},
		{"\x1b[1;32mOK\x1b[0m  done\n", "OK done"},
		{"", ""},
	} {
		if got := oneLine(tc.in); got != tc.want {
			t.Errorf("oneLine(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
	for _, tc := range []struct {
		in    string
		width int
		want  string
	}{
		{"abcdef", 4, "abc…"},
		{"abcd", 4, "abcd"},
		{"äöüßx", 4, "äöü…"},
		{"abc", 0, "abc"},
	} {
		if got := clip(tc.in, tc.width); got != tc.want {
			t.Errorf("clip(%q, %d) = %q, want %q", tc.in, tc.width, got, tc.want)
		}
	}
}

// TestTerminalHeight: a block taller than the screen could not be redrawn
// (the cursor stops at the top row), so subjects that do not fit are
// counted, finished ones hidden first.
func TestTerminalHeight(t *testing.T) {
	c := newClock()
	var buf bytes.Buffer
	r, err := New(Options{Out: &buf, Terminal: true, Width: 80, Height: 6, Now: c.Now, manualTick: true})
	if err != nil {
		t.Fatal(err)
	}
	r.PhaseStart("nodes")
	for i := 1; i <= 6; i++ {
		r.Status(fmt.Sprintf("w%d", i), "waiting")
	}
	r.Final("w1", "Ready")
	r.Final("w3", "Ready")
	var scr screen
	scr.feed(t, buf.String())
	buf.Reset()
	want := []string{
		"==> nodes      running 0s",
		"    w2      0s  waiting",
		"    w4      0s  waiting",
		"    w5      0s  waiting",
		"    ... and 3 more",
	}
	if strings.Join(scr.rows, "\n") != strings.Join(want, "\n") {
		t.Errorf("screen\n%s\nwant\n%s", strings.Join(scr.rows, "\n"), strings.Join(want, "\n"))
	}
	if len(scr.rows) > 6-1 {
		t.Errorf("the block has %d rows on a screen of 6", len(scr.rows))
	}
	// At the end every subject is listed (static lines may scroll).
	r.PhaseDone("nodes", time.Second)
	r.Close()
	scr.feed(t, buf.String())
	if len(scr.rows) != 7 || scr.rows[0] != "==> nodes      done in 1s" || scr.rows[6] != "    w6      0s  waiting" {
		t.Errorf("final screen:\n%s", strings.Join(scr.rows, "\n"))
	}
}
