package progress

import "time"

// subject is what the terminal and plain renderers know about one subject
// of the running phase.
type subject struct {
	name   string
	status string
	final  bool
	at     time.Duration // time into the phase of the latest status

	// plain renderer: what it printed last about the subject, and when.
	printed      string
	printedFinal bool
	printedAt    time.Time
	hasPrinted   bool
}

// pending says the subject's status has not been printed yet.
func (s *subject) pending() bool {
	return !s.hasPrinted || s.printed != s.status || s.printedFinal != s.final
}

// board holds the subjects of one phase in the order they first reported.
type board struct {
	start    time.Time
	subjects []*subject
	byName   map[string]*subject
}

func (b *board) reset(start time.Time) {
	b.start, b.subjects, b.byName = start, nil, map[string]*subject{}
}

func (b *board) update(ev Event) *subject {
	if b.byName == nil {
		b.byName = map[string]*subject{}
	}
	s := b.byName[ev.Subject]
	if s == nil {
		s = &subject{name: ev.Subject}
		b.byName[ev.Subject] = s
		b.subjects = append(b.subjects, s)
	}
	s.status, s.final, s.at = oneLine(ev.Status), ev.Final, ev.Elapsed
	return s
}

// nameWidth is the width of the longest subject name.
func (b *board) nameWidth() int {
	w := 0
	for _, s := range b.subjects {
		w = max(w, len(s.name))
	}
	return w
}
