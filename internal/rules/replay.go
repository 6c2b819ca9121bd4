package rules

import (
	"context"
	"fmt"
	"time"

	"github.com/fieldtrust/fieldtrust/internal/dcc/calibration"
	"github.com/fieldtrust/fieldtrust/internal/store"
)

// Querier reads stored history.
type Querier interface {
	QuerySnapshots(ctx context.Context, q store.SnapshotQuery) ([]store.SnapshotRecord, error)
}

// Fired is what a rule did, or would have done, on replayed history.
type Fired struct {
	At      time.Time
	Event   string // raised, cleared, matched, error
	Device  string
	Seq     uint64
	Summary string
	Actions []string // what would have been sent (kind: target)
}

// Replay runs one rule over the stored snapshots of a measurement device
// (gateway/device) with from <= time < to (zero bounds open), as the
// engine would have, and reports what fired, without raising or sending
// anything. Silence is checked before each snapshot and at the end.
//
// cal is the DCC fleet link: a rule reading calibration (or overdue:
// {calibration: true}) sees the device's calibration at each replayed
// measurement's time, as the service would have, from the device's
// bindings and its instrument's registry history read once; nil: every
// calibration is unknown.
func Replay(ctx context.Context, q Querier, cal Calibrations, r *Rule, device string, from, to time.Time, out func(Fired)) (int, error) {
	gw, dev, err := splitDevice(device)
	if err != nil {
		return 0, err
	}
	e := NewEngine()
	if cal != nil && r.UsesCalibration() {
		flag, err := cal.Flags(ctx, gw, dev)
		if err != nil {
			return 0, fmt.Errorf("replay %s: calibration: %w", device, err)
		}
		e.Calibration = func(_, _ string, t time.Time) *calibration.Flag { return flag(t) }
	}
	rr := *r
	rr.Enabled = true
	if rr.ID == "" {
		rr.ID = "test"
	}
	e.SetRules([]*Rule{&rr})
	report := func(c store.RuleCommit, seq uint64) {
		msgs := map[string][]string{}
		for _, m := range c.Outbox {
			msgs[c.AlarmOf[m.ID]] = append(msgs[c.AlarmOf[m.ID]], m.Kind)
		}
		for _, a := range c.Alarms {
			if a.Clear {
				out(Fired{At: a.At, Event: "cleared", Device: device, Seq: seq})
				continue
			}
			out(Fired{At: a.Alarm.RaisedAt, Event: "raised", Device: a.Alarm.Device, Seq: seq, Summary: a.Alarm.Summary, Actions: describe(r, msgs[a.Alarm.ID])})
		}
		if r.Mode == ModeEach {
			for i := 0; i+len(r.Actions) <= len(c.Outbox); i += len(r.Actions) {
				out(Fired{At: c.Outbox[i].CreatedAt, Event: "matched", Device: device, Seq: seq, Summary: r.Name + " matched", Actions: describe(r, nil)})
			}
		}
		for _, x := range c.Errors {
			out(Fired{At: x.At, Event: "error", Device: device, Seq: seq, Summary: x.Message})
		}
	}
	n := 0
	var after *store.Cursor
	var last time.Time
	for {
		recs, err := q.QuerySnapshots(ctx, store.SnapshotQuery{Scope: gw, Gateway: gw, Device: dev, From: from, To: to, Limit: 1000, After: after})
		if err != nil {
			return n, fmt.Errorf("replay %s: %w", device, err)
		}
		for _, rec := range recs {
			// Replayed, arrival is the measurement time.
			rec.ReceivedAt = rec.Time
			var c store.RuleCommit
			if !last.IsZero() {
				e.Tick(rec.Time, &c)
			}
			e.Snapshot(rec, &c)
			report(c, rec.Seq)
			last = rec.Time
			n++
		}
		if len(recs) < 1000 {
			break
		}
		after = recs[len(recs)-1].Cursor()
	}
	if !to.IsZero() && !last.IsZero() {
		var c store.RuleCommit
		e.Tick(to, &c)
		report(c, 0)
	}
	return n, nil
}

func describe(r *Rule, kinds []string) []string {
	var out []string
	for _, a := range r.Actions {
		switch a.Kind {
		case ActionEmail:
			out = append(out, fmt.Sprintf("email %v", a.To))
		case ActionWebhook:
			out = append(out, "webhook "+a.URL)
		case ActionTask:
			out = append(out, "task for "+a.Assignee)
		case ActionMQTT:
			out = append(out, "mqtt event")
		}
	}
	return out
}

// splitDevice splits master/account/gateway/device.
func splitDevice(p string) (gw, dev string, err error) {
	for i := len(p) - 1; i >= 0; i-- {
		if p[i] == '/' {
			gw, dev = p[:i], p[i+1:]
			break
		}
	}
	if gw == "" || dev == "" {
		return "", "", fmt.Errorf("device %q: use master/account/gateway/device", p)
	}
	if _, _, err := store.ScopeRange(gw); err != nil {
		return "", "", fmt.Errorf("device %q: %w", p, err)
	}
	return gw, dev, nil
}
