package rules

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"sort"
	"strings"
	"text/template"
	"time"

	"github.com/fieldtrust/fieldtrust/internal/dcc/calibration"
	"github.com/fieldtrust/fieldtrust/internal/outbox"
	"github.com/fieldtrust/fieldtrust/internal/snapshot"
	"github.com/fieldtrust/fieldtrust/internal/store"
	"github.com/fieldtrust/fieldtrust/internal/topic"
)

// Engine evaluates rules on what arrives and says what follows, as a
// store.RuleCommit: alarms raised and cleared, states, outbox messages and
// rule errors. It does no I/O (the Service commits what it returns), so
// 'rule test' replays history through the same code that runs live.
//
// Every ID it makes is derived from what caused it (the rule, its
// revision, the device and the snapshot's hash or the silence's start), so
// evaluating the same input again after a crash yields the same IDs, which
// the store skips: nothing is raised or sent twice.
//
// An Engine is used by one goroutine at a time.
type Engine struct {
	rules   []*Rule
	pending map[ruleDevice]time.Time
	open    map[ruleDevice]string // open alarm ID
	devices map[string]*deviceState
	offline map[string]bool // gateways whose last status is offline
	// Prev looks up the values of a device's previous snapshot when the
	// engine has not seen it (after a restart); nil: prev starts empty.
	Prev func(gateway string, hash []byte) (map[string]float64, bool)
	// Calibration returns the calibration of a device's measurement at t
	// (nil: no instrument bound), called only for a snapshot a rule that
	// reads calibration evaluates, at most once per snapshot; nil: every
	// calibration is unknown.
	Calibration func(gateway, device string, t time.Time) *calibration.Flag
	// Evaluations counts condition evaluations.
	Evaluations int
	// chans are the channels the rules read (all of them: allChans).
	chans    map[string]bool
	allChans bool
	prev     bool   // a rule reads prev
	calib    bool   // a rule reads calibration
	gen      uint64 // bumped by SetRules: cached channel positions are stale
	// Buffers reused from snapshot to snapshot (the engine runs on every
	// one): the rules that apply, the values map when no rule reads prev
	// (nothing keeps it after Snapshot returns), and the empty prev.
	applying []*Rule
	vals     map[string]float64
	noPrev   map[string]float64
}

type ruleDevice struct{ rule, device string }

type deviceState struct {
	gateway, typ string
	lastSeen     time.Time // when the latest snapshot arrived
	lastHash     []byte
	values       map[string]float64 // latest values, kept if a rule uses prev
	// pos caches where the rules' channels were in the last snapshot
	// (devices send the same layout every time), valid for gen and only
	// if every channel was found.
	pos    map[string]int
	posGen uint64
}

// NewEngine returns an engine without rules.
func NewEngine() *Engine {
	return &Engine{pending: map[ruleDevice]time.Time{}, open: map[ruleDevice]string{}, devices: map[string]*deviceState{}, offline: map[string]bool{},
		noPrev: map[string]float64{}}
}

// SetRules replaces the rules (enabled ones run). Pending durations of
// rules whose revision changed are dropped.
func (e *Engine) SetRules(rs []*Rule) {
	keep := map[string]int{}
	for _, r := range rs {
		keep[r.ID] = r.Revision
	}
	for _, r := range e.rules {
		if keep[r.ID] != r.Revision {
			for k := range e.pending {
				if k.rule == r.ID {
					delete(e.pending, k)
				}
			}
		}
	}
	e.rules = e.rules[:0]
	e.gen++
	e.chans, e.allChans, e.prev, e.calib = map[string]bool{}, false, false, false
	for _, r := range rs {
		if !r.Enabled {
			continue
		}
		e.rules = append(e.rules, r)
		e.prev = e.prev || r.UsesPrev()
		e.calib = e.calib || r.UsesCalibration()
		for _, c := range []*Condition{r.when, r.clear} {
			if c == nil {
				continue
			}
			e.allChans = e.allChans || c.allChans
			for ch := range c.chans {
				e.chans[ch] = true
			}
		}
	}
}

// Rules returns the running rules.
func (e *Engine) Rules() []*Rule { return e.rules }

// Restore loads what the store remembers: pending states and open alarms.
func (e *Engine) Restore(states []store.RuleState, open []store.Alarm) {
	for _, s := range states {
		e.pending[ruleDevice{s.RuleID, s.Device}] = s.PendingSince
	}
	e.SyncOpen(open)
}

// SyncOpen replaces the engine's open alarms with the store's: an alarm
// cleared by hand is no longer open, so its rule may raise a new one.
func (e *Engine) SyncOpen(open []store.Alarm) {
	clear(e.open)
	for _, a := range open {
		e.open[ruleDevice{a.RuleID, a.Device}] = a.ID
	}
}

// Known tells the engine of a device that exists (from the store at
// start), so that silence is noticed even if it never sends again.
func (e *Engine) Known(d store.Device, lastSeen time.Time) {
	path := d.Path()
	if _, ok := e.devices[path]; !ok {
		e.devices[path] = &deviceState{gateway: d.Gateway, typ: d.DeviceType, lastSeen: lastSeen, lastHash: d.LastHash}
	}
}

func (e *Engine) usesPrev() bool { return e.prev }

// id derives a stable ID from parts.
func id(prefix string, parts ...string) string {
	h := sha256.Sum256([]byte(strings.Join(parts, "\x00")))
	return prefix + hex.EncodeToString(h[:10])
}

// Snapshot evaluates the rules on a stored snapshot, adding what follows
// to c.
func (e *Engine) Snapshot(rec store.SnapshotRecord, c *store.RuleCommit) {
	path := rec.Path()
	dev := e.devices[path]
	if dev == nil {
		dev = &deviceState{gateway: rec.Gateway}
		e.devices[path] = dev
	}
	dev.typ = rec.DeviceType
	applying := e.applying[:0]
	for _, r := range e.rules {
		if r.Applies(rec.Gateway, rec.DeviceType) {
			applying = append(applying, r)
		}
	}
	e.applying = applying
	// Silence is judged by arrival, not by the gateway's clock.
	if rec.ReceivedAt.After(dev.lastSeen) {
		dev.lastSeen = rec.ReceivedAt
	}
	if len(applying) == 0 {
		dev.values = nil
		dev.lastHash = rec.Hash
		return
	}
	// Only the channels the rules read: most of a snapshot's values are
	// never looked at, and a map of 340 costs more than the rules.
	in := &Input{Device: path, Gateway: rec.Gateway, Type: rec.DeviceType, At: rec.Time}
	var vals map[string]float64
	if !e.usesPrev() {
		// No rule reads prev: the map is not kept, so it is reused.
		if e.vals == nil {
			e.vals = map[string]float64{}
		}
		vals = e.vals
		clear(vals)
	}
	if e.allChans {
		if vals == nil {
			vals = make(map[string]float64, len(rec.Values))
		}
		for _, v := range rec.Values {
			vals[v.Channel] = v.Value
		}
		in.Values = vals
	} else {
		in.Values = e.pick(dev, rec.Values, vals)
	}
	in.Prev = e.noPrev
	if e.usesPrev() && rec.Prev != nil {
		if dev.values != nil && string(dev.lastHash) == string(rec.Prev) {
			in.Prev = dev.values
		} else if e.Prev != nil {
			if p, ok := e.Prev(rec.Gateway, rec.Prev); ok {
				in.Prev = p
			}
		}
	}
	if e.calib {
		in.Calibration = e.calibrationOf(rec.Gateway, rec.Device, rec.Time)
	}
	ev := &trigger{rec: &rec, in: in, at: rec.Time, receivedAt: rec.ReceivedAt, gateway: rec.Gateway, device: path, typ: rec.DeviceType}
	for _, r := range applying {
		e.evalRule(r, ev, c)
	}
	dev.lastHash = rec.Hash
	if e.usesPrev() {
		dev.values = in.Values
	} else {
		dev.values = nil
	}
}

// calibrationOf returns the lazy calibration of one snapshot: looked up
// the first time a condition reads it, then kept for the other rules.
func (e *Engine) calibrationOf(gateway, device string, at time.Time) func() map[string]any {
	var vars map[string]any
	return func() map[string]any {
		if vars == nil {
			f := &unknownFlag
			if e.Calibration != nil {
				f = e.Calibration(gateway, device, at)
			}
			vars = calibrationVars(f)
		}
		return vars
	}
}

// pick returns the values of the rules' channels, from the positions
// they had in the device's last snapshot when they are still there, else
// by a scan (which renews the positions). It fills out, an empty map, or
// a new one if out is nil.
func (e *Engine) pick(dev *deviceState, vals []snapshot.Value, out map[string]float64) map[string]float64 {
	if out == nil {
		out = make(map[string]float64, len(e.chans))
	}
	if dev.posGen == e.gen && dev.pos != nil {
		hit := true
		for ch, i := range dev.pos {
			if i >= len(vals) || vals[i].Channel != ch {
				hit = false
				break
			}
			out[ch] = vals[i].Value
		}
		if hit {
			return out
		}
		clear(out)
	}
	pos := make(map[string]int, len(e.chans))
	for i, v := range vals {
		if e.chans[v.Channel] {
			out[v.Channel] = v.Value
			pos[v.Channel] = i
		}
	}
	dev.pos, dev.posGen = nil, e.gen
	if len(pos) == len(e.chans) {
		dev.pos = pos
	}
	return out
}

// trigger is what a rule fires on.
type trigger struct {
	rec        *store.SnapshotRecord // nil for silence and integrity events
	in         *Input
	at         time.Time // when it happened
	receivedAt time.Time
	gateway    string
	device     string
	typ        string
	key        string // what makes the trigger unique for its device; a snapshot's: its hash (idKey)
	summary    string
}

// idKey is what makes the trigger unique for its device, made only when
// a rule fires (most evaluations fire nothing).
func (t *trigger) idKey() string {
	if t.key == "" && t.rec != nil {
		t.key = hex.EncodeToString(t.rec.Hash)
	}
	return t.key
}

func (e *Engine) evalRule(r *Rule, t *trigger, c *store.RuleCommit) {
	k := ruleDevice{r.ID, t.device}
	_, isOpen := e.open[k]
	switch r.Kind() {
	case "silent":
		// A snapshot ends a silence.
		if isOpen {
			e.clearAlarm(k, t.at, c)
		}
		return
	case "integrity":
		return
	}
	fail := func(err error) {
		c.Errors = append(c.Errors, store.RuleError{RuleID: r.ID, Gateway: t.gateway, Device: t.device, Message: err.Error(), Snapshot: t.rec.Hash, At: t.receivedAt})
	}
	e.Evaluations++
	holds, err := r.when.Eval(t.in)
	if err != nil {
		fail(err)
		return
	}
	if r.Mode == ModeEach {
		if holds {
			t.summary = fmt.Sprintf("%s matched: %s", r.Name, r.when.Src)
			e.fire(r, id("e-", r.ID, fmt.Sprint(r.Revision), t.device, t.idKey()), "rule.matched", t, c)
		}
		return
	}
	if isOpen {
		cleared := !holds
		if r.clear != nil {
			e.Evaluations++
			if cleared, err = r.clear.Eval(t.in); err != nil {
				fail(err)
				return
			}
		}
		if cleared {
			e.clearAlarm(k, t.at, c)
		}
		return
	}
	if !holds {
		if _, ok := e.pending[k]; ok {
			delete(e.pending, k)
			c.States = append(c.States, store.RuleState{RuleID: r.ID, Device: t.device})
		}
		return
	}
	if r.For > 0 {
		since, ok := e.pending[k]
		if !ok {
			e.pending[k] = t.at
			c.States = append(c.States, store.RuleState{RuleID: r.ID, Device: t.device, PendingSince: t.at})
			return
		}
		if t.at.Sub(since) < r.For {
			return
		}
		delete(e.pending, k)
		c.States = append(c.States, store.RuleState{RuleID: r.ID, Device: t.device})
		t.summary = fmt.Sprintf("%s: %s for %s (since %s)", r.Name, r.Condition(), r.For, since.Format(time.RFC3339))
	} else {
		t.summary = fmt.Sprintf("%s: %s", r.Name, r.Condition())
	}
	e.raise(r, t, c)
}

func (e *Engine) clearAlarm(k ruleDevice, at time.Time, c *store.RuleCommit) {
	c.Alarms = append(c.Alarms, store.AlarmChange{Alarm: store.Alarm{ID: e.open[k]}, Clear: true, At: at})
	delete(e.open, k)
}

func (e *Engine) raise(r *Rule, t *trigger, c *store.RuleCommit) {
	k := ruleDevice{r.ID, t.device}
	a := store.Alarm{
		ID: id("a-", r.ID, fmt.Sprint(r.Revision), t.device, t.idKey()), RuleID: r.ID, RuleName: r.Name, Gateway: t.gateway, Device: t.device,
		Severity: r.Severity, Summary: t.summary, RaisedAt: t.at,
	}
	if t.rec != nil {
		a.Snapshot = t.rec.Hash
	}
	e.open[k] = a.ID
	c.Alarms = append(c.Alarms, store.AlarmChange{Alarm: a})
	e.fire(r, a.ID, "alarm.raised", t, c)
	if c.AlarmOf == nil {
		c.AlarmOf = map[string]string{}
	}
	for _, m := range c.Outbox[len(c.Outbox)-len(r.Actions):] {
		c.AlarmOf[m.ID] = a.ID
	}
}

// fire adds the rule's actions for an event to the outbox.
func (e *Engine) fire(r *Rule, eventID, typ string, t *trigger, c *store.RuleCommit) {
	ev := outbox.Event{Type: typ, ID: eventID, Rule: r.Name, RuleID: r.ID, Severity: r.Severity, Device: t.device, Summary: t.summary, At: t.at}
	if typ == "alarm.raised" {
		ev.Alarm = eventID
	}
	if t.rec != nil {
		ev.Snapshot = &outbox.SnapshotRef{Hash: hex.EncodeToString(t.rec.Hash), Seq: t.rec.Seq, Time: t.rec.Time}
	}
	// MQTT events carry no values: the broker would hold in plaintext
	// what the gateway sealed end to end. Webhooks and emails go where
	// the rule's author sends them, and carry the values.
	bare, _ := json.Marshal(ev)
	if t.rec != nil && len(t.rec.Values) > 0 {
		ev.Values = make(map[string]any, len(t.rec.Values))
		for _, v := range t.rec.Values {
			ev.Values[v.Channel] = v.Value
		}
	}
	full, _ := json.Marshal(ev)
	data := TemplateData{Device: t.device, Gateway: t.gateway, Rule: r.Name, Severity: r.Severity, Type: t.typ, Event: typ, At: t.at}
	for i, a := range r.Actions {
		m := store.OutboxMessage{ID: id("m-", eventID, fmt.Sprint(i)), Kind: a.Kind, RuleID: r.ID, Gateway: t.gateway, NextAt: t.receivedAt, CreatedAt: t.receivedAt}
		var payload any
		switch a.Kind {
		case ActionEmail:
			subject := fmt.Sprintf("[fieldtrust] %s: %s on %s", r.Severity, r.Name, t.device)
			if a.Subject != nil {
				subject = execute(a.Subject, data, subject)
			}
			payload = outbox.Email{To: a.To, Subject: subject, Body: emailBody(ev, r), ReceivedAt: t.receivedAt}
		case ActionWebhook:
			payload = outbox.Webhook{Endpoint: a.Secret, URL: a.URL, Body: full, ReceivedAt: t.receivedAt}
		case ActionTask:
			task := outbox.Task{Title: execute(a.Title, data, r.Name+" on "+t.device), Gateway: t.gateway, Device: t.device, Assignee: a.Assignee, AlarmID: ev.Alarm, At: t.at}
			if a.Due > 0 {
				task.Due = t.at.Add(a.Due)
			}
			payload = task
		case ActionMQTT:
			payload = outbox.MQTT{Topic: topic.Of(t.gateway, topic.Events), Body: bare}
		}
		m.Payload, _ = json.Marshal(payload)
		c.Outbox = append(c.Outbox, m)
	}
}

// execute runs a checked template; on failure (it cannot, the fields are
// checked at load) the fallback.
func execute(t *template.Template, data TemplateData, fallback string) string {
	var b strings.Builder
	if err := t.Execute(&b, data); err != nil {
		return fallback
	}
	s := strings.NewReplacer("\r", " ", "\n", " ").Replace(b.String())
	if len(s) > 200 {
		s = s[:200]
	}
	return s
}

func emailBody(ev outbox.Event, r *Rule) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s\n\nRule:      %s (%s)\nSeverity:  %s\nDevice:    %s\nEvent:     %s\nAt:        %s\n",
		ev.Summary, r.Name, r.ID, r.Severity, ev.Device, ev.Type, ev.At.Format(time.RFC3339))
	if ev.Alarm != "" {
		fmt.Fprintf(&b, "Alarm:     %s (acknowledge it with 'fieldtrust alarm ack %s' or in the console)\n", ev.Alarm, ev.Alarm)
	}
	if ev.Snapshot != nil {
		fmt.Fprintf(&b, "Snapshot:  seq %d, %s, sha256 %s\n", ev.Snapshot.Seq, ev.Snapshot.Time.Format(time.RFC3339), ev.Snapshot.Hash)
	}
	if len(ev.Values) > 0 {
		keys := make([]string, 0, len(ev.Values))
		for k := range ev.Values {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		b.WriteString("\nValues:\n")
		for i, k := range keys {
			if i == 64 {
				fmt.Fprintf(&b, "  ... and %d more\n", len(keys)-64)
				break
			}
			fmt.Fprintf(&b, "  %-24s %v\n", k, ev.Values[k])
		}
	}
	return b.String()
}

// Tick checks silence at now: a device in the scope of a silent rule that
// sent nothing for the rule's duration, or whose gateway went offline,
// raises the rule's alarm.
func (e *Engine) Tick(now time.Time, c *store.RuleCommit) {
	for _, r := range e.rules {
		if r.Silent <= 0 {
			continue
		}
		for path, d := range e.devices {
			if !r.Applies(d.gateway, d.typ) {
				continue
			}
			k := ruleDevice{r.ID, path}
			if _, ok := e.open[k]; ok {
				continue
			}
			quiet := now.Sub(d.lastSeen)
			if quiet < r.Silent && !e.offline[d.gateway] {
				continue
			}
			why := fmt.Sprintf("no snapshot for %s", quiet.Round(time.Second))
			if e.offline[d.gateway] {
				why = "the gateway went offline (its last will)"
			}
			t := &trigger{at: now, receivedAt: now, gateway: d.gateway, device: path, typ: d.typ,
				key: "silent:" + d.lastSeen.UTC().Format(time.RFC3339Nano), summary: fmt.Sprintf("%s: %s", r.Name, why)}
			e.raise(r, t, c)
		}
	}
}

// GatewayStatus records a gateway's retained status (online or offline).
func (e *Engine) GatewayStatus(gateway string, online bool) {
	if online {
		delete(e.offline, gateway)
	} else {
		e.offline[gateway] = true
	}
}

// Integrity evaluates the integrity rules on an integrity event of ingest.
func (e *Engine) Integrity(ev store.IntegrityEvent, c *store.RuleCommit) {
	device := ev.Gateway
	if ev.Device != "" {
		device = ev.Gateway + "/" + ev.Device
	}
	typ := ""
	if d := e.devices[device]; d != nil {
		typ = d.typ
	}
	e.integrity(ev.Kind, ev.Gateway, device, typ, fmt.Sprintf("%s:%d:%x", ev.Kind, ev.Seq, ev.Hash),
		fmt.Sprintf("%s of seq %d (expected %d): %s", ev.Kind, ev.Seq, ev.ExpectedSeq, ev.Detail), ev.At, c)
}

// Reject evaluates the integrity rules on a message ingest rejected.
func (e *Engine) Reject(r store.Reject, c *store.RuleCommit) {
	if r.Gateway == "" {
		return // it named no gateway: no rule's scope can claim it
	}
	e.integrity("reject", r.Gateway, r.Gateway, "", fmt.Sprintf("reject:%s:%x", r.Reason, r.RawHash),
		"a message was rejected: "+r.Reason, r.At, c)
}

func (e *Engine) integrity(kind, gateway, device, typ, key, what string, at time.Time, c *store.RuleCommit) {
	for _, r := range e.rules {
		if len(r.Integrity) == 0 || !containsString(r.Integrity, kind) {
			continue
		}
		// A rule limited to a device type sees the events of devices of
		// that type (rejects name no device, so only rules without one).
		if !r.Applies(gateway, typ) {
			continue
		}
		if _, ok := e.open[ruleDevice{r.ID, device}]; ok {
			continue // deduplicated: one open alarm per rule and device
		}
		e.raise(r, &trigger{at: at, receivedAt: at, gateway: gateway, device: device, typ: typ, key: key, summary: r.Name + ": " + what}, c)
	}
}

func containsString(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}
