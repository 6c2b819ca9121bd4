package rules

import (
	"context"
	"crypto/x509"
	"errors"
	"log/slog"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/fieldtrust/fieldtrust/internal/dcc"
	"github.com/fieldtrust/fieldtrust/internal/dcc/calibration"
	"github.com/fieldtrust/fieldtrust/internal/dcc/dcctest"
	"github.com/fieldtrust/fieldtrust/internal/dcc/registry"
	"github.com/fieldtrust/fieldtrust/internal/snapshot"
	"github.com/fieldtrust/fieldtrust/internal/store"
	"github.com/fieldtrust/fieldtrust/internal/store/registrystore"
	"github.com/fieldtrust/fieldtrust/internal/store/sqlite"
)

// flagDue is the calibration of an instrument whose applicable DCC is
// due at t0+minutes (the first overdue instant), evaluated at t.
func flagDue(minutes int, status string) func(t time.Time) *calibration.Flag {
	return func(t time.Time) *calibration.Flag {
		due := t0.Add(time.Duration(minutes) * time.Minute)
		f := &calibration.Flag{Equipment: dcc.EquipmentID{Issuer: "manufacturer", Value: "SN-1"}, Status: status, DCCID: "DCC-1", Lab: "Lab A",
			DueDate: due.Format("2006-01-02"), DueUnix: due.Unix(), Overdue: !t.Before(due)}
		if f.Status == "" {
			f.Status = map[bool]string{true: calibration.Overdue, false: calibration.Valid}[f.Overdue]
		}
		f.Flagged = f.Status != calibration.Valid
		return f
	}
}

// TestEngineCalibration: rule conditions read the device's calibration
// at the snapshot's measurement time — the built-in overdue {calibration:
// true} (the DCC's due date) and CEL over calibration.status, .flagged,
// .due — table-driven; no instrument, an unreadable link and no link are
// none, unknown and unknown.
func TestEngineCalibration(t *testing.T) {
	const overdueRule = "version: 1\nname: dcc-due\nscope: ms\noverdue: {calibration: true}\nactions:\n  - mqtt: {}\n"
	when := func(cond string) string {
		return "version: 1\nname: dcc\nscope: ms\nwhen: '" + cond + "'\nactions:\n  - mqtt: {}\n"
	}
	for _, tc := range []struct {
		name   string
		rule   string
		flag   func(time.Time) *calibration.Flag // nil: no instrument bound
		noLink bool
		minute int
		raised bool
	}{
		{"before the due date", overdueRule, flagDue(10, ""), false, 9, false},
		{"at the due date", overdueRule, flagDue(10, ""), false, 10, true},
		{"after the due date", overdueRule, flagDue(10, ""), false, 30, true},
		{"revoked and overdue", overdueRule, flagDue(10, calibration.Revoked), false, 30, true},
		{"revoked, not overdue: not the due date's rule", overdueRule, flagDue(10, calibration.Revoked), false, 0, false},
		{"no instrument bound", overdueRule, nil, false, 30, false},
		{"uncalibrated: no due date", overdueRule, func(time.Time) *calibration.Flag {
			return &calibration.Flag{Status: calibration.Uncalibrated, Flagged: true}
		}, false, 30, false},
		{"no fleet link: unknown has no due date", overdueRule, nil, true, 30, false},
		{"status revoked", when(`calibration.status == "revoked"`), flagDue(10, calibration.Revoked), false, 0, true},
		{"status valid is not revoked", when(`calibration.status == "revoked"`), flagDue(10, ""), false, 0, false},
		{"flagged when overdue", when("calibration.flagged"), flagDue(10, ""), false, 10, true},
		{"not flagged when valid", when("calibration.flagged"), flagDue(10, ""), false, 0, false},
		{"none when unbound", when(`calibration.status == "none" && !calibration.flagged`), nil, false, 0, true},
		{"unknown without a link, flagged", when(`calibration.status == "unknown" && calibration.flagged`), nil, true, 0, true},
		{"due as a timestamp: a week of warning", when(`has(calibration.due) && at + duration("168h") >= calibration.due`), flagDue(10, ""), false, 0, true},
		{"lab and DCC id", when(`calibration.lab == "Lab A" && calibration.dcc_id == "DCC-1"`), flagDue(10, ""), false, 0, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := NewEngine()
			e.SetRules([]*Rule{mustRule(t, "r", tc.rule)})
			var asked []time.Time
			if !tc.noLink {
				e.Calibration = func(gw, dev string, at time.Time) *calibration.Flag {
					if gw != "ms/acc/gw" || dev != "pump" {
						t.Errorf("looked up %s/%s", gw, dev)
					}
					asked = append(asked, at)
					if tc.flag == nil {
						return nil
					}
					return tc.flag(at)
				}
			}
			var c store.RuleCommit
			rec := snap("ms/acc/gw", "pump", "pump", tc.minute, map[string]float64{"t": 1})
			e.Snapshot(rec, &c)
			if len(c.Errors) > 0 {
				t.Fatalf("rule errors: %+v", c.Errors)
			}
			if got := len(c.Alarms) == 1 && !c.Alarms[0].Clear; got != tc.raised || len(c.Alarms) > 1 {
				t.Errorf("alarms %+v, want raised=%v", c.Alarms, tc.raised)
			}
			if !tc.noLink && (len(asked) != 1 || !asked[0].Equal(rec.Time)) {
				t.Errorf("looked up at %v, want once at the measurement time %v", asked, rec.Time)
			}
		})
	}
}

// TestEngineCalibrationClears: the built-in overdue alarm is raised when
// the measurement passes the due date and cleared when a new DCC (a later
// due date) applies; rules that do not read calibration never look it up,
// and several that do look it up once per snapshot.
func TestEngineCalibrationClears(t *testing.T) {
	e := NewEngine()
	plain := mustRule(t, "p", "version: 1\nname: hot\nscope: ms\nwhen: values.t > 90.0\nactions:\n  - mqtt: {}\n")
	e.SetRules([]*Rule{plain})
	lookups := 0
	due := 10
	e.Calibration = func(_, _ string, at time.Time) *calibration.Flag { lookups++; return flagDue(due, "")(at) }
	var c store.RuleCommit
	e.Snapshot(snap("ms/acc/gw", "pump", "pump", 20, map[string]float64{"t": 95}), &c)
	if lookups != 0 || len(c.Alarms) != 1 {
		t.Fatalf("a rule without calibration: %d lookups, alarms %+v", lookups, c.Alarms)
	}
	e = NewEngine()
	e.Calibration = func(_, _ string, at time.Time) *calibration.Flag { lookups++; return flagDue(due, "")(at) }
	e.SetRules([]*Rule{plain,
		mustRule(t, "o", "version: 1\nname: dcc-due\nscope: ms\noverdue: {calibration: true}\nactions:\n  - mqtt: {}\n"),
		mustRule(t, "f", "version: 1\nname: dcc-flag\nscope: ms\nwhen: calibration.flagged\nactions:\n  - mqtt: {}\n")})
	for _, st := range []struct {
		minute, due     int
		raised, cleared int
		lookupsPerSnap  int
	}{
		{5, 10, 0, 0, 1},
		{10, 10, 2, 0, 1}, // overdue: both calibration rules
		{15, 10, 0, 0, 1}, // still overdue: no second alarm
		{20, 60, 0, 2, 1}, // recalibrated: a DCC due later applies
		{30, 60, 0, 0, 1},
	} {
		due, lookups = st.due, 0
		var c store.RuleCommit
		e.Snapshot(snap("ms/acc/gw", "pump", "pump", st.minute, map[string]float64{"t": 20}), &c)
		raised, cleared := 0, 0
		for _, a := range c.Alarms {
			if a.Clear {
				cleared++
			} else {
				raised++
			}
		}
		if raised != st.raised || cleared != st.cleared || lookups != st.lookupsPerSnap {
			t.Errorf("minute %d: raised %d cleared %d lookups %d, want %d %d %d", st.minute, raised, cleared, lookups, st.raised, st.cleared, st.lookupsPerSnap)
		}
	}
}

// TestCalibrationNotBool: a condition of type dyn (a calibration field)
// that is not true or false when it runs is a rule error, not an alarm.
func TestCalibrationNotBool(t *testing.T) {
	e := NewEngine()
	e.SetRules([]*Rule{mustRule(t, "r", "version: 1\nname: r\nscope: ms\nwhen: calibration.lab\nactions:\n  - mqtt: {}\n")})
	e.Calibration = func(string, string, time.Time) *calibration.Flag { return flagDue(10, "")(t0) }
	var c store.RuleCommit
	e.Snapshot(snap("ms/acc/gw", "pump", "pump", 0, nil), &c)
	if len(c.Alarms) != 0 || len(c.Errors) != 1 || !strings.Contains(c.Errors[0].Message, "not true or false") {
		t.Fatalf("alarms %+v errors %+v", c.Alarms, c.Errors)
	}
	// calibration.due without has() on an instrument whose DCC states no
	// due date: a rule error that says how to guard it.
	e.SetRules([]*Rule{mustRule(t, "d", "version: 1\nname: d\nscope: ms\nwhen: at >= calibration.due\nactions:\n  - mqtt: {}\n")})
	e.Calibration = func(string, string, time.Time) *calibration.Flag {
		return &calibration.Flag{Status: calibration.Uncalibrated, Flagged: true}
	}
	c = store.RuleCommit{}
	e.Snapshot(snap("ms/acc/gw", "pump", "pump", 1, nil), &c)
	if len(c.Errors) != 1 || !strings.Contains(c.Errors[0].Message, "has(calibration.due)") {
		t.Fatalf("errors %+v", c.Errors)
	}
}

// countingLink is a fleet link that counts its reads.
type countingLink struct {
	reads int
	err   error
}

func (l *countingLink) Flags(context.Context, string, string) (func(time.Time) *calibration.Flag, error) {
	l.reads++
	return flagDue(10, ""), l.err
}

// TestCalibrationCache: a device's calibration is read at most once per
// CalibrationTTL (a clock moved by hand); a failed read is unknown, not
// valid, and retried after the TTL.
func TestCalibrationCache(t *testing.T) {
	now := t0
	link := &countingLink{}
	cc := &calibrationCache{link: link, now: func() time.Time { return now }, log: slog.New(slog.DiscardHandler)}
	for i := range 3 {
		if f := cc.flag(t.Context(), "ms/acc/gw", "pump", t0.Add(time.Duration(i)*time.Minute)); f.Status != calibration.Valid {
			t.Fatalf("flag %+v", f)
		}
	}
	cc.flag(t.Context(), "ms/acc/gw", "other", t0)
	if link.reads != 2 {
		t.Fatalf("%d reads for two devices within the TTL", link.reads)
	}
	now = now.Add(CalibrationTTL)
	link.err = errors.New("database is locked")
	if f := cc.flag(t.Context(), "ms/acc/gw", "pump", t0); f.Status != calibration.Unknown || !f.Flagged || link.reads != 3 {
		t.Fatalf("after the TTL with a failing store: %+v, %d reads", f, link.reads)
	}
	link.err = nil
	if f := cc.flag(t.Context(), "ms/acc/gw", "pump", t0); f.Status != calibration.Unknown || link.reads != 3 {
		t.Fatalf("the failure is kept for the TTL: %+v, %d reads", f, link.reads)
	}
	now = now.Add(CalibrationTTL)
	if f := cc.flag(t.Context(), "ms/acc/gw", "pump", t0.Add(20*time.Minute)); f.Status != calibration.Overdue || link.reads != 4 {
		t.Fatalf("read again: %+v, %d reads", f, link.reads)
	}
}

// TestParseOverdueCalibration: overdue {calibration: true} loads as the
// due-date condition over calibration; mixed with a channel, or false, it
// is refused with its place.
func TestParseOverdueCalibration(t *testing.T) {
	base := "version: 1\nname: r\nscope: ms\n"
	act := "actions:\n  - mqtt: {}\n"
	r, err := Load("x.yaml", []byte(base+"overdue: {calibration: true}\nfor: 1h\n"+act))
	if err != nil {
		t.Fatal(err)
	}
	if !r.Overdue.Calibration || r.Kind() != "overdue" || !r.UsesCalibration() || r.For != time.Hour || !strings.Contains(r.Condition(), "calibration.due") {
		t.Fatalf("loaded %+v, condition %q", r.Overdue, r.Condition())
	}
	if r := mustRule(t, "w", base+"when: values.t > 1.0\n"+act); r.UsesCalibration() {
		t.Error("a rule without calibration uses it")
	}
	for _, tc := range []struct{ src, want string }{
		{"overdue: {calibration: true, channel: hours}\n", "x.yaml:4:10: overdue: calibration: true reads the DCC"},
		{"overdue: {calibration: true, date: true}\n", "x.yaml:4:10: overdue: calibration: true"},
		{"overdue: {calibration: false}\n", "x.yaml:4:24: overdue: calibration: false is the default"},
		{"overdue: {calibration: yes please}\n", "x.yaml:4:24: overdue.calibration: want true or false"},
		{"when: calibration\n", "x.yaml:4:7: when: the condition is of type map(string, dyn)"},
	} {
		_, err := Load("x.yaml", []byte(base+tc.src+act))
		if err == nil || !strings.HasPrefix(err.Error(), tc.want) {
			t.Errorf("%q: %v, want %q", tc.src, err, tc.want)
		}
	}
}

// calibratedFleet is a platform store (SQLite) with a DCC registry holding
// instrument SN-1's DCC-1 (performed 2026-01-05, due 2026-11-30) and
// devices "due" and "early" of gateway ms/acc/gw bound to it since
// 2026-01-01, and the real fleet link on it.
func calibratedFleet(t *testing.T) (*sqlite.Store, *calibration.Link) {
	t.Helper()
	ctx := context.Background()
	st, err := sqlite.Open(ctx, filepath.Join(t.TempDir(), "db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	rs, err := registrystore.Of(st)
	if err != nil {
		t.Fatal(err)
	}
	key, cert, err := registry.LoadKey(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	reg, err := registry.New(ctx, rs, registry.Options{Key: key, Cert: cert})
	if err != nil {
		t.Fatal(err)
	}
	lab := dcctest.NewLab(t, "Lab A", false)
	if err := reg.AddIssuer(ctx, lab.Name, []*x509.Certificate{lab.Root}); err != nil {
		t.Fatal(err)
	}
	src := dcctest.Dated(dcctest.Sample(t, "../dcc/testdata", "DCC-1", "SN-1"), "2026-01-05", "2026-11-30")
	signed, err := dcc.Sign(src, lab.Key, []*x509.Certificate{lab.Leaf, lab.Sub}, lab.Leaf.NotBefore.Add(time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	if _, rep, err := reg.SubmitDCC(ctx, signed); err != nil {
		t.Fatalf("%v %+v", err, rep)
	}
	link := &calibration.Link{Bindings: rs, Registry: func() calibration.Registry { return reg }, Now: func() time.Time { return t0.Add(time.Hour) }}
	for _, dev := range []string{"due", "early"} {
		if err := link.Bind(ctx, "ms/acc/gw", dev, dcc.EquipmentID{Issuer: "manufacturer", Value: "SN-1"}, time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC), "ms/acc/gw"); err != nil {
			t.Fatal(err)
		}
	}
	return st, link
}

// TestServiceCalibration: the service runs overdue {calibration: true}
// against the real fleet link — a registry on SQLite with the instrument's
// DCC, the device bound to it — on the platform's store: a measurement
// after the due date raises the alarm, one before does not.
func TestServiceCalibration(t *testing.T) {
	ctx := context.Background()
	st, link := calibratedFleet(t)
	if _, err := Add(ctx, st, Author{Vendor: true}, "r.yaml", []byte("version: 1\nname: dcc-due\nscope: ms\noverdue: {calibration: true}\nactions:\n  - email: [lab@x.example]\n"), t0); err != nil {
		t.Fatal(err)
	}
	// t0 is 2026-12-01 08:00: past the due day 2026-11-30; "early" measured on 2026-11-30.
	var recs []store.SnapshotRecord
	for i, d := range []struct {
		dev string
		at  time.Time
	}{{"due", t0}, {"early", time.Date(2026, 11, 30, 23, 59, 0, 0, time.UTC)}} {
		b := snapshot.Builder{Device: d.dev}
		enc, s, err := b.Next(d.at.UnixMilli(), []snapshot.Value{{Channel: "t", Value: 1}})
		if err != nil {
			t.Fatal(err)
		}
		h := snapshot.Hash(enc)
		recs = append(recs, store.SnapshotRecord{Gateway: "ms/acc/gw", Device: d.dev, Seq: s.Seq, Time: s.Time(), Hash: h[:], Prev: s.Prev, Values: s.Values,
			Signer: "x", SignedAt: s.Time(), ReceivedAt: s.Time(), LedgerIndex: uint64(i)})
	}
	if _, err := st.InsertSnapshots(ctx, recs); err != nil {
		t.Fatal(err)
	}
	cctx, cancel := context.WithCancel(ctx)
	reached := make(chan struct{})
	s := &Service{Store: st, TickEvery: time.Hour, ReloadEvery: time.Hour, Calibration: link, Now: func() time.Time { return t0.Add(time.Hour) }}
	s.committed = func(c store.RuleCommit) {
		if c.Cursor != nil && *c.Cursor >= 2 {
			select {
			case <-reached:
			default:
				close(reached)
			}
		}
	}
	done := make(chan error, 1)
	go func() { done <- s.Run(cctx) }()
	select {
	case <-reached:
	case err := <-done:
		t.Fatalf("service ended: %v", err)
	case <-time.After(30 * time.Second):
		t.Fatal("the service did not reach its cursor")
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	alarms, err := st.Alarms(ctx, store.AlarmQuery{State: "open", Limit: 10})
	if err != nil {
		t.Fatal(err)
	}
	if len(alarms) != 1 || alarms[0].Device != "ms/acc/gw/due" {
		t.Fatalf("open alarms %+v, want one for ms/acc/gw/due", alarms)
	}
	if errs, _ := st.RuleErrors(ctx, "", 10); len(errs) != 0 {
		t.Fatalf("rule errors %+v", errs)
	}
}

// TestReplayCalibration: 'rule test' (Replay) with the fleet link gives
// rules the calibration of each replayed measurement at its time — an
// overdue {calibration: true} rule raises at the first measurement past
// DCC-1's due day, and a condition on calibration.status and dcc_id sees
// the DCC — where without the link every calibration is unknown and
// neither fires.
func TestReplayCalibration(t *testing.T) {
	ctx := context.Background()
	st, link := calibratedFleet(t)
	var recs []store.SnapshotRecord
	for i, at := range []time.Time{
		time.Date(2026, 11, 29, 12, 0, 0, 0, time.UTC),
		time.Date(2026, 11, 30, 23, 59, 0, 0, time.UTC),
		time.Date(2026, 12, 1, 8, 0, 0, 0, time.UTC),
		time.Date(2026, 12, 1, 9, 0, 0, 0, time.UTC),
	} {
		b := snapshot.Builder{Device: "due"}
		enc, s, err := b.Next(at.UnixMilli(), []snapshot.Value{{Channel: "t", Value: 1}})
		if err != nil {
			t.Fatal(err)
		}
		h := snapshot.Hash(enc)
		recs = append(recs, store.SnapshotRecord{Gateway: "ms/acc/gw", Device: "due", Seq: uint64(i + 1), Time: s.Time(), Hash: h[:], Prev: s.Prev, Values: s.Values,
			Signer: "x", SignedAt: s.Time(), ReceivedAt: s.Time(), LedgerIndex: uint64(i)})
	}
	if _, err := st.InsertSnapshots(ctx, recs); err != nil {
		t.Fatal(err)
	}
	overdue := mustRule(t, "o.yaml", "version: 1\nname: dcc-due\nscope: ms\noverdue: {calibration: true}\nactions:\n  - email: [lab@x.example]\n")
	valid := mustRule(t, "v.yaml", "version: 1\nname: calibrated\nscope: ms\nmode: each\nwhen: calibration.status == \"valid\" && calibration.dcc_id == \"DCC-1\"\nactions:\n  - email: [lab@x.example]\n")
	for _, tc := range []struct {
		name string
		cal  Calibrations
		r    *Rule
		want []string // event at
	}{
		{"overdue with the link", link, overdue, []string{"raised 2026-12-01T08:00:00Z"}},
		{"overdue without", nil, overdue, nil},
		{"calibration.status with the link", link, valid, []string{"matched 2026-11-29T12:00:00Z", "matched 2026-11-30T23:59:00Z"}},
		{"calibration.status without", nil, valid, nil},
	} {
		var got []string
		n, err := Replay(ctx, st, tc.cal, tc.r, "ms/acc/gw/due", time.Time{}, time.Time{}, func(f Fired) {
			if f.Event == "error" {
				t.Errorf("%s: %s", tc.name, f.Summary)
			}
			got = append(got, f.Event+" "+f.At.UTC().Format(time.RFC3339))
		})
		if err != nil || n != 4 {
			t.Fatalf("%s: %d replayed, %v", tc.name, n, err)
		}
		if !slices.Equal(got, tc.want) {
			t.Errorf("%s: %v, want %v", tc.name, got, tc.want)
		}
	}
}
