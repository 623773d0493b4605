package progress

import (
	"encoding/json"
	"fmt"
	"io"
	"time"
)

// quietRenderer prints the phase summaries and summary lines, nothing else.
type quietRenderer struct{ out io.Writer }

func (q *quietRenderer) event(ev Event) {
	if ev.Kind == KindPhaseDone || ev.Kind == KindPhaseFailed {
		fmt.Fprintln(q.out, SummaryLine(ev))
	}
}

func (q *quietRenderer) line(_ time.Time, text string, summary bool) {
	if summary {
		fmt.Fprintln(q.out, printable(text))
	}
}

func (q *quietRenderer) tick(time.Time)  {}
func (q *quietRenderer) close(time.Time) {}

// jsonRenderer writes every event as one JSON object per line to out, and
// human text to err (when set).
type jsonRenderer struct {
	out io.Writer
	err io.Writer
}

// JSONEvent is the JSON form of an Event.
type JSONEvent struct {
	Time    string `json:"time"` // RFC 3339 with nanoseconds
	Event   Kind   `json:"event"`
	Phase   string `json:"phase"`
	Subject string `json:"subject,omitempty"`
	Status  string `json:"status,omitempty"`
	Final   bool   `json:"final,omitempty"`
	// Seconds is the phase's duration (phase-done, phase-failed) or the
	// time into the phase (status); absent for phase-start.
	Seconds *float64 `json:"seconds,omitempty"`
	Error   string   `json:"error,omitempty"`
}

func (j *jsonRenderer) event(ev Event) {
	je := JSONEvent{Time: ev.Time.Format(time.RFC3339Nano), Event: ev.Kind, Phase: ev.Phase,
		Subject: ev.Subject, Status: ev.Status, Final: ev.Final, Error: ev.Err}
	if ev.Kind != KindPhaseStart && !(ev.Kind == KindStatus && ev.Phase == "") {
		s := ev.Elapsed.Seconds()
		je.Seconds = &s
	}
	b, err := json.Marshal(je)
	if err != nil {
		return // cannot happen: strings, a bool and a number
	}
	j.out.Write(append(b, '\n'))
}

func (j *jsonRenderer) line(_ time.Time, text string, _ bool) {
	if j.err != nil {
		fmt.Fprintln(j.err, text)
	}
}

func (j *jsonRenderer) tick(time.Time)  {}
func (j *jsonRenderer) close(time.Time) {}
