package progress

import (
	"fmt"
	"io"
	"time"
)

// plainRenderer writes lines that only ever append, for logs: the phase
// summaries, a line when a subject's status changes (changes coming faster
// than gap are folded into one line) and, for a subject that stays in one
// status, a "still" line every still.
type plainRenderer struct {
	out   io.Writer
	still time.Duration
	gap   time.Duration
	b     board
}

func (p *plainRenderer) event(ev Event) {
	switch ev.Kind {
	case KindPhaseStart:
		p.b.reset(ev.Time)
	case KindStatus:
		s := p.b.update(ev)
		if s.final || !s.hasPrinted || ev.Time.Sub(s.printedAt) >= p.gap {
			p.print(s, ev.Time, false)
		}
	case KindPhaseDone, KindPhaseFailed:
		for _, s := range p.b.subjects {
			if s.pending() {
				p.print(s, ev.Time, false)
			}
		}
		fmt.Fprintln(p.out, SummaryLine(ev))
		p.b.reset(time.Time{})
	}
}

func (p *plainRenderer) line(_ time.Time, text string, _ bool) {
	fmt.Fprintln(p.out, printable(text))
}

func (p *plainRenderer) tick(now time.Time) {
	for _, s := range p.b.subjects {
		since := now.Sub(s.printedAt)
		switch {
		case s.pending() && since >= p.gap:
			p.print(s, now, false)
		case !s.pending() && !s.final && since >= p.still:
			p.print(s, now, true)
		}
	}
}

func (p *plainRenderer) close(time.Time) {}

// print writes one line about s: its status and how far into the phase it
// was reported (for a "still" line: how far into the phase it is now).
func (p *plainRenderer) print(s *subject, now time.Time, still bool) {
	text, at := s.status, s.at
	if still {
		text, at = "still "+s.status, now.Sub(p.b.start)
	}
	if p.b.start.IsZero() {
		fmt.Fprintf(p.out, "    %s: %s\n", s.name, text)
	} else {
		fmt.Fprintf(p.out, "    %s: %s (%s)\n", s.name, text, elapsed(at))
	}
	s.printed, s.printedFinal, s.printedAt, s.hasPrinted = s.status, s.final, now, true
}
