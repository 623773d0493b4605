// Package progress reports the progress of a long command: phases that
// start and end, and the status of subjects (nodes, clusters, ...) inside
// the phase that is running. One Reporter renders the same events one of
// four ways, chosen by New from its Options:
//
//   - terminal: a live line per subject, redrawn in place about once a
//     second, replaced by the phase summary when the phase ends;
//   - plain (logs, CI): the phase summaries, a line per status change and
//     at most one "still" line per subject every StillEvery;
//   - quiet: only the phase summaries (and summary lines);
//   - json: one JSON object per event and line, nothing else on Out.
//
// A Reporter is safe for concurrent use and holds no global state. A nil
// *Reporter reports nothing.
package progress

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"time"
)

// Kind is the kind of an event, as written in JSON.
type Kind string

// The events a Reporter sends to its renderer.
const (
	KindPhaseStart  Kind = "phase-start"
	KindPhaseDone   Kind = "phase-done"
	KindPhaseFailed Kind = "phase-failed"
	KindStatus      Kind = "status"
)

// Event is one thing that happened.
type Event struct {
	Time    time.Time
	Kind    Kind
	Phase   string
	Subject string // status events only
	Status  string // status events only
	// Final marks a subject's last status in the phase (it is done, or
	// has failed); its elapsed time stops there.
	Final bool
	// Elapsed is the phase's duration for phase-done and phase-failed,
	// and the time since the phase started for status events.
	Elapsed time.Duration
	Err     string // phase-failed only
}

// The output formats New accepts.
const (
	FormatText = "text"
	FormatJSON = "json"
)

// Formats lists the values Options.Format accepts.
var formats = []string{FormatText, FormatJSON}

// CheckFormat returns an error naming the allowed values when format is not
// one of them ("" counts as text).
func CheckFormat(format string) error {
	switch format {
	case "", FormatText, FormatJSON:
		return nil
	}
	return fmt.Errorf("unknown output format %q (allowed: %s)", format, strings.Join(formats, ", "))
}

// Options choose and tune the renderer.
type Options struct {
	// Out receives the report.
	Out io.Writer
	// Err receives human text (notes and summary lines) in JSON mode,
	// where Out carries only events; nil drops that text.
	Err io.Writer
	// Format is "text" (or "") or "json".
	Format string
	// Quiet keeps only the phase summaries (text format).
	Quiet bool
	// Terminal says Out is a terminal: live lines redrawn in place.
	Terminal bool
	// Width is the terminal's width in columns; live lines are cut to it
	// so they never wrap (a wrapped line would break the redraw). 0 means 80.
	Width int
	// Height is the terminal's height in rows; the live block is kept
	// shorter (the cursor cannot go back above the screen), the subjects
	// that do not fit summed up in one line. 0 means no limit.
	Height int
	// Now is the clock; nil means time.Now.
	Now func() time.Time
	// Refresh is how often the terminal redraws and the plain renderer
	// checks for quiet subjects; 0 means one second.
	Refresh time.Duration
	// StillEvery is how long a subject may go without a line in plain
	// mode before a "still" line repeats its status; 0 means 20s.
	StillEvery time.Duration
	// ChangeGap is the shortest time between two lines about the same
	// subject in plain mode: changes that come faster are folded into one
	// line with the newest status. Final statuses are never held back.
	// 0 means 5s.
	ChangeGap time.Duration

	// manualTick stops New from starting the ticker (tests call tick).
	manualTick bool
}

// renderer turns events into output. Its methods are called with the
// Reporter's lock held, so renderers need no locking of their own.
type renderer interface {
	event(ev Event)
	// line is human text outside events; summary lines survive quiet.
	line(now time.Time, text string, summary bool)
	tick(now time.Time)
	close(now time.Time)
}

// Reporter receives progress and renders it. Create it with New, and Close
// it when the command ends.
type Reporter struct {
	mu         sync.Mutex
	now        func() time.Time
	r          renderer
	phase      string
	phaseStart time.Time
	// last is each subject's latest status in the current phase, to drop
	// repeats: a repeated status is no event.
	last   map[string]lastStatus
	closed bool

	w *lineWriter

	stop chan struct{}
	done chan struct{}
}

type lastStatus struct {
	status string
	final  bool
}

// New returns the Reporter the options describe: json when Format is
// "json", else quiet when Quiet, else terminal when Terminal, else plain.
func New(o Options) (*Reporter, error) {
	if err := CheckFormat(o.Format); err != nil {
		return nil, err
	}
	if o.Out == nil {
		return nil, errors.New("progress: no output writer")
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Refresh <= 0 {
		o.Refresh = time.Second
	}
	if o.StillEvery <= 0 {
		o.StillEvery = 20 * time.Second
	}
	if o.ChangeGap <= 0 {
		o.ChangeGap = 5 * time.Second
	}
	if o.Width <= 0 {
		o.Width = 80
	}
	rep := &Reporter{now: o.Now, last: map[string]lastStatus{}}
	ticking := false
	switch {
	case o.Format == FormatJSON:
		rep.r = &jsonRenderer{out: o.Out, err: o.Err}
	case o.Quiet:
		rep.r = &quietRenderer{out: o.Out}
	case o.Terminal:
		rep.r = &terminalRenderer{out: o.Out, width: o.Width, height: o.Height}
		ticking = true
	default:
		rep.r = &plainRenderer{out: o.Out, still: o.StillEvery, gap: o.ChangeGap}
		ticking = true
	}
	rep.w = &lineWriter{note: rep.Note}
	if ticking && !o.manualTick {
		rep.stop, rep.done = make(chan struct{}), make(chan struct{})
		go rep.ticker(o.Refresh)
	}
	return rep, nil
}

func (r *Reporter) ticker(every time.Duration) {
	defer close(r.done)
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-r.stop:
			return
		case <-t.C:
			r.tick()
		}
	}
}

func (r *Reporter) tick() {
	r.mu.Lock()
	defer r.mu.Unlock()
	if !r.closed {
		r.r.tick(r.now())
	}
}

// PhaseStart reports that phase begins; status updates until its end
// belong to it.
func (r *Reporter) PhaseStart(phase string) {
	if r == nil {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	now := r.now()
	r.phase, r.phaseStart = phase, now
	clear(r.last)
	r.send(Event{Time: now, Kind: KindPhaseStart, Phase: phase})
}

// PhaseDone reports that phase succeeded after d.
func (r *Reporter) PhaseDone(phase string, d time.Duration) {
	r.endPhase(Event{Kind: KindPhaseDone, Phase: phase, Elapsed: d})
}

// PhaseFailed reports that phase failed after d with err.
func (r *Reporter) PhaseFailed(phase string, d time.Duration, err error) {
	ev := Event{Kind: KindPhaseFailed, Phase: phase, Elapsed: d}
	if err != nil {
		ev.Err = err.Error()
	}
	r.endPhase(ev)
}

func (r *Reporter) endPhase(ev Event) {
	if r == nil {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	ev.Time = r.now()
	r.send(ev)
	r.phase = ""
	clear(r.last)
}

// Status reports what subject (a node, a cluster) is doing in the running
// phase, e.g. "kernel" or "waiting, last seen: HTTP 503". Repeating the
// same status is not an event.
func (r *Reporter) Status(subject, status string) { r.status(subject, status, false) }

// Final reports a subject's last status in the running phase ("ready",
// "failed: ..."); its elapsed time stops.
func (r *Reporter) Final(subject, status string) { r.status(subject, status, true) }

func (r *Reporter) status(subject, status string, final bool) {
	if r == nil {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if l, ok := r.last[subject]; ok && l.status == status && l.final == final {
		return
	}
	r.last[subject] = lastStatus{status, final}
	now := r.now()
	ev := Event{Time: now, Kind: KindStatus, Phase: r.phase, Subject: subject, Status: status, Final: final}
	if r.phase != "" {
		ev.Elapsed = now.Sub(r.phaseStart)
	}
	r.send(ev)
}

func (r *Reporter) send(ev Event) {
	if !r.closed {
		r.r.event(ev)
	}
}

// Summary prints a line that belongs with the phase summaries (a total,
// a dry run's plan): kept by quiet, sent to Err in JSON mode.
func (r *Reporter) Summary(text string) { r.line(text, true) }

// Note prints extra human text (hints, a sub-step's own output): dropped
// by quiet, sent to Err in JSON mode.
func (r *Reporter) Note(text string) { r.line(text, false) }

func (r *Reporter) line(text string, summary bool) {
	if r == nil {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return
	}
	now := r.now()
	for _, l := range strings.Split(strings.TrimRight(text, "\n"), "\n") {
		r.r.line(now, l, summary)
	}
}

// Writer returns a writer that turns each line written to it into a Note,
// for code that prints free text (so it neither breaks the terminal's live
// lines nor lands in JSON output). A nil Reporter's writer discards.
func (r *Reporter) Writer() io.Writer {
	if r == nil {
		return io.Discard
	}
	return r.w
}

// Close stops the redraw ticker and prints what is pending: a last partial
// line given to Writer, the live lines of a phase that never ended. It is
// idempotent; nothing is printed after it.
func (r *Reporter) Close() error {
	if r == nil {
		return nil
	}
	r.w.flush()
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		return nil
	}
	r.closed = true
	r.r.close(r.now())
	r.mu.Unlock()
	if r.stop != nil {
		close(r.stop)
		<-r.done
	}
	return nil
}

// lineWriter splits what is written into lines.
type lineWriter struct {
	mu   sync.Mutex
	buf  []byte
	note func(string)
}

func (w *lineWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	w.buf = append(w.buf, p...)
	var lines []string
	for {
		i := bytes.IndexByte(w.buf, '\n')
		if i < 0 {
			break
		}
		lines = append(lines, string(w.buf[:i]))
		w.buf = w.buf[i+1:]
	}
	w.mu.Unlock()
	// Outside w.mu: note takes the Reporter's lock.
	for _, l := range lines {
		w.note(l)
	}
	return len(p), nil
}

func (w *lineWriter) flush() {
	w.mu.Lock()
	rest := string(w.buf)
	w.buf = nil
	w.mu.Unlock()
	if rest != "" {
		w.note(rest)
	}
}

// Round rounds a phase duration the way the summaries print it.
func Round(d time.Duration) time.Duration {
	if d < time.Second {
		return d.Round(time.Millisecond)
	}
	return d.Round(100 * time.Millisecond)
}

// SummaryLine is the line that ends a phase, e.g.
// "==> boot       done in 2m3s" or "==> boot       FAILED after 10m0s".
func SummaryLine(ev Event) string {
	if ev.Kind == KindPhaseFailed {
		return fmt.Sprintf("==> %-10s FAILED after %s", ev.Phase, Round(ev.Elapsed))
	}
	return fmt.Sprintf("==> %-10s done in %s", ev.Phase, Round(ev.Elapsed))
}

// elapsed is a live duration, to the second.
func elapsed(d time.Duration) string {
	if d < 0 {
		d = 0
	}
	return d.Truncate(time.Second).String()
}

// printable removes escape sequences and control characters (a tab
// becomes a space), so a line of text cannot move the cursor.
func printable(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == 0x1b && i+1 < len(s) && s[i+1] == '[':
			j := i + 2
			for j < len(s) && !(s[j] >= 0x40 && s[j] <= 0x7e) {
				j++
			}
			i = j
		case c == '\t':
			b.WriteByte(' ')
		case c < 0x20 || c == 0x7f:
		default:
			b.WriteByte(c)
		}
	}
	return b.String()
}

// oneLine makes a status printable on one line: escape sequences go, and
// runs of white space and control characters become one space.
func oneLine(s string) string {
	s = strings.NewReplacer("\r", " ", "\n", " ").Replace(s)
	return strings.Join(strings.Fields(printable(s)), " ")
}

// clip cuts s to at most width runes, marking the cut.
func clip(s string, width int) string {
	r := []rune(s)
	if width <= 0 || len(r) <= width {
		return s
	}
	return string(r[:width-1]) + "…"
}
