// Package calibration is the DCC fleet link: a measurement device is bound
// to the instrument it is — an equipment identification (issuer + value,
// as a DCC names its item in items/item/identifications) from a
// measurement time on — and the registry's history of that instrument says
// whether each of the device's measurements was taken under a valid
// calibration.
//
// The rule (docs/dcc.md "The fleet link"), for a measurement at time t
// (the snapshot's own measurement time, which the device signs, not when
// it arrived):
//
//  1. The instrument is the device's latest binding whose since is at or
//     before t; none (or one with an empty value) means no flag at all.
//  2. The DCC that applies is the instrument's registered DCC with the
//     latest performance date (its day, UTC) at or before t, revoked or
//     not; of two performed the same day, the later registered.
//  3. No such DCC: uncalibrated. It is revoked: revoked (a lab revokes a
//     certificate that was wrong, so the measurements it covered lose it).
//     t is on or after its due date's end: overdue. Else valid.
//
// Every status but valid is flagged. A DCC superseded by a later one still
// applies to the measurements taken before that one was performed.
package calibration

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/fieldtrust/fieldtrust/internal/dcc"
	"github.com/fieldtrust/fieldtrust/internal/dcc/registry"
	"github.com/fieldtrust/fieldtrust/internal/store"
	"github.com/fieldtrust/fieldtrust/internal/store/registrystore"
)

// Statuses of a measurement's calibration.
const (
	Valid        = "valid"        // the applicable DCC is not revoked and not past its due date
	Overdue      = "overdue"      // measured on or after the end of the applicable DCC's due date
	Revoked      = "revoked"      // the applicable DCC was revoked by its lab
	Uncalibrated = "uncalibrated" // the instrument has no DCC performed at or before the measurement
	Unknown      = "unknown"      // the registry could not be read: flagged, not assumed valid
)

// Flag is the calibration of one measurement (or of a device at the time
// of a request). A rule engine's overdue condition reads DueUnix: the
// first overdue instant in Unix seconds, the convention of a date channel
// (rules' overdue: {date: true}).
type Flag struct {
	Equipment dcc.EquipmentID `json:"equipment"`
	Status    string          `json:"status"`
	Flagged   bool            `json:"flagged"` // Status is not valid
	Overdue   bool            `json:"overdue"` // at or after the applicable DCC's due date (revoked or not)
	DCCID     string          `json:"dcc_id,omitempty"`
	Lab       string          `json:"lab,omitempty"`
	DueDate   string          `json:"due_date,omitempty"` // as the DCC states it
	DueUnix   int64           `json:"due_unix,omitempty"` // the start (UTC) of the day after DueDate
	// Proven says the binding that names the instrument was verified by
	// the platform (Binding.Proof), not only declared.
	Proven bool `json:"proven"`
}

// Binding is one of a device's bindings as the API shows it.
type Binding struct {
	Equipment dcc.EquipmentID `json:"equipment"` // an empty value: no instrument from Since on
	Since     time.Time       `json:"since"`
	SetBy     string          `json:"set_by"`
	SetAt     time.Time       `json:"set_at"`
	// Proven: the platform verified it (Proof says what); else the
	// binding is SetBy's declaration.
	Proven bool   `json:"proven"`
	Proof  string `json:"proof,omitempty"`
}

// Report is what GET /api/v1/devices/{path}/calibration returns.
type Report struct {
	Path        string            `json:"path"`
	Bindings    []Binding         `json:"bindings"`              // oldest first
	Calibration *Flag             `json:"calibration,omitempty"` // now; absent when no instrument is bound now
	TreeHead    *registry.Head    `json:"tree_head,omitempty"`   // the registry head the records' proofs are against
	Records     []registry.Record `json:"records"`               // the instrument's registry history, oldest first, with proofs
}

// Bindings is the storage of bindings (registrystore.Store).
type Bindings interface {
	Bindings(ctx context.Context, gateway, device string) ([]registrystore.Binding, error)
	BindingsOf(ctx context.Context, devices []registrystore.Device) (map[registrystore.Device][]registrystore.Binding, error)
	PutBinding(ctx context.Context, b registrystore.Binding) error
}

// Registry is what the link reads of the registry (*registry.Registry).
type Registry interface {
	HistoryOf(ctx context.Context, issuer, value string) ([]registry.Record, error)
	LookupEquipment(ctx context.Context, issuer, value string) (*registry.Lookup, error)
}

// Enrollments is what the link reads of zero-touch onboarding
// (store.Enrollments): the claims gateways enrolled with.
type Enrollments interface {
	Claims(ctx context.Context) ([]store.Claim, error)
}

// Link is the fleet link.
type Link struct {
	Bindings Bindings
	// Enrollments proves manufacturer bindings (Bind); nil: every
	// binding is declared, and one to another device's onboarding
	// identity cannot be told apart.
	Enrollments Enrollments
	// Registry returns the registry, nil while it is not open (its
	// service starting): measurements are then flagged unknown.
	Registry func() Registry
	Now      func() time.Time
	Logger   *slog.Logger
}

// Errors, for errors.Is.
var (
	ErrInvalid     = errors.New("invalid binding")
	ErrNotTheirs   = errors.New("the identification is another enrolled device's")
	ErrUnavailable = errors.New("the DCC registry is not available; retry shortly")
)

// Bind records that the device is the instrument e from since on (zero:
// now); an empty e.Value ends the previous binding. by is the identity
// that declared it.
func (l *Link) Bind(ctx context.Context, gateway, device string, e dcc.EquipmentID, since time.Time, by string) error {
	now := l.now()
	if since.IsZero() {
		since = now
	}
	switch {
	case e.Value == "" && e.Issuer != "":
		return fmt.Errorf("%w: an issuer without a value (give both, or neither to end the binding)", ErrInvalid)
	case since.After(now):
		return fmt.Errorf("%w: since %s is in the future", ErrInvalid, since.UTC().Format(time.RFC3339))
	case since.Before(time.UnixMilli(0)):
		return fmt.Errorf("%w: since is before 1970", ErrInvalid)
	}
	var proof string
	if e.Value != "" {
		if err := e.Check(); err != nil {
			return fmt.Errorf("%w: %w", ErrInvalid, err)
		}
		var err error
		if proof, err = l.prove(ctx, gateway, e); err != nil {
			return err
		}
	}
	return l.Bindings.PutBinding(ctx, registrystore.Binding{Gateway: gateway, Device: device, SinceMs: since.UnixMilli(),
		Issuer: e.Issuer, Value: e.Value, SetBy: by, SetAtMs: now.UnixMilli(), Proof: proof})
}

// prove checks a binding against what EST verified when gateways
// enrolled, the one place of that rule. A manufacturer identification
// (the instrument's serial) is proven when it is the onboarding identity
// this gateway enrolled with — its consumed, unrevoked claim's serial or
// subject name, or the serial of the onboarding certificate that consumed
// it, under the manufacturer CA the claim names — and refused
// (ErrNotTheirs) when it is the onboarding identity of another device's
// claim (another manufacturer's, or another gateway's): the platform knows
// that instrument is elsewhere. Anything else (another issuer, a serial no
// claim names: an instrument behind the gateway) is declared: proof "".
func (l *Link) prove(ctx context.Context, gateway string, e dcc.EquipmentID) (string, error) {
	if e.Issuer != "manufacturer" || l.Enrollments == nil {
		return "", nil
	}
	claims, err := l.Enrollments.Claims(ctx)
	if err != nil {
		return "", fmt.Errorf("bind %s: enrollment claims: %w", gateway, err)
	}
	var other *store.Claim
	for i, c := range claims {
		if c.Revoked() || (c.Value != e.Value && (!c.Consumed() || c.ConsumedBy != e.Value)) {
			continue
		}
		if c.Path == gateway && c.Consumed() && !c.Legacy() {
			return fmt.Sprintf("enrollment: %s enrolled with the onboarding certificate of serial %s (claim by %s %s) of manufacturer CA %q",
				gateway, c.ConsumedBy, c.Kind, c.Value, c.ManufacturerSubject), nil
		}
		if c.Path != gateway {
			other = &claims[i]
		}
	}
	if other != nil {
		// Whose it is stays in the log: the binder may be another
		// customer's gateway.
		l.logger().Warn("calibration: binding to another device's manufacturer serial refused", "gateway", gateway, "serial", e.Value,
			"enrolled_as", other.Path, "manufacturer", other.ManufacturerSubject)
		return "", fmt.Errorf("%w: manufacturer serial %q is the onboarding identity of another enrolled device, not of %s: bind the instrument this gateway measures with",
			ErrNotTheirs, e.Value, gateway)
	}
	return "", nil
}

// Flags loads what flagging a device's measurements needs and returns the
// flag of a measurement at t (nil when no instrument is bound at t). Its
// error is the bindings storage's; a registry that cannot be read flags
// the measurements unknown.
func (l *Link) Flags(ctx context.Context, gateway, device string) (func(t time.Time) *Flag, error) {
	bs, err := l.Bindings.Bindings(ctx, gateway, device)
	if err != nil {
		return nil, err
	}
	return l.flags(ctx, gateway, device, bs), nil
}

// FlagsOf is Flags for several devices, with one read of their bindings
// for up to 200 of them: a fleet view flags every device it lists. The
// map holds every device asked for.
func (l *Link) FlagsOf(ctx context.Context, devices []registrystore.Device) (map[registrystore.Device]func(t time.Time) *Flag, error) {
	all, err := l.Bindings.BindingsOf(ctx, devices)
	if err != nil {
		return nil, err
	}
	out := make(map[registrystore.Device]func(t time.Time) *Flag, len(devices))
	for _, d := range devices {
		out[d] = l.flags(ctx, d.Gateway, d.Device, all[d])
	}
	return out, nil
}

// flags is the flag function of a device with bindings bs.
func (l *Link) flags(ctx context.Context, gateway, device string, bs []registrystore.Binding) func(t time.Time) *Flag {
	if len(bs) == 0 {
		return func(time.Time) *Flag { return nil }
	}
	reg := l.registry()
	hist := map[dcc.EquipmentID][]registry.Record{}
	failed := map[dcc.EquipmentID]bool{}
	for _, b := range bs {
		e := dcc.EquipmentID{Issuer: b.Issuer, Value: b.Value}
		if _, seen := hist[e]; e.Value == "" || seen || failed[e] {
			continue
		}
		if reg == nil {
			failed[e] = true
			continue
		}
		h, err := reg.HistoryOf(ctx, e.Issuer, e.Value)
		if err != nil {
			l.logger().Warn("calibration: registry history unavailable", "gateway", gateway, "device", device, "err", err)
			failed[e] = true
			continue
		}
		hist[e] = h
	}
	return func(t time.Time) *Flag {
		b := bindingAt(bs, t)
		if b == nil || b.Value == "" {
			return nil
		}
		e := dcc.EquipmentID{Issuer: b.Issuer, Value: b.Value}
		if failed[e] {
			return &Flag{Equipment: e, Status: Unknown, Flagged: true, Proven: b.Proof != ""}
		}
		f := flagAt(e, hist[e], t)
		f.Proven = b.Proof != ""
		return f
	}
}

// Report is a device's calibration now, with the bound instrument's
// registry history and proofs.
func (l *Link) Report(ctx context.Context, gateway, device string) (*Report, error) {
	bs, err := l.Bindings.Bindings(ctx, gateway, device)
	if err != nil {
		return nil, err
	}
	rep := &Report{Path: gateway + "/" + device, Bindings: []Binding{}, Records: []registry.Record{}}
	for _, b := range bs {
		rep.Bindings = append(rep.Bindings, Binding{Equipment: dcc.EquipmentID{Issuer: b.Issuer, Value: b.Value},
			Since: time.UnixMilli(b.SinceMs).UTC(), SetBy: b.SetBy, SetAt: time.UnixMilli(b.SetAtMs).UTC(), Proven: b.Proof != "", Proof: b.Proof})
	}
	now := l.now()
	b := bindingAt(bs, now)
	if b == nil || b.Value == "" {
		return rep, nil
	}
	reg := l.registry()
	if reg == nil {
		return nil, ErrUnavailable
	}
	e := dcc.EquipmentID{Issuer: b.Issuer, Value: b.Value}
	lk, err := reg.LookupEquipment(ctx, e.Issuer, e.Value)
	switch {
	case errors.Is(err, registry.ErrUnknown): // an empty registry: no DCC yet
	case err != nil:
		l.logger().Warn("calibration: registry lookup failed", "gateway", gateway, "device", device, "err", err)
		return nil, ErrUnavailable
	default:
		rep.TreeHead, rep.Records = &lk.Head, lk.History
	}
	rep.Calibration = flagAt(e, rep.Records, now)
	rep.Calibration.Proven = b.Proof != ""
	return rep, nil
}

// bindingAt is the latest binding at or before t (bs oldest first).
func bindingAt(bs []registrystore.Binding, t time.Time) *registrystore.Binding {
	ms := t.UnixMilli()
	for i := len(bs) - 1; i >= 0; i-- {
		if bs[i].SinceMs <= ms {
			return &bs[i]
		}
	}
	return nil
}

// flagAt applies the rule to an instrument's history (oldest first).
func flagAt(e dcc.EquipmentID, history []registry.Record, t time.Time) *Flag {
	var cur *registry.Record
	for i := range history {
		if p, ok := history[i].DCC.Performed(); ok && !p.After(t) {
			cur = &history[i]
		}
	}
	f := &Flag{Equipment: e, Status: Uncalibrated}
	if cur != nil {
		f.DCCID, f.Lab, f.DueDate = cur.DCC.ID, cur.Lab, cur.DCC.DueDate
		if due, ok := cur.DCC.Due(); ok {
			f.DueUnix, f.Overdue = due.Unix(), !t.Before(due)
		}
		switch {
		case cur.Status == "revoked":
			f.Status = Revoked
		case f.Overdue:
			f.Status = Overdue
		default:
			f.Status = Valid
		}
	}
	f.Flagged = f.Status != Valid
	return f
}

func (l *Link) registry() Registry {
	if l.Registry == nil {
		return nil
	}
	return l.Registry()
}

func (l *Link) now() time.Time {
	if l.Now != nil {
		return l.Now()
	}
	return time.Now()
}

func (l *Link) logger() *slog.Logger {
	if l.Logger != nil {
		return l.Logger
	}
	return slog.New(slog.DiscardHandler)
}
