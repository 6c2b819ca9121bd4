package calibration

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/fieldtrust/fieldtrust/internal/dcc"
	"github.com/fieldtrust/fieldtrust/internal/dcc/dcctest"
	"github.com/fieldtrust/fieldtrust/internal/dcc/registry"
	"github.com/fieldtrust/fieldtrust/internal/envelope"
	"github.com/fieldtrust/fieldtrust/internal/store"
	"github.com/fieldtrust/fieldtrust/internal/store/postgres/pgtest"
	"github.com/fieldtrust/fieldtrust/internal/store/registrystore"
	"github.com/fieldtrust/fieldtrust/internal/store/sqlite"
)

func stores(t *testing.T) map[string]func(*testing.T) *registrystore.Store {
	return map[string]func(*testing.T) *registrystore.Store{
		"sqlite": func(t *testing.T) *registrystore.Store {
			s, err := sqlite.Open(context.Background(), filepath.Join(t.TempDir(), "r.db"))
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { s.Close() })
			return registrystore.New(s.SQL(), false)
		},
		"postgres": func(t *testing.T) *registrystore.Store { return registrystore.New(pgtest.Open(t).SQL(), true) },
	}
}

// signedDCC is pydcc's typical DCC for instrument serial, performed on
// the given day and due for recalibration on another.
func signedDCC(t *testing.T, lab *dcctest.Lab, id, serial, performed, due string) []byte {
	t.Helper()
	src := dcctest.Dated(dcctest.Sample(t, "../testdata", id, serial), performed, due)
	b, err := dcc.Sign(src, lab.Key, []*x509.Certificate{lab.Leaf, lab.Sub}, lab.Leaf.NotBefore.Add(time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func day(s string) time.Time {
	t, err := time.Parse(time.RFC3339, s)
	if err != nil {
		t, err = time.Parse("2006-01-02", s)
	}
	if err != nil {
		panic(err)
	}
	return t
}

// fleet is a registry with one instrument's three DCCs (the middle one
// revoked) and a device bound to it, then unbound, then bound to an
// instrument without DCCs.
func fleet(t *testing.T, st *registrystore.Store) (*Link, *x509.Certificate) {
	t.Helper()
	ctx := context.Background()
	key, cert, err := registry.LoadKey(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	reg, err := registry.New(ctx, st, registry.Options{Key: key, Cert: cert})
	if err != nil {
		t.Fatal(err)
	}
	a, b := dcctest.NewLab(t, "Lab A", false), dcctest.NewLab(t, "Lab B", false)
	for _, l := range []*dcctest.Lab{a, b} {
		if err := reg.AddIssuer(ctx, l.Name, []*x509.Certificate{l.Root}); err != nil {
			t.Fatal(err)
		}
	}
	for _, d := range []struct {
		lab                *dcctest.Lab
		id, performed, due string
	}{
		{a, "D1", "2020-01-10", "2021-01-10"},
		{b, "D2", "2021-03-01", "2022-03-01"},
		{a, "D3", "2022-06-01", "2023-06-01"},
	} {
		if _, rep, err := reg.SubmitDCC(ctx, signedDCC(t, d.lab, d.id, "SN-CAL", d.performed, d.due)); err != nil {
			t.Fatalf("%s: %v %+v", d.id, err, rep)
		}
	}
	stmt, _ := json.Marshal(registry.Statement{Action: "revoke", DCCID: "D2", Reason: "reference standard out of tolerance"})
	sd, err := envelope.Sign(stmt, &envelope.Signer{Cert: b.Leaf, Key: b.Key, Chain: []*x509.Certificate{b.Sub}, EmbedCerts: true}, b.Leaf.NotBefore.Add(time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := reg.SubmitStatement(ctx, sd); err != nil {
		t.Fatal(err)
	}
	l := &Link{Bindings: st, Registry: func() Registry { return reg }, Now: func() time.Time { return day("2023-06-30T00:00:00Z") }}
	for _, b := range []struct {
		since string
		e     dcc.EquipmentID
	}{
		{"2020-01-01", dcc.EquipmentID{Issuer: "manufacturer", Value: "SN-CAL"}},
		{"2023-01-01", dcc.EquipmentID{}},
		{"2023-02-01", dcc.EquipmentID{Issuer: "owner", Value: "SN-OTHER"}},
	} {
		if err := l.Bind(ctx, "ms/acc/gw", "dev-1", b.e, day(b.since), "ms/acc/gw"); err != nil {
			t.Fatal(err)
		}
	}
	return l, cert
}

// TestFlagRule: which binding and which DCC apply to a measurement, at
// the edges of performance days, due dates, a revocation and bindings.
// bindingsChunkForTest is registrystore's devices per read (200).
const bindingsChunkForTest = 200

func TestFlagRule(t *testing.T) {
	for name, open := range stores(t) {
		t.Run(name, func(t *testing.T) {
			l, _ := fleet(t, open(t))
			ctx := context.Background()
			// Another device, bound to the same instrument later on: FlagsOf
			// keeps each device's bindings apart.
			if err := l.Bind(ctx, "ms/acc/gw-2", "dev-1", dcc.EquipmentID{Issuer: "manufacturer", Value: "SN-CAL"}, day("2022-12-01"), "ms/acc/gw-2"); err != nil {
				t.Fatal(err)
			}
			one, err := l.Flags(ctx, "ms/acc/gw", "dev-1")
			if err != nil {
				t.Fatal(err)
			}
			// FlagsOf must give the same flags, for the device among more
			// devices than one read asks for (and a device with no bindings).
			var devices []registrystore.Device
			for i := range 2*bindingsChunkForTest + 7 {
				devices = append(devices, registrystore.Device{Gateway: "ms/acc/gw", Device: fmt.Sprintf("other-%d", i)})
			}
			devices = append(devices, registrystore.Device{Gateway: "ms/acc/gw-2", Device: "dev-1"}, registrystore.Device{Gateway: "ms/acc/gw", Device: "dev-1"})
			many, err := l.FlagsOf(ctx, devices)
			if err != nil {
				t.Fatal(err)
			}
			if len(many) != len(devices) {
				t.Fatalf("FlagsOf returned %d devices of %d", len(many), len(devices))
			}
			for _, d := range devices[:len(devices)-2] {
				if f := many[d](day("2022-06-01T00:00:00Z")); f != nil {
					t.Fatalf("%v has no bindings, flagged %+v", d, f)
				}
			}
			if f := many[registrystore.Device{Gateway: "ms/acc/gw-2", Device: "dev-1"}](day("2022-11-30T00:00:00Z")); f != nil {
				t.Fatalf("gw-2/dev-1 before its binding: %+v", f)
			}
			if f := many[registrystore.Device{Gateway: "ms/acc/gw-2", Device: "dev-1"}](day("2023-03-01T00:00:00Z")); f == nil || f.DCCID != "D3" {
				t.Fatalf("gw-2/dev-1 after its binding: %+v", f)
			}
			for way, flags := range map[string]func(time.Time) *Flag{"Flags": one, "FlagsOf": many[registrystore.Device{Gateway: "ms/acc/gw", Device: "dev-1"}]} {
				tests := []struct {
					at, status, dcc string // status "": no flag
					overdue         bool
				}{
					{"2019-12-31T23:59:59Z", "", "", false},           // before any binding
					{"2020-01-05T00:00:00Z", Uncalibrated, "", false}, // bound, no DCC performed yet
					{"2020-01-09T23:59:59Z", Uncalibrated, "", false}, // the day before D1's calibration
					{"2020-01-10T00:00:00Z", Valid, "D1", false},      // D1's performance day
					{"2021-01-10T23:59:59Z", Valid, "D1", false},      // the last second of D1's due date
					{"2021-01-11T00:00:00Z", Overdue, "D1", true},     // the first overdue instant
					{"2021-03-01T08:00:00Z", Revoked, "D2", false},    // D2 applies and was revoked
					{"2022-05-31T12:00:00Z", Revoked, "D2", true},     // revoked wins over overdue
					{"2022-06-01T00:00:00Z", Valid, "D3", false},      // D3 supersedes
					{"2023-01-01T00:00:00Z", "", "", false},           // unbound
					{"2023-03-01T00:00:00Z", Uncalibrated, "", false}, // another instrument, no DCCs
					{"2022-12-31T23:59:59.999Z", Valid, "D3", false},  // the millisecond before unbinding
					{"2020-01-01T00:00:00Z", Uncalibrated, "", false}, // the binding's first millisecond
					{"1970-01-01T00:00:00Z", "", "", false},           // long before
					{"2023-06-01T23:59:59Z", Uncalibrated, "", false}, // SN-OTHER: D3 is not its DCC
					{"2022-06-01T00:00:00.001Z", Valid, "D3", false},
				}
				for _, tt := range tests {
					f := flags(day(tt.at))
					if tt.status == "" {
						if f != nil {
							t.Errorf("%s %s: %+v, want no flag", way, tt.at, f)
						}
						continue
					}
					if f == nil || f.Status != tt.status || f.DCCID != tt.dcc || f.Overdue != tt.overdue || f.Flagged != (tt.status != Valid) {
						t.Errorf("%s %s: %+v, want %s %s overdue=%v", way, tt.at, f, tt.status, tt.dcc, tt.overdue)
					}
				}
				if f := flags(day("2021-01-11T00:00:00Z")); f.DueDate != "2021-01-10" || f.DueUnix != day("2021-01-11T00:00:00Z").Unix() || f.Lab != "Lab A" {
					t.Errorf("%s: due fields: %+v", way, f)
				}
			}
		})
	}
}

// TestUnavailableRegistry: a registry that is not open flags a bound
// device's measurements unknown (never valid), and the report is refused.
func TestUnavailableRegistry(t *testing.T) {
	l, _ := fleet(t, stores(t)["sqlite"](t))
	l.Registry = func() Registry { return nil }
	flags, err := l.Flags(context.Background(), "ms/acc/gw", "dev-1")
	if err != nil {
		t.Fatal(err)
	}
	if f := flags(day("2020-06-01")); f == nil || f.Status != Unknown || !f.Flagged {
		t.Fatalf("%+v", f)
	}
	if f := flags(day("2019-06-01")); f != nil {
		t.Fatalf("unbound: %+v", f)
	}
	l.Now = func() time.Time { return day("2020-06-01") }
	if _, err := l.Report(context.Background(), "ms/acc/gw", "dev-1"); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("report: %v", err)
	}
}

// TestReport: the device's bindings, its calibration now and the
// instrument's history whose proofs verify offline.
func TestReport(t *testing.T) {
	l, cert := fleet(t, stores(t)["sqlite"](t))
	l.Now = func() time.Time { return day("2022-07-01") }
	rep, err := l.Report(context.Background(), "ms/acc/gw", "dev-1")
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Bindings) != 3 || rep.Bindings[0].Equipment.Value != "SN-CAL" || rep.Bindings[1].Equipment.Value != "" {
		t.Fatalf("bindings %+v", rep.Bindings)
	}
	if c := rep.Calibration; c == nil || c.Status != Valid || c.DCCID != "D3" || c.DueUnix != day("2023-06-02").Unix() {
		t.Fatalf("calibration %+v", rep.Calibration)
	}
	var ids []string
	for _, r := range rep.Records {
		ids = append(ids, r.DCC.ID+":"+r.Status)
		if err := registry.VerifyRecord(*rep.TreeHead, cert, &r); err != nil {
			t.Errorf("%s: %v", r.DCC.ID, err)
		}
	}
	if strings.Join(ids, " ") != "D1:superseded D2:revoked D3:valid" {
		t.Fatalf("records %v", ids)
	}
	// Unbound now: bindings only.
	l.Now = func() time.Time { return day("2023-01-15") }
	if rep, err := l.Report(context.Background(), "ms/acc/gw", "dev-1"); err != nil || rep.Calibration != nil || len(rep.Records) != 0 {
		t.Fatalf("unbound report %+v %v", rep, err)
	}
}

// TestBindRefuses: what a binding must be, each with a clear reason.
func TestBindRefuses(t *testing.T) {
	l, _ := fleet(t, stores(t)["sqlite"](t))
	now := l.Now()
	tests := []struct {
		name  string
		e     dcc.EquipmentID
		since time.Time
		want  string
	}{
		{"unknown issuer", dcc.EquipmentID{Issuer: "vendor", Value: "X"}, time.Time{}, "issuer"},
		{"no issuer", dcc.EquipmentID{Value: "X"}, time.Time{}, "issuer"},
		{"issuer without value", dcc.EquipmentID{Issuer: "owner"}, time.Time{}, "without a value"},
		{"long value", dcc.EquipmentID{Issuer: "owner", Value: strings.Repeat("x", dcc.MaxText+1)}, time.Time{}, "at most"},
		{"control character", dcc.EquipmentID{Issuer: "owner", Value: "SN\x00"}, time.Time{}, "printable"},
		{"newline", dcc.EquipmentID{Issuer: "owner", Value: "SN\n1"}, time.Time{}, "printable"},
		{"invalid UTF-8", dcc.EquipmentID{Issuer: "owner", Value: "SN\xff"}, time.Time{}, "printable"},
		{"future", dcc.EquipmentID{Issuer: "owner", Value: "SN"}, now.Add(time.Millisecond), "future"},
		{"before 1970", dcc.EquipmentID{Issuer: "owner", Value: "SN"}, time.UnixMilli(-1), "1970"},
	}
	for _, tt := range tests {
		err := l.Bind(context.Background(), "ms/acc/gw", "dev-2", tt.e, tt.since, "x")
		if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: %v, want ErrInvalid saying %q", tt.name, err, tt.want)
		}
	}
	if bs, _ := l.Bindings.Bindings(context.Background(), "ms/acc/gw", "dev-2"); len(bs) != 0 {
		t.Fatalf("a refused binding was stored: %+v", bs)
	}
}

// TestBindingProof: a manufacturer identification is proven when it is the
// onboarding identity the gateway enrolled with (its claim's serial or
// subject, or the onboarding certificate's serial), refused when it is
// another device's (another manufacturer's instrument serial, enrolled
// elsewhere), and any other binding is declared; the report and the flag
// say which.
func TestBindingProof(t *testing.T) {
	ctx := context.Background()
	s, err := sqlite.Open(ctx, filepath.Join(t.TempDir(), "r.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	now := day("2026-06-01")
	claims := []store.Claim{
		{ClaimKey: store.ClaimKey{ManufacturerKeyID: strings.Repeat("a", 64), Kind: store.ClaimBySerial, Value: "SN-A1"}, ManufacturerSubject: "CN=Acme Instruments", Path: "ms/acc/gw", CreatedAt: now},
		{ClaimKey: store.ClaimKey{ManufacturerKeyID: strings.Repeat("b", 64), Kind: store.ClaimBySubject, Value: "SN-B7"}, ManufacturerSubject: "CN=Other Maker", Path: "ms/acc/gw-2", CreatedAt: now},
		{ClaimKey: store.ClaimKey{ManufacturerKeyID: strings.Repeat("b", 64), Kind: store.ClaimBySerial, Value: "SN-B8"}, ManufacturerSubject: "CN=Other Maker", Path: "ms/acc/gw-3", CreatedAt: now},
	}
	if err := s.PutClaims(ctx, claims); err != nil {
		t.Fatal(err)
	}
	for i, c := range claims[:2] {
		if err := s.ConsumeClaim(ctx, c.ClaimKey, store.Consumer{Serial: fmt.Sprintf("5e1a%d", i), Fingerprint: strings.Repeat("f", 64)}, now); err != nil {
			t.Fatal(err)
		}
	}
	l := &Link{Bindings: registrystore.New(s.SQL(), false), Enrollments: s, Now: func() time.Time { return now }}
	for _, tt := range []struct {
		name   string
		e      dcc.EquipmentID
		err    error
		proven bool
	}{
		{"its own claim's serial", dcc.EquipmentID{Issuer: "manufacturer", Value: "SN-A1"}, nil, true},
		{"its onboarding certificate's serial", dcc.EquipmentID{Issuer: "manufacturer", Value: "5e1a0"}, nil, true},
		{"another manufacturer's enrolled instrument", dcc.EquipmentID{Issuer: "manufacturer", Value: "SN-B7"}, ErrNotTheirs, false},
		{"another enrolled instrument's certificate serial", dcc.EquipmentID{Issuer: "manufacturer", Value: "5e1a1"}, ErrNotTheirs, false},
		{"another device's claim, not enrolled yet", dcc.EquipmentID{Issuer: "manufacturer", Value: "SN-B8"}, ErrNotTheirs, false},
		{"a serial no claim names", dcc.EquipmentID{Issuer: "manufacturer", Value: "SN-Z"}, nil, false},
		{"the customer's inventory number", dcc.EquipmentID{Issuer: "customer", Value: "SN-B7"}, nil, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			dev := "dev-" + tt.e.Value
			err := l.Bind(ctx, "ms/acc/gw", dev, tt.e, day("2026-01-01"), "ms/acc/gw")
			if !errors.Is(err, tt.err) {
				t.Fatalf("bind: %v, want %v", err, tt.err)
			}
			if err != nil && (strings.Contains(err.Error(), "gw-2") || strings.Contains(err.Error(), "Other Maker")) {
				t.Errorf("the refusal names the other device: %v", err)
			}
			rep, err := l.Report(ctx, "ms/acc/gw", dev)
			if err != nil && !errors.Is(err, ErrUnavailable) {
				t.Fatal(err)
			}
			if tt.err != nil {
				if rep == nil || len(rep.Bindings) != 0 {
					t.Fatalf("a refused binding was stored: %+v", rep)
				}
				return
			}
			bs, _ := l.Bindings.Bindings(ctx, "ms/acc/gw", dev)
			if len(bs) != 1 || (bs[0].Proof != "") != tt.proven {
				t.Fatalf("stored %+v, proven %v", bs, tt.proven)
			}
			if tt.proven && !strings.Contains(bs[0].Proof, "Acme Instruments") {
				t.Errorf("proof %q does not name the manufacturer", bs[0].Proof)
			}
			flag, err := l.Flags(ctx, "ms/acc/gw", dev)
			if err != nil {
				t.Fatal(err)
			}
			if f := flag(now); f == nil || f.Proven != tt.proven || f.Status != Unknown {
				t.Errorf("flag %+v, proven %v", f, tt.proven)
			}
		})
	}
}
