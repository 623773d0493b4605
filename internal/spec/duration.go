package spec

import (
	"fmt"
	"strconv"
	"strings"
	"time"
)

// Bounds of certificate lifetimes: a leaf must outlive a lab's boot under
// emulation, and x509 dates end in 9999.
const (
	minValidity = time.Hour
	maxValidity = 100 * 365 * 24 * time.Hour
)

// ParseDuration reads a duration as Go writes it ("8760h", "90m") or in
// whole days ("365d"), the unit people think of certificates in.
func ParseDuration(s string) (time.Duration, error) {
	s = strings.TrimSpace(s)
	if days, ok := strings.CutSuffix(s, "d"); ok {
		n, err := strconv.ParseInt(days, 10, 64)
		if err != nil || n < 0 || n > int64(maxValidity/(24*time.Hour)) {
			return 0, fmt.Errorf("%q is not a whole number of days; write e.g. 365d", s)
		}
		return time.Duration(n) * 24 * time.Hour, nil
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		return 0, fmt.Errorf("%q is not a duration; write e.g. 365d or 8760h", s)
	}
	return d, nil
}

// Validities returns the parsed CA and leaf lifetimes of a validated spec.
func (c Certificates) Validities() (ca, leaf time.Duration, err error) {
	if ca, err = ParseDuration(c.CAValidity); err != nil {
		return 0, 0, fmt.Errorf("certificates.caValidity: %w", err)
	}
	if leaf, err = ParseDuration(c.LeafValidity); err != nil {
		return 0, 0, fmt.Errorf("certificates.leafValidity: %w", err)
	}
	return ca, leaf, nil
}

func validateCertificates(errs *Errors, c Certificates) {
	var parsed [2]time.Duration
	for i, f := range []struct{ name, value string }{{"caValidity", c.CAValidity}, {"leafValidity", c.LeafValidity}} {
		path := Field("certificates", f.name)
		d, err := ParseDuration(f.value)
		switch {
		case err != nil:
			errs.Add(path, "%v", err)
		case d < minValidity || d > maxValidity:
			errs.Add(path, "is %s; use between 1h and 36500d", f.value)
		default:
			parsed[i] = d
		}
	}
	if parsed[0] > 0 && parsed[1] > parsed[0] {
		errs.Add(Field("certificates", "leafValidity"), "%s is longer than caValidity %s; a leaf cannot outlive its CA", c.LeafValidity, c.CAValidity)
	}
}
