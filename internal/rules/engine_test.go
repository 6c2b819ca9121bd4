package rules

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/fieldtrust/fieldtrust/internal/outbox"
	"github.com/fieldtrust/fieldtrust/internal/snapshot"
	"github.com/fieldtrust/fieldtrust/internal/store"
)

var t0 = time.Date(2026, 12, 1, 8, 0, 0, 0, time.UTC)

func mustRule(t *testing.T, id, src string) *Rule {
	t.Helper()
	r, err := Load(id+".yaml", []byte(src))
	if err != nil {
		t.Fatal(err)
	}
	r.ID, r.Revision = id, 1
	return r
}

// snap makes a snapshot record of device gw/dev at t0+minute with values.
func snap(gw, dev, typ string, minute int, vals map[string]float64) store.SnapshotRecord {
	rec := store.SnapshotRecord{Gateway: gw, Device: dev, DeviceType: typ, Seq: uint64(minute + 1), Time: t0.Add(time.Duration(minute) * time.Minute)}
	rec.ReceivedAt = rec.Time
	rec.Hash = []byte(fmt.Sprintf("%s/%s#%d", gw, dev, minute))
	for k, v := range vals {
		rec.Values = append(rec.Values, snapshot.Value{Channel: k, Value: v})
	}
	return rec
}

const overheat = `version: 1
name: overheat
scope: ms/acc
device_type: pump
when: values.temperature > 90.0
for: 2m
clear: values.temperature < 85.0
severity: critical
actions:
  - email: [service@acme.example]
  - task: {title: "Investigate {{.Device}}", assignee: tech-1, due: 2d}
  - webhook: {url: "https://ops.example/hook", secret: ops}
  - mqtt: {}
`

// TestEngineDurationAndHysteresis: the alarm is raised only after the
// condition held for 'for', once (deduplicated), and cleared only by the
// clear condition (hysteresis), table-driven over a temperature series.
func TestEngineDurationAndHysteresis(t *testing.T) {
	e := NewEngine()
	e.SetRules([]*Rule{mustRule(t, "r1", overheat)})
	steps := []struct {
		temp        float64
		raise, clr  bool
		open        bool
		pendingSet  bool
		description string
	}{
		{80, false, false, false, false, "normal"},
		{95, false, false, false, true, "hot: pending starts"},
		{96, false, false, false, false, "hot for 1m"},
		{97, true, false, true, false, "hot for 2m: raised"},
		{98, false, false, true, false, "still hot: no second alarm"},
		{88, false, false, true, false, "below 90 but not below 85: hysteresis keeps it"},
		{84, false, true, false, false, "below 85: cleared"},
		{95, false, false, false, true, "hot again: a new pending"},
	}
	for i, s := range steps {
		var c store.RuleCommit
		e.Snapshot(snap("ms/acc/gw", "p1", "pump", i, map[string]float64{"temperature": s.temp}), &c)
		raised, cleared := 0, 0
		for _, a := range c.Alarms {
			if a.Clear {
				cleared++
			} else {
				raised++
			}
		}
		if (raised == 1) != s.raise || (cleared == 1) != s.clr || raised > 1 || cleared > 1 {
			t.Fatalf("step %d (%s): raised %d, cleared %d", i, s.description, raised, cleared)
		}
		if _, open := e.open[ruleDevice{"r1", "ms/acc/gw/p1"}]; open != s.open {
			t.Fatalf("step %d (%s): open %v", i, s.description, open)
		}
		if s.pendingSet != (len(c.States) == 1 && !c.States[0].PendingSince.IsZero()) {
			t.Fatalf("step %d (%s): states %+v", i, s.description, c.States)
		}
		if s.raise {
			checkRaised(t, c)
		}
	}
}

func checkRaised(t *testing.T, c store.RuleCommit) {
	t.Helper()
	if len(c.Outbox) != 4 {
		t.Fatalf("outbox %d messages, want one per action", len(c.Outbox))
	}
	alarm := c.Alarms[0].Alarm
	kinds := []string{"email", "task", "webhook", "mqtt"}
	for i, m := range c.Outbox {
		if m.Kind != kinds[i] || c.AlarmOf[m.ID] != alarm.ID || m.Gateway != "ms/acc/gw" {
			t.Fatalf("message %d = %+v", i, m)
		}
	}
	var task outbox.Task
	json.Unmarshal(c.Outbox[1].Payload, &task)
	if task.Title != "Investigate ms/acc/gw/p1" || task.Assignee != "tech-1" || !task.Due.Equal(alarm.RaisedAt.Add(48*time.Hour)) {
		t.Fatalf("task payload %+v", task)
	}
	var wh outbox.Webhook
	json.Unmarshal(c.Outbox[2].Payload, &wh)
	var ev outbox.Event
	json.Unmarshal(wh.Body, &ev)
	if ev.Type != "alarm.raised" || ev.Alarm != alarm.ID || ev.Values["temperature"] == nil || wh.Endpoint != "ops" {
		t.Fatalf("webhook payload %+v / %+v", wh, ev)
	}
	var mq outbox.MQTT
	json.Unmarshal(c.Outbox[3].Payload, &mq)
	if mq.Topic != "ms/acc/gw/events" || strings.Contains(string(mq.Body), `"values"`) {
		t.Fatalf("mqtt payload %s to %s: an event on the broker must not carry the sealed values", mq.Body, mq.Topic)
	}
}

// TestEngineStableIDs: evaluating the same snapshots again (after a
// crash, from the stored cursor and state) yields the same alarm and
// message IDs, which the store skips.
func TestEngineStableIDs(t *testing.T) {
	run := func() store.RuleCommit {
		e := NewEngine()
		e.SetRules([]*Rule{mustRule(t, "r1", strings.Replace(overheat, "for: 2m\n", "", 1))})
		var c store.RuleCommit
		e.Snapshot(snap("ms/acc/gw", "p1", "pump", 0, map[string]float64{"temperature": 99}), &c)
		return c
	}
	a, b := run(), run()
	if len(a.Outbox) != 4 || a.Alarms[0].Alarm.ID != b.Alarms[0].Alarm.ID {
		t.Fatalf("alarm IDs %v / %v", a.Alarms, b.Alarms)
	}
	for i := range a.Outbox {
		if a.Outbox[i].ID != b.Outbox[i].ID {
			t.Fatalf("message %d: %s / %s", i, a.Outbox[i].ID, b.Outbox[i].ID)
		}
	}
}

// TestEngineScopes: a rule sees only the devices of its scope and type;
// ms/acc never matches ms/acc10, and "*" sees everything.
func TestEngineScopes(t *testing.T) {
	each := func(scope, typ string) string {
		s := fmt.Sprintf("version: 1\nname: n\nscope: %q\nmode: each\nwhen: \"true\"\nactions:\n  - mqtt: {}\n", scope)
		if typ != "" {
			s += "device_type: " + typ + "\n"
		}
		return s
	}
	for _, tc := range []struct {
		scope, typ, gw, devType string
		fires                   bool
	}{
		{"ms/acc", "", "ms/acc/gw", "pump", true},
		{"ms/acc", "", "ms/acc10/gw", "pump", false},
		{"ms/acc", "", "ms/other/gw", "pump", false},
		{"ms", "", "ms/acc/gw", "", true},
		{"ms/acc/gw", "", "ms/acc/gw", "", true},
		{"ms/acc/gw", "", "ms/acc/gw2", "", false},
		{"*", "", "other/acc/gw", "", true},
		{"ms", "pump", "ms/acc/gw", "valve", false},
		{"ms", "pump", "ms/acc/gw", "pump", true},
	} {
		e := NewEngine()
		e.SetRules([]*Rule{mustRule(t, "r", each(tc.scope, tc.typ))})
		var c store.RuleCommit
		e.Snapshot(snap(tc.gw, "d", tc.devType, 0, nil), &c)
		if fired := len(c.Outbox) == 1; fired != tc.fires {
			t.Errorf("rule scope %q type %q, device %s (%s): fired %v, want %v", tc.scope, tc.typ, tc.gw, tc.devType, fired, tc.fires)
		}
	}
}

// TestEngineRuleErrors: a condition that fails at run time is a rule
// error with the snapshot's hash; the other rules still run.
func TestEngineRuleErrors(t *testing.T) {
	e := NewEngine()
	e.SetRules([]*Rule{
		mustRule(t, "bad", "version: 1\nname: bad\nscope: ms\nwhen: values.missing > 1.0\nactions:\n  - mqtt: {}\n"),
		mustRule(t, "good", "version: 1\nname: good\nscope: ms\nmode: each\nwhen: values.a > 1.0\nactions:\n  - mqtt: {}\n"),
	})
	var c store.RuleCommit
	rec := snap("ms/acc/gw", "d", "", 0, map[string]float64{"a": 2})
	e.Snapshot(rec, &c)
	if len(c.Errors) != 1 || c.Errors[0].RuleID != "bad" || string(c.Errors[0].Snapshot) != string(rec.Hash) || !strings.Contains(c.Errors[0].Message, `no channel "missing"`) {
		t.Fatalf("errors %+v", c.Errors)
	}
	if len(c.Outbox) != 1 || c.Outbox[0].RuleID != "good" {
		t.Fatalf("outbox %+v", c.Outbox)
	}
}

// TestEngineSilent: silence for the rule's duration, or an offline
// status, raises one alarm per device; the next snapshot clears it.
func TestEngineSilent(t *testing.T) {
	e := NewEngine()
	e.SetRules([]*Rule{mustRule(t, "s", "version: 1\nname: quiet\nscope: ms\nsilent: 10m\nactions:\n  - email: [a@b.example]\n")})
	var c store.RuleCommit
	e.Snapshot(snap("ms/acc/gw", "d", "", 0, nil), &c)
	e.Snapshot(snap("ms/acc/gw2", "d", "", 0, nil), &c)
	e.Tick(t0.Add(9*time.Minute), &c)
	if len(c.Alarms) != 0 {
		t.Fatalf("alarms after 9 minutes: %+v", c.Alarms)
	}
	e.GatewayStatus("ms/acc/gw2", false)
	e.Tick(t0.Add(9*time.Minute), &c)
	if len(c.Alarms) != 1 || c.Alarms[0].Alarm.Device != "ms/acc/gw2/d" || !strings.Contains(c.Alarms[0].Alarm.Summary, "offline") {
		t.Fatalf("alarms after the will: %+v", c.Alarms)
	}
	e.Tick(t0.Add(11*time.Minute), &c)
	e.Tick(t0.Add(12*time.Minute), &c)
	if len(c.Alarms) != 2 || c.Alarms[1].Alarm.Device != "ms/acc/gw/d" || len(c.Outbox) != 2 {
		t.Fatalf("alarms after 11 minutes: %+v", c.Alarms)
	}
	e.Snapshot(snap("ms/acc/gw", "d", "", 13, nil), &c)
	if len(c.Alarms) != 3 || !c.Alarms[2].Clear || c.Alarms[2].Alarm.ID != c.Alarms[1].Alarm.ID {
		t.Fatalf("a snapshot did not clear the silence: %+v", c.Alarms)
	}
}

// TestEngineIntegrityAndOverdue: integrity events and rejects raise
// deduplicated alarms within scope; an overdue counter and date raise.
func TestEngineIntegrityAndOverdue(t *testing.T) {
	e := NewEngine()
	e.SetRules([]*Rule{
		mustRule(t, "i", "version: 1\nname: chain\nscope: ms/acc\nintegrity: any\nactions:\n  - mqtt: {}\n"),
		mustRule(t, "o", "version: 1\nname: service-due\nscope: ms\noverdue: {channel: operating_hours, limit: 5000}\nactions:\n  - email: [vendor-tech@x.example]\n"),
		mustRule(t, "d", "version: 1\nname: calibration\nscope: ms\noverdue: {channel: calibration_due, date: true}\nactions:\n  - mqtt: {}\n"),
	})
	var c store.RuleCommit
	e.Integrity(store.IntegrityEvent{Gateway: "ms/acc/gw", Device: "d", Kind: store.EventGap, Seq: 5, ExpectedSeq: 3, At: t0}, &c)
	e.Integrity(store.IntegrityEvent{Gateway: "ms/acc/gw", Device: "d", Kind: store.EventFork, Seq: 6, At: t0}, &c)
	e.Integrity(store.IntegrityEvent{Gateway: "ms/acc10/gw", Device: "d", Kind: store.EventGap, Seq: 5, At: t0}, &c)
	e.Reject(store.Reject{Gateway: "ms/acc/gw", Reason: "tampered", RawHash: []byte{1}, At: t0}, &c)
	if len(c.Alarms) != 2 || c.Alarms[0].Alarm.Device != "ms/acc/gw/d" || c.Alarms[1].Alarm.Device != "ms/acc/gw" {
		t.Fatalf("integrity alarms %+v", c.Alarms)
	}
	c = store.RuleCommit{}
	e.Snapshot(snap("ms/acc/gw", "d", "", 0, map[string]float64{"operating_hours": 4999, "calibration_due": float64(t0.Add(time.Hour).Unix())}), &c)
	if len(c.Alarms) != 0 || len(c.Errors) != 0 {
		t.Fatalf("not yet due: %+v %+v", c.Alarms, c.Errors)
	}
	e.Snapshot(snap("ms/acc/gw", "d", "", 61, map[string]float64{"operating_hours": 5001, "calibration_due": float64(t0.Add(time.Hour).Unix())}), &c)
	if len(c.Alarms) != 2 {
		t.Fatalf("overdue alarms %+v", c.Alarms)
	}
	var m outbox.Email
	json.Unmarshal(c.Outbox[0].Payload, &m)
	if m.To[0] != "vendor-tech@x.example" || !strings.Contains(m.Body, "operating_hours") {
		t.Fatalf("overdue mail %+v", m)
	}
	// A device without the counter is not overdue.
	c = store.RuleCommit{}
	e.Snapshot(snap("ms/acc/gw", "other", "", 0, map[string]float64{"x": 1}), &c)
	if len(c.Alarms)+len(c.Errors) != 0 {
		t.Fatalf("device without the channel: %+v %+v", c.Alarms, c.Errors)
	}
}

// TestEnginePrev: prev holds the previous snapshot's values, from the
// engine's memory or, after a restart, from the lookup.
func TestEnginePrev(t *testing.T) {
	e := NewEngine()
	e.SetRules([]*Rule{mustRule(t, "p", "version: 1\nname: jump\nscope: ms\nmode: each\nwhen: has(prev.a) && values.a - prev.a > 10.0\nactions:\n  - mqtt: {}\n")})
	var c store.RuleCommit
	r1 := snap("ms/acc/gw", "d", "", 0, map[string]float64{"a": 1})
	r2 := snap("ms/acc/gw", "d", "", 1, map[string]float64{"a": 20})
	r2.Prev = r1.Hash
	e.Snapshot(r1, &c)
	e.Snapshot(r2, &c)
	if len(c.Outbox) != 1 {
		t.Fatalf("jump not seen: %+v %+v", c.Outbox, c.Errors)
	}
	e2 := NewEngine()
	e2.SetRules(e.Rules())
	e2.Prev = func(gw string, h []byte) (map[string]float64, bool) {
		return map[string]float64{"a": 1}, gw == "ms/acc/gw" && string(h) == string(r1.Hash)
	}
	c = store.RuleCommit{}
	e2.Snapshot(r2, &c)
	if len(c.Outbox) != 1 {
		t.Fatalf("after a restart, jump not seen: %+v %+v", c.Outbox, c.Errors)
	}
}

// TestEngineChannelLayout: the engine reads the rules' channels from
// their cached positions, and notices when a device's layout changes.
func TestEngineChannelLayout(t *testing.T) {
	e := NewEngine()
	e.SetRules([]*Rule{mustRule(t, "r", "version: 1\nname: n\nscope: ms\nmode: each\nwhen: values.b > 10.0\nactions:\n  - mqtt: {}\n")})
	mk := func(minute int, vals ...snapshot.Value) store.SnapshotRecord {
		r := snap("ms/acc/gw", "d", "", minute, nil)
		r.Values = vals
		return r
	}
	for i, tc := range []struct {
		vals  []snapshot.Value
		fires bool
	}{
		{[]snapshot.Value{{Channel: "a", Value: 1}, {Channel: "b", Value: 20}}, true},
		{[]snapshot.Value{{Channel: "a", Value: 1}, {Channel: "b", Value: 5}}, false},
		{[]snapshot.Value{{Channel: "b", Value: 30}, {Channel: "a", Value: 1}}, true}, // moved
		{[]snapshot.Value{{Channel: "a", Value: 30}}, false},                          // gone: a rule error
		{[]snapshot.Value{{Channel: "a", Value: 1}, {Channel: "c", Value: 1}, {Channel: "b", Value: 11}}, true},
	} {
		var c store.RuleCommit
		e.Snapshot(mk(i, tc.vals...), &c)
		if (len(c.Outbox) == 1) != tc.fires {
			t.Fatalf("snapshot %d %v: fired %v, want %v (errors %v)", i, tc.vals, len(c.Outbox) == 1, tc.fires, c.Errors)
		}
	}
}

// TestCostRefused: a condition whose worst case loops over every pair of
// channels is refused when loaded; a single loop is fine.
func TestCostRefused(t *testing.T) {
	base := "version: 1\nname: n\nscope: ms\nwhen: %s\nactions:\n  - mqtt: {}\n"
	if _, err := Load("c.yaml", []byte(fmt.Sprintf(base, "values.exists(k, values[k] > 100.0)"))); err != nil {
		t.Fatalf("one loop refused: %v", err)
	}
	_, err := Load("c.yaml", []byte(fmt.Sprintf(base, "values.exists(k, values.exists(j, values[k] > values[j] + 100.0))")))
	if err == nil || !strings.Contains(err.Error(), "c.yaml:4:7: when: the condition may cost") {
		t.Fatalf("nested loops: %v", err)
	}
}
