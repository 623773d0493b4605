package spec

import (
	"bytes"
	"fmt"
	"reflect"
	"sort"
	"strings"

	"go.yaml.in/yaml/v3"
)

// Parse decodes lab.yaml strictly: unknown or misspelled fields, wrong types
// and duplicate keys are errors naming the field path and line. It does not
// apply defaults or validate values; see Load.
func Parse(data []byte) (*Lab, error) {
	var root yaml.Node
	dec := yaml.NewDecoder(bytes.NewReader(data))
	if err := dec.Decode(&root); err != nil {
		if err.Error() == "EOF" {
			return nil, Errors{{Path: "(document)", Msg: "lab.yaml is empty; run `kubelab init` to write one"}}
		}
		return nil, Errors{{Path: "(document)", Msg: strings.TrimPrefix(err.Error(), "yaml: ")}}
	}
	var extra yaml.Node
	if err := dec.Decode(&extra); err == nil {
		return nil, Errors{{Path: "(document)", Line: extra.Line, Msg: "lab.yaml must hold one document; found a second after ---"}}
	}
	lab := &Lab{}
	var errs Errors
	doc := &root
	if doc.Kind == yaml.DocumentNode && len(doc.Content) == 1 {
		doc = doc.Content[0]
	}
	decodeNode(doc, reflect.ValueOf(lab).Elem(), "", &errs)
	return lab, errs.Err()
}

// decodeNode fills v from n, recording errors with their field paths instead
// of stopping at the first, and rejecting keys the type does not have.
func decodeNode(n *yaml.Node, v reflect.Value, path string, errs *Errors) {
	if n.Kind == yaml.AliasNode {
		n = n.Alias
	}
	if n.Tag == "!!null" {
		return // an empty value leaves the default in place
	}
	display := path
	if display == "" {
		display = "(document)"
	}
	switch v.Kind() {
	case reflect.Struct:
		if n.Kind != yaml.MappingNode {
			*errs = append(*errs, FieldError{Path: display, Line: n.Line, Msg: fmt.Sprintf("expected a mapping of fields, found %s", describe(n))})
			return
		}
		fields := yamlFields(v.Type())
		seen := map[string]bool{}
		for i := 0; i+1 < len(n.Content); i += 2 {
			key, val := n.Content[i], n.Content[i+1]
			name := key.Value
			if seen[name] {
				*errs = append(*errs, FieldError{Path: Field(path, name), Line: key.Line, Msg: "field given twice"})
				continue
			}
			seen[name] = true
			idx, ok := fields[name]
			if !ok {
				msg := fmt.Sprintf("unknown field %q", name)
				if s := suggest(name, fields); s != "" {
					msg += fmt.Sprintf("; did you mean %q?", s)
				} else {
					msg += "; valid fields are " + strings.Join(sortedKeys(fields), ", ")
				}
				*errs = append(*errs, FieldError{Path: Field(path, name), Line: key.Line, Msg: msg})
				continue
			}
			decodeNode(val, v.Field(idx), Field(path, name), errs)
		}
	case reflect.Slice:
		if n.Kind != yaml.SequenceNode {
			*errs = append(*errs, FieldError{Path: display, Line: n.Line, Msg: fmt.Sprintf("expected a list, found %s", describe(n))})
			return
		}
		s := reflect.MakeSlice(v.Type(), len(n.Content), len(n.Content))
		for i, item := range n.Content {
			decodeNode(item, s.Index(i), Index(path, i), errs)
		}
		v.Set(s)
	default:
		if n.Kind != yaml.ScalarNode {
			*errs = append(*errs, FieldError{Path: display, Line: n.Line, Msg: fmt.Sprintf("expected a %s, found %s", kindName(v.Kind()), describe(n))})
			return
		}
		if err := n.Decode(v.Addr().Interface()); err != nil {
			*errs = append(*errs, FieldError{Path: display, Line: n.Line, Msg: fmt.Sprintf("expected a %s, found %q", kindName(v.Kind()), n.Value)})
		}
	}
}

func yamlFields(t reflect.Type) map[string]int {
	m := make(map[string]int, t.NumField())
	for i := 0; i < t.NumField(); i++ {
		tag := strings.Split(t.Field(i).Tag.Get("yaml"), ",")[0]
		if tag != "" && tag != "-" {
			m[tag] = i
		}
	}
	return m
}

func sortedKeys(m map[string]int) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

func describe(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	default:
		return fmt.Sprintf("%q", n.Value)
	}
}

func kindName(k reflect.Kind) string {
	switch k {
	case reflect.Int, reflect.Int64, reflect.Int32:
		return "whole number"
	case reflect.Bool:
		return "true/false"
	default:
		return "string"
	}
}

// suggest returns the known field closest to name when it is a plausible
// misspelling (edit distance at most a third of its length, or a case slip).
func suggest(name string, fields map[string]int) string {
	best, bestDist := "", len(name)/3+1
	for _, f := range sortedKeys(fields) { // sorted, so ties resolve the same way every run
		if strings.EqualFold(f, name) {
			return f
		}
		if d := editDistance(strings.ToLower(name), strings.ToLower(f)); d < bestDist {
			best, bestDist = f, d
		}
	}
	return best
}

func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}
