package rules

import (
	"fmt"
	"strconv"

	"github.com/fieldtrust/fieldtrust/internal/store"
)

// Rule is a compiled rule, ready to run.
type Rule struct {
	ID       string
	Revision int
	Author   string
	Enabled  bool
	*File
	when, clear *Condition
}

// Load parses and compiles a rule file. Errors are *Error values with the
// file, line and column.
func Load(name string, data []byte) (*Rule, error) {
	f, err := Parse(name, data)
	if err != nil {
		return nil, err
	}
	r := &Rule{File: f, Enabled: true}
	p := &pos{file: name}
	switch {
	case f.When.Src != "":
		if r.when, err = p.compile(f.When, "when"); err != nil {
			return nil, err
		}
		if f.Clear.Src != "" {
			if r.clear, err = p.compile(f.Clear, "clear"); err != nil {
				return nil, err
			}
		}
	case f.Overdue != nil:
		// The built-in maintenance condition is CEL too, written here.
		ch := strconv.Quote(f.Overdue.Channel)
		src := fmt.Sprintf("%s in values && values[%s] >= %v", ch, ch, f.Overdue.Limit)
		switch {
		case f.Overdue.Calibration:
			// The device's instrument's DCC is past its due date at the
			// measurement time (docs/dcc.md "The fleet link").
			src = "has(calibration.due) && at >= calibration.due"
		case f.Overdue.Date:
			src = fmt.Sprintf("%s in values && at >= timestamp(int(values[%s]))", ch, ch)
		}
		if r.when, err = p.compile(Expr{Src: src}, "overdue"); err != nil {
			return nil, err
		}
	}
	return r, nil
}

// FromStore compiles a stored rule.
func FromStore(sr store.Rule) (*Rule, error) {
	r, err := Load(sr.Name+".rule", sr.Source)
	if err != nil {
		return nil, err
	}
	if r.Name != sr.Name || r.Scope != sr.Scope {
		return nil, fmt.Errorf("rule %s: stored as %s in %s but its file says %s in %s", sr.ID, sr.Name, sr.Scope, r.Name, r.Scope)
	}
	r.ID, r.Revision, r.Author, r.Enabled = sr.ID, sr.Revision, sr.Author, sr.Enabled
	return r, nil
}

// UsesPrev reports whether a condition of the rule reads prev.
func (r *Rule) UsesPrev() bool {
	return (r.when != nil && r.when.prev) || (r.clear != nil && r.clear.prev)
}

// UsesCalibration reports whether a condition of the rule reads
// calibration (only then does the engine look it up).
func (r *Rule) UsesCalibration() bool {
	return (r.when != nil && r.when.calib) || (r.clear != nil && r.clear.calib)
}

// Applies reports whether the rule watches a device: its gateway path is
// in the rule's scope and, if the rule names a device type, the device is
// of it.
func (r *Rule) Applies(gateway, deviceType string) bool {
	if r.Scope != store.VendorScope && !store.InScope(r.Scope, gateway) {
		return false
	}
	return r.DeviceType == "" || r.DeviceType == deviceType
}

// Kind names the rule's condition: when, silent, integrity or overdue.
func (r *Rule) Kind() string {
	switch {
	case r.Silent > 0:
		return "silent"
	case len(r.Integrity) > 0:
		return "integrity"
	case r.Overdue != nil:
		return "overdue"
	}
	return "when"
}

// Condition returns the rule's condition as text, for notifications.
func (r *Rule) Condition() string {
	switch r.Kind() {
	case "silent":
		return "no snapshot for " + r.Silent.String() + ", or the gateway went offline"
	case "integrity":
		return fmt.Sprintf("integrity event (%v)", r.Integrity)
	}
	return r.when.Src
}
