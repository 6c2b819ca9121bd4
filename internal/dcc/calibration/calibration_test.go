package calibration

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"errors"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/fieldtrust/fieldtrust/internal/dcc"
	"github.com/fieldtrust/fieldtrust/internal/dcc/dcctest"
	"github.com/fieldtrust/fieldtrust/internal/dcc/registry"
	"github.com/fieldtrust/fieldtrust/internal/envelope"
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
func TestFlagRule(t *testing.T) {
	for name, open := range stores(t) {
		t.Run(name, func(t *testing.T) {
			l, _ := fleet(t, open(t))
			flags, err := l.Flags(context.Background(), "ms/acc/gw", "dev-1")
			if err != nil {
				t.Fatal(err)
			}
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
						t.Errorf("%s: %+v, want no flag", tt.at, f)
					}
					continue
				}
				if f == nil || f.Status != tt.status || f.DCCID != tt.dcc || f.Overdue != tt.overdue || f.Flagged != (tt.status != Valid) {
					t.Errorf("%s: %+v, want %s %s overdue=%v", tt.at, f, tt.status, tt.dcc, tt.overdue)
				}
			}
			if f := flags(day("2021-01-11T00:00:00Z")); f.DueDate != "2021-01-10" || f.DueUnix != day("2021-01-11T00:00:00Z").Unix() || f.Lab != "Lab A" {
				t.Errorf("due fields: %+v", f)
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
