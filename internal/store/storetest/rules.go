package storetest

import (
	"errors"
	"testing"
	"time"

	"github.com/fieldtrust/fieldtrust/internal/store"
)

func runRules(t *testing.T, open func(t *testing.T) store.Store) {
	t.Run("Rules", func(t *testing.T) { testRules(t, open(t)) })
	t.Run("RuleCommit", func(t *testing.T) { testRuleCommit(t, open(t)) })
	t.Run("AlarmLifecycle", func(t *testing.T) { testAlarmLifecycle(t, open(t)) })
	t.Run("Tasks", func(t *testing.T) { testTasks(t, open(t)) })
	t.Run("Outbox", func(t *testing.T) { testOutbox(t, open(t)) })
	t.Run("SnapshotsFromLedger", func(t *testing.T) { testSnapshotsFromLedger(t, open(t)) })
	t.Run("WebhookEndpoints", func(t *testing.T) { testWebhookEndpoints(t, open(t)) })
}

func testRules(t *testing.T, s store.Store) {
	ctx := t.Context()
	a, err := s.PutRule(ctx, store.Rule{Name: "hot", Scope: "ms-1/acc-1", Author: "ms-1/acc-1", Source: []byte("v1"), UpdatedAt: t0})
	if err != nil {
		t.Fatal(err)
	}
	if a.ID == "" || a.Revision != 1 || !a.Enabled {
		t.Fatalf("first put = %+v", a)
	}
	if _, err := s.PutRule(ctx, store.Rule{Name: "hot", Scope: "ms-1/acc-10", Author: "x", Source: []byte("other"), UpdatedAt: t0}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.PutRule(ctx, store.Rule{Name: "fleet", Scope: store.VendorScope, Author: "service:admin", Source: []byte("v"), UpdatedAt: t0}); err != nil {
		t.Fatal(err)
	}
	if err := s.SetRuleEnabled(ctx, a.ID, false); err != nil {
		t.Fatal(err)
	}
	b, err := s.PutRule(ctx, store.Rule{Name: "hot", Scope: "ms-1/acc-1", Author: "ms-1/acc-1", Source: []byte("v2"), UpdatedAt: t0.Add(time.Second)})
	if err != nil {
		t.Fatal(err)
	}
	if b.ID != a.ID || b.Revision != 2 || !b.Enabled {
		t.Fatalf("second put = %+v, want the same ID, revision 2, enabled", b)
	}
	got, err := s.Rule(ctx, a.ID)
	if err != nil || string(got.Source) != "v2" || !got.UpdatedAt.Equal(t0.Add(time.Second)) {
		t.Fatalf("Rule = %+v, %v", got, err)
	}
	for scope, want := range map[string]int{"": 3, "ms-1": 2, "ms-1/acc-1": 1, "ms-2": 0} {
		list, err := s.ListRules(ctx, scope)
		if err != nil || len(list) != want {
			t.Errorf("ListRules(%q) = %d rules, %v; want %d", scope, len(list), err, want)
		}
	}
	if err := s.SetRuleEnabled(ctx, "r-none", true); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("SetRuleEnabled of a missing rule: %v", err)
	}
	if _, err := s.Rule(ctx, "r-none"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("Rule of a missing rule: %v", err)
	}
}

func alarm(id, rule, dev string, at time.Time) store.Alarm {
	gw := dev[:len(dev)-len("/d1")]
	return store.Alarm{ID: id, RuleID: rule, RuleName: "hot", Gateway: gw, Device: dev, Severity: "critical", Summary: "too hot", Snapshot: []byte{1, 2}, RaisedAt: at}
}

func testRuleCommit(t *testing.T, s store.Store) {
	ctx := t.Context()
	if c, err := s.RulesCursor(ctx); err != nil || c != 0 {
		t.Fatalf("initial cursor %d, %v", c, err)
	}
	next := uint64(42)
	c := store.RuleCommit{
		Cursor:  &next,
		States:  []store.RuleState{{RuleID: "r1", Device: "m/a/g/d1", PendingSince: t0}},
		Alarms:  []store.AlarmChange{{Alarm: alarm("a1", "r1", "m/a/g/d1", t0)}},
		Outbox:  []store.OutboxMessage{{ID: "o1", Kind: "email", RuleID: "r1", Gateway: "m/a/g", Payload: []byte(`{}`), NextAt: t0, CreatedAt: t0}},
		AlarmOf: map[string]string{"o1": "a1"},
		Errors:  []store.RuleError{{RuleID: "r1", Gateway: "m/a/g", Device: "m/a/g/d1", Message: "no such key: x", Snapshot: []byte{3}, At: t0}},
	}
	if err := s.CommitRules(ctx, c); err != nil {
		t.Fatal(err)
	}
	// The same commit again (a re-evaluation after a crash) changes
	// nothing but the error count.
	if err := s.CommitRules(ctx, c); err != nil {
		t.Fatal(err)
	}
	// Another alarm for the same rule and device while a1 is open is
	// skipped, and so is its message.
	if err := s.CommitRules(ctx, store.RuleCommit{
		Alarms:  []store.AlarmChange{{Alarm: alarm("a2", "r1", "m/a/g/d1", t0.Add(time.Minute))}},
		Outbox:  []store.OutboxMessage{{ID: "o2", Kind: "email", RuleID: "r1", Gateway: "m/a/g", Payload: []byte(`{}`), NextAt: t0, CreatedAt: t0}},
		AlarmOf: map[string]string{"o2": "a2"},
		States:  []store.RuleState{{RuleID: "r1", Device: "m/a/g/d1"}},
	}); err != nil {
		t.Fatal(err)
	}
	if n, _ := s.RulesCursor(ctx); n != 42 {
		t.Errorf("cursor %d, want 42", n)
	}
	if st, err := s.RuleStates(ctx); err != nil || len(st) != 0 {
		t.Errorf("states after delete: %v, %v", st, err)
	}
	al, err := s.Alarms(ctx, store.AlarmQuery{State: "open"})
	if err != nil || len(al) != 1 || al[0].ID != "a1" || al[0].State != store.AlarmActive || !al[0].RaisedAt.Equal(t0) {
		t.Fatalf("open alarms = %+v, %v", al, err)
	}
	msgs, err := s.Outbox(ctx, store.OutboxQuery{})
	if err != nil || len(msgs) != 1 || msgs[0].ID != "o1" || msgs[0].State != store.OutboxPending {
		t.Fatalf("outbox = %+v, %v", msgs, err)
	}
	errs, err := s.RuleErrors(ctx, "m/a", 0)
	if err != nil || len(errs) != 1 || errs[0].Count != 2 {
		t.Fatalf("rule errors = %+v, %v", errs, err)
	}
	if errs, _ := s.RuleErrors(ctx, "m/b", 0); len(errs) != 0 {
		t.Errorf("rule errors of another scope: %+v", errs)
	}
	// Cleared by its rule, the alarm makes room for a new one.
	if err := s.CommitRules(ctx, store.RuleCommit{Alarms: []store.AlarmChange{
		{Alarm: store.Alarm{ID: "a1"}, Clear: true, At: t0.Add(2 * time.Minute)},
		{Alarm: alarm("a3", "r1", "m/a/g/d1", t0.Add(3*time.Minute))}}}); err != nil {
		t.Fatal(err)
	}
	a1, err := s.Alarm(ctx, "a1")
	if err != nil || a1.State != store.AlarmCleared || a1.ClearedBy != "rule" || !a1.ClearedAt.Equal(t0.Add(2*time.Minute)) {
		t.Fatalf("a1 = %+v, %v", a1, err)
	}
	if al, _ := s.Alarms(ctx, store.AlarmQuery{State: "open"}); len(al) != 1 || al[0].ID != "a3" {
		t.Fatalf("open alarms after clear = %+v", al)
	}
	if al, _ := s.Alarms(ctx, store.AlarmQuery{Scope: "m/a/g", RuleID: "r1", Device: "m/a/g/d1"}); len(al) != 2 || al[0].ID != "a3" {
		t.Fatalf("alarms of the device, newest first = %+v", al)
	}
	if al, _ := s.Alarms(ctx, store.AlarmQuery{Scope: "m/a/g0"}); len(al) != 0 {
		t.Fatalf("alarms of another scope = %+v", al)
	}
}

func testAlarmLifecycle(t *testing.T, s store.Store) {
	ctx := t.Context()
	if err := s.CommitRules(ctx, store.RuleCommit{Alarms: []store.AlarmChange{{Alarm: alarm("a1", "r1", "m/a/g/d1", t0)}}}); err != nil {
		t.Fatal(err)
	}
	a, err := s.AckAlarm(ctx, "a1", "m/a", t0.Add(time.Second))
	if err != nil || a.State != store.AlarmAcknowledged || a.AckedBy != "m/a" || !a.AckedAt.Equal(t0.Add(time.Second)) {
		t.Fatalf("ack = %+v, %v", a, err)
	}
	if _, err := s.AckAlarm(ctx, "a1", "m/a", t0); !errors.Is(err, store.ErrConflict) {
		t.Errorf("second ack: %v, want ErrConflict", err)
	}
	// Acknowledged is still open: no second alarm.
	if err := s.CommitRules(ctx, store.RuleCommit{Alarms: []store.AlarmChange{{Alarm: alarm("a2", "r1", "m/a/g/d1", t0)}}}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Alarm(ctx, "a2"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("a second open alarm was stored: %v", err)
	}
	a, err = s.ClearAlarm(ctx, "a1", "tech", t0.Add(2*time.Second))
	if err != nil || a.State != store.AlarmCleared || a.ClearedBy != "tech" {
		t.Fatalf("clear = %+v, %v", a, err)
	}
	if _, err := s.ClearAlarm(ctx, "a1", "tech", t0); !errors.Is(err, store.ErrConflict) {
		t.Errorf("second clear: %v, want ErrConflict", err)
	}
	if _, err := s.AckAlarm(ctx, "nope", "x", t0); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("ack of a missing alarm: %v", err)
	}
}

func testTasks(t *testing.T, s store.Store) {
	ctx := t.Context()
	task := store.Task{ID: "t1", Title: "Investigate", Gateway: "m/a/g", Device: "m/a/g/d1", Assignee: "tech-1", Due: t0.Add(48 * time.Hour), RuleID: "r1", AlarmID: "a1", CreatedAt: t0}
	if ok, err := s.PutTask(ctx, task); err != nil || !ok {
		t.Fatalf("PutTask = %v, %v", ok, err)
	}
	if ok, err := s.PutTask(ctx, task); err != nil || ok {
		t.Fatalf("PutTask again = %v, %v; want false (a redelivery)", ok, err)
	}
	got, err := s.UpdateTask(ctx, "t1", store.TaskUpdate{State: store.TaskInProgress, Comment: &store.TaskComment{Author: "tech-1", Text: "on my way", At: t0.Add(time.Hour)}, At: t0.Add(time.Hour)})
	if err != nil || got.State != store.TaskInProgress || len(got.Comments) != 1 || got.Comments[0].Text != "on my way" || !got.Due.Equal(task.Due) {
		t.Fatalf("UpdateTask = %+v, %v", got, err)
	}
	if _, err := s.UpdateTask(ctx, "none", store.TaskUpdate{State: store.TaskDone, At: t0}); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("update of a missing task: %v", err)
	}
	for q, want := range map[store.TaskQuery]int{{}: 1, {Scope: "m/a"}: 1, {Scope: "m/b"}: 0, {State: store.TaskOpen}: 0, {Assignee: "tech-1"}: 1} {
		if l, err := s.Tasks(ctx, q); err != nil || len(l) != want {
			t.Errorf("Tasks(%+v) = %d, %v; want %d", q, len(l), err, want)
		}
	}
}

func testOutbox(t *testing.T, s store.Store) {
	ctx := t.Context()
	msg := func(id string, at time.Time) store.OutboxMessage {
		return store.OutboxMessage{ID: id, Kind: "webhook", RuleID: "r1", Gateway: "m/a/g", Payload: []byte(`{"x":1}`), NextAt: at, CreatedAt: at}
	}
	if err := s.CommitRules(ctx, store.RuleCommit{Outbox: []store.OutboxMessage{msg("o2", t0.Add(time.Second)), msg("o1", t0), msg("o3", t0.Add(time.Hour))}}); err != nil {
		t.Fatal(err)
	}
	due, err := s.DueOutbox(ctx, t0.Add(time.Minute), 10)
	if err != nil || len(due) != 2 || due[0].ID != "o1" || due[1].ID != "o2" || string(due[0].Payload) != `{"x":1}` {
		t.Fatalf("due = %+v, %v", due, err)
	}
	if err := s.OutboxFailed(ctx, "o1", 1, t0.Add(2*time.Hour), "connection refused", ""); err != nil {
		t.Fatal(err)
	}
	if err := s.OutboxSent(ctx, "o2", t0.Add(time.Minute)); err != nil {
		t.Fatal(err)
	}
	if due, _ := s.DueOutbox(ctx, t0.Add(time.Minute), 10); len(due) != 0 {
		t.Fatalf("due after a failure and a send = %+v", due)
	}
	if err := s.OutboxFailed(ctx, "o3", 8, t0, "gave up", store.OutboxDead); err != nil {
		t.Fatal(err)
	}
	dead, err := s.Outbox(ctx, store.OutboxQuery{State: store.OutboxDead, Scope: "m/a"})
	if err != nil || len(dead) != 1 || dead[0].ID != "o3" || dead[0].Attempts != 8 || dead[0].LastError != "gave up" {
		t.Fatalf("dead = %+v, %v", dead, err)
	}
	if err := s.RetryOutbox(ctx, "o2", t0); !errors.Is(err, store.ErrConflict) {
		t.Errorf("retry of a sent message: %v, want ErrConflict", err)
	}
	if err := s.RetryOutbox(ctx, "zz", t0); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("retry of a missing message: %v, want ErrNotFound", err)
	}
	if err := s.RetryOutbox(ctx, "o3", t0.Add(time.Minute)); err != nil {
		t.Fatal(err)
	}
	m, err := s.OutboxMessage(ctx, "o3")
	if err != nil || m.State != store.OutboxPending || m.Attempts != 0 {
		t.Fatalf("retried = %+v, %v", m, err)
	}
	sent, _ := s.OutboxMessage(ctx, "o2")
	if sent.State != store.OutboxSent || !sent.SentAt.Equal(t0.Add(time.Minute)) || sent.Attempts != 1 {
		t.Fatalf("sent = %+v", sent)
	}
	// Trimming deletes only sent (and suppressed) messages before the bound.
	if n, err := s.TrimOutbox(ctx, t0.Add(2*time.Hour)); err != nil || n != 1 {
		t.Fatalf("TrimOutbox = %d, %v; want the sent one", n, err)
	}
	if left, _ := s.Outbox(ctx, store.OutboxQuery{}); len(left) != 2 {
		t.Fatalf("after trimming: %+v", left)
	}
}

func testSnapshotsFromLedger(t *testing.T, s store.Store) {
	ctx := t.Context()
	a, b := newChain("m/a/g1", "d1", "pump"), newChain("m/a/g2", "d2", "")
	r1, r2, r3 := a.next(t, t0), b.next(t, t0), a.next(t, t0.Add(time.Minute))
	r1.LedgerIndex, r2.LedgerIndex, r3.LedgerIndex = 0, 1, 2
	insert(t, s, r1, r3)
	insert(t, s, r2)
	got, err := s.SnapshotsFromLedger(ctx, 1, 10)
	if err != nil || len(got) != 2 || got[0].LedgerIndex != 1 || got[1].LedgerIndex != 2 || got[1].Values[0].Channel != "temp" || got[0].Device != "d2" {
		t.Fatalf("SnapshotsFromLedger(1) = %+v, %v", got, err)
	}
	if got, _ := s.SnapshotsFromLedger(ctx, 0, 1); len(got) != 1 || got[0].DeviceType != "pump" {
		t.Fatalf("SnapshotsFromLedger(0, limit 1) = %+v", got)
	}
}

func testWebhookEndpoints(t *testing.T, s store.Store) {
	ctx := t.Context()
	e := store.WebhookEndpoint{Name: "ops", Scope: "m/a", URL: "https://ops.example/hook", SealedSecret: []byte{1, 2, 3}, CreatedAt: t0}
	if err := s.PutWebhookEndpoint(ctx, e); err != nil {
		t.Fatal(err)
	}
	e.URL = "https://ops.example/hook2"
	if err := s.PutWebhookEndpoint(ctx, e); err != nil {
		t.Fatal(err)
	}
	other := e
	other.Scope = "m/b"
	if err := s.PutWebhookEndpoint(ctx, other); !errors.Is(err, store.ErrExists) {
		t.Errorf("the same name in another scope: %v, want ErrExists", err)
	}
	got, err := s.WebhookEndpoint(ctx, "ops")
	if err != nil || got.URL != "https://ops.example/hook2" || got.Scope != "m/a" || string(got.SealedSecret) != "\x01\x02\x03" {
		t.Fatalf("WebhookEndpoint = %+v, %v", got, err)
	}
	if _, err := s.WebhookEndpoint(ctx, "none"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("missing endpoint: %v", err)
	}
}
