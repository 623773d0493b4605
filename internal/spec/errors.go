package spec

import (
	"fmt"
	"strings"
)

// FieldError is one problem with one field of lab.yaml.
type FieldError struct {
	Path string // e.g. clusters[1].nodes[3].address
	Line int    // line in lab.yaml when known, else 0
	Msg  string // what is wrong and what would be valid
}

func (e FieldError) Error() string {
	if e.Line > 0 {
		return fmt.Sprintf("%s (line %d): %s", e.Path, e.Line, e.Msg)
	}
	return fmt.Sprintf("%s: %s", e.Path, e.Msg)
}

// Errors is every problem found in one pass, so a user fixes them all at once.
type Errors []FieldError

func (es Errors) Error() string {
	lines := make([]string, len(es))
	for i, e := range es {
		lines[i] = "  " + e.Error()
	}
	noun := "problems"
	if len(es) == 1 {
		noun = "problem"
	}
	return fmt.Sprintf("lab.yaml has %d %s:\n%s", len(es), noun, strings.Join(lines, "\n"))
}

// Err returns nil when there are no errors, so callers can return it directly.
func (es Errors) Err() error {
	if len(es) == 0 {
		return nil
	}
	return es
}

// Add records a problem at path.
func (es *Errors) Add(path, format string, args ...any) {
	*es = append(*es, FieldError{Path: path, Msg: fmt.Sprintf(format, args...)})
}

// Warning is something legal but probably unintended (an even etcd count).
type Warning = FieldError

// Index builds a path element for a list item: Index("clusters", 1) = "clusters[1]".
func Index(path string, i int) string { return fmt.Sprintf("%s[%d]", path, i) }

// Field appends a field name to a path.
func Field(path, name string) string {
	if path == "" {
		return name
	}
	return path + "." + name
}
