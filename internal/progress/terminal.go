package progress

import (
	"fmt"
	"io"
	"strings"
	"time"
)

// terminalRenderer keeps a live block at the bottom of the terminal: a
// header for the running phase and one line per subject with its elapsed
// time and status, redrawn in place (cursor up, erase down). When the
// phase ends the block is replaced by the summary line and each subject's
// final state, which stay.
type terminalRenderer struct {
	out    io.Writer
	width  int
	height int // 0: no limit
	active bool
	phase  string
	b      board
	live   int // lines of the live block on screen
}

func (t *terminalRenderer) event(ev Event) {
	switch ev.Kind {
	case KindPhaseStart:
		t.active, t.phase = true, ev.Phase
		t.b.reset(ev.Time)
		t.redraw(ev.Time, "")
	case KindStatus:
		if !t.active {
			// No phase to attach it to: a static line.
			t.redraw(ev.Time, fmt.Sprintf("    %s: %s\n", ev.Subject, oneLine(ev.Status)))
			return
		}
		t.b.update(ev)
		t.redraw(ev.Time, "")
	case KindPhaseDone, KindPhaseFailed:
		var buf strings.Builder
		buf.WriteString(t.erase())
		buf.WriteString(SummaryLine(ev) + "\n")
		for _, l := range t.subjectLines(ev.Time, nil) {
			buf.WriteString(l + "\n")
		}
		t.live, t.active = 0, false
		t.b.reset(time.Time{})
		io.WriteString(t.out, buf.String())
	}
}

func (t *terminalRenderer) line(now time.Time, text string, _ bool) {
	t.redraw(now, printable(text)+"\n")
}

func (t *terminalRenderer) tick(now time.Time) {
	if t.active {
		t.redraw(now, "")
	}
}

func (t *terminalRenderer) close(now time.Time) {
	if t.active {
		t.redraw(now, "")
	}
}

// erase moves the cursor to the first line of the live block and clears
// from there to the end of the screen.
func (t *terminalRenderer) erase() string {
	if t.live == 0 {
		return ""
	}
	return fmt.Sprintf("\x1b[%dA\x1b[J", t.live)
}

// redraw writes above (static text, may be empty) where the live block was
// and then the live block again, in one write.
func (t *terminalRenderer) redraw(now time.Time, above string) {
	var buf strings.Builder
	buf.WriteString(t.erase())
	buf.WriteString(above)
	t.live = 0
	if t.active {
		header := clip(fmt.Sprintf("==> %-10s running %s", t.phase, elapsed(now.Sub(t.b.start))), t.width-1)
		buf.WriteString(header + "\n")
		t.live++
		// The block must fit on the screen with a row to spare for the
		// cursor: subjects that do not fit (finished ones first) are
		// counted in a last line instead.
		lines := t.subjectLines(now, t.visible(t.height-2))
		if hidden := len(t.b.subjects) - len(lines); hidden > 0 {
			lines = append(lines, clip(fmt.Sprintf("    ... and %d more", hidden), t.width-1))
		}
		for _, l := range lines {
			buf.WriteString(l + "\n")
			t.live++
		}
	}
	if buf.Len() > 0 {
		io.WriteString(t.out, buf.String())
	}
}

// visible picks the subjects to show in rows rows: all of them (nil) if
// they fit or there is no limit, else rows-1 of them, leaving a row for the
// line that counts the hidden ones; unfinished ones are picked before
// finished ones, and they keep their order.
func (t *terminalRenderer) visible(rows int) map[*subject]bool {
	if t.height <= 0 || len(t.b.subjects) <= rows {
		return nil
	}
	show := map[*subject]bool{}
	for _, final := range []bool{false, true} {
		for _, s := range t.b.subjects {
			if s.final == final && len(show) < rows-1 {
				show[s] = true
			}
		}
	}
	return show
}

// subjectLines are the lines of the subjects in show (nil: all), cut to
// the terminal's width less one column, so no terminal wraps them.
func (t *terminalRenderer) subjectLines(now time.Time, show map[*subject]bool) []string {
	w := t.b.nameWidth()
	var out []string
	for _, s := range t.b.subjects {
		if show != nil && !show[s] {
			continue
		}
		d := now.Sub(t.b.start)
		if s.final {
			d = s.at
		}
		out = append(out, clip(fmt.Sprintf("    %-*s  %6s  %s", w, s.name, elapsed(d), s.status), t.width-1))
	}
	return out
}
