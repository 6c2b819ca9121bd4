// Package rulesql implements store.Rules once, in SQL that SQLite and
// PostgreSQL both run (migrations 0012_rules.sql of each): the two stores
// hand it a DB adapter, so the rules of alarms, tasks and the outbox are
// written in one place. Times are milliseconds since the Unix epoch in
// both databases; scopes compare byte-wise (COLLATE "C" in PostgreSQL).
package rulesql

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/fieldtrust/fieldtrust/internal/store"
)

// Rows is what a query returns.
type Rows interface {
	Next() bool
	Scan(dest ...any) error
	Err() error
	Close()
}

// DB runs statements written with ? placeholders.
type DB interface {
	Exec(ctx context.Context, q string, args ...any) (int64, error)
	Query(ctx context.Context, q string, args ...any) (Rows, error)
	// Tx runs fn in one transaction, committed if fn returns nil.
	Tx(ctx context.Context, fn func(DB) error) error
}

// Store implements store.Rules (but SnapshotsFromLedger, which reads the
// snapshot tables each store lays out its own way) on a DB.
type Store struct {
	DB DB
}

func ms(t time.Time) int64 { return t.UnixMilli() }

func nullMS(t time.Time) sql.NullInt64 {
	if t.IsZero() {
		return sql.NullInt64{}
	}
	return sql.NullInt64{Int64: t.UnixMilli(), Valid: true}
}

func fromMS(v int64) time.Time { return time.UnixMilli(v).UTC() }

func fromNull(v sql.NullInt64) time.Time {
	if !v.Valid {
		return time.Time{}
	}
	return fromMS(v.Int64)
}

// scopeWhere returns the condition limiting col to scope.
func scopeWhere(col, scope string) (string, []any, error) {
	lo, hi, err := store.ScopeRange(scope)
	if err != nil {
		return "", nil, err
	}
	if scope == "" {
		return "1=1", nil, nil
	}
	return "(" + col + " = ? OR (" + col + " >= ? AND " + col + " < ?))", []any{scope, lo, hi}, nil
}

func newID(prefix string) string {
	b := make([]byte, 8)
	rand.Read(b)
	return prefix + hex.EncodeToString(b)
}

const ruleColumns = `id, name, scope, author, revision, source, enabled, updated_at`

func scanRule(r Rows) (store.Rule, error) {
	var x store.Rule
	var rev, en, at int64
	if err := r.Scan(&x.ID, &x.Name, &x.Scope, &x.Author, &rev, &x.Source, &en, &at); err != nil {
		return x, err
	}
	x.Revision, x.Enabled, x.UpdatedAt = int(rev), en != 0, fromMS(at)
	return x, nil
}

// PutRule implements store.Rules.
func (s *Store) PutRule(ctx context.Context, r store.Rule) (store.Rule, error) {
	var out store.Rule
	err := s.DB.Tx(ctx, func(db DB) error {
		rows, err := db.Query(ctx, `SELECT `+ruleColumns+` FROM rules WHERE scope = ? AND name = ?`, r.Scope, r.Name)
		if err != nil {
			return err
		}
		old, found, err := one(rows, scanRule)
		if err != nil {
			return err
		}
		out = r
		out.Enabled = true
		out.UpdatedAt = r.UpdatedAt.UTC().Truncate(time.Millisecond)
		if found {
			out.ID, out.Revision = old.ID, old.Revision+1
			_, err = db.Exec(ctx, `UPDATE rules SET author = ?, revision = ?, source = ?, enabled = 1, updated_at = ? WHERE id = ?`,
				out.Author, out.Revision, out.Source, ms(out.UpdatedAt), out.ID)
			if err != nil {
				return err
			}
			// A new revision starts afresh: pending durations of the old
			// condition do not count for the new one.
			_, err = db.Exec(ctx, `DELETE FROM rule_states WHERE rule_id = ?`, out.ID)
			return err
		}
		out.ID, out.Revision = newID("r-"), 1
		_, err = db.Exec(ctx, `INSERT INTO rules (`+ruleColumns+`) VALUES (?, ?, ?, ?, ?, ?, 1, ?)`,
			out.ID, out.Name, out.Scope, out.Author, out.Revision, out.Source, ms(out.UpdatedAt))
		return err
	})
	if err != nil {
		return store.Rule{}, fmt.Errorf("put rule %s: %w", r.Name, err)
	}
	return out, nil
}

// one reads at most one row.
func one[T any](rows Rows, scan func(Rows) (T, error)) (T, bool, error) {
	defer rows.Close()
	var zero T
	if !rows.Next() {
		return zero, false, rows.Err()
	}
	v, err := scan(rows)
	if err != nil {
		return zero, false, err
	}
	return v, true, rows.Err()
}

// all reads every row.
func all[T any](rows Rows, scan func(Rows) (T, error)) ([]T, error) {
	defer rows.Close()
	var out []T
	for rows.Next() {
		v, err := scan(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, v)
	}
	return out, rows.Err()
}

func get[T any](ctx context.Context, db DB, what, id string, scan func(Rows) (T, error), q string) (T, error) {
	rows, err := db.Query(ctx, q, id)
	if err != nil {
		var zero T
		return zero, fmt.Errorf("%s %s: %w", what, id, err)
	}
	v, ok, err := one(rows, scan)
	if err != nil {
		return v, fmt.Errorf("%s %s: %w", what, id, err)
	}
	if !ok {
		return v, fmt.Errorf("%s %s: %w", what, id, store.ErrNotFound)
	}
	return v, nil
}

// Rule implements store.Rules.
func (s *Store) Rule(ctx context.Context, id string) (store.Rule, error) {
	return get(ctx, s.DB, "rule", id, scanRule, `SELECT `+ruleColumns+` FROM rules WHERE id = ?`)
}

// ListRules implements store.Rules.
func (s *Store) ListRules(ctx context.Context, scope string) ([]store.Rule, error) {
	where, args, err := scopeWhere("scope", scope)
	if err != nil {
		return nil, err
	}
	rows, err := s.DB.Query(ctx, `SELECT `+ruleColumns+` FROM rules WHERE `+where+` ORDER BY scope, name`, args...)
	if err != nil {
		return nil, fmt.Errorf("list rules: %w", err)
	}
	out, err := all(rows, scanRule)
	if err != nil {
		return nil, fmt.Errorf("list rules: %w", err)
	}
	return out, nil
}

// SetRuleEnabled implements store.Rules.
func (s *Store) SetRuleEnabled(ctx context.Context, id string, enabled bool) error {
	en := 0
	if enabled {
		en = 1
	}
	n, err := s.DB.Exec(ctx, `UPDATE rules SET enabled = ? WHERE id = ?`, en, id)
	if err != nil {
		return fmt.Errorf("rule %s: %w", id, err)
	}
	if n == 0 {
		return fmt.Errorf("rule %s: %w", id, store.ErrNotFound)
	}
	return nil
}

// RulesCursor implements store.Rules.
func (s *Store) RulesCursor(ctx context.Context) (uint64, error) {
	rows, err := s.DB.Query(ctx, `SELECT next FROM rules_cursor WHERE one = 1`)
	if err != nil {
		return 0, fmt.Errorf("rules cursor: %w", err)
	}
	v, _, err := one(rows, func(r Rows) (int64, error) {
		var n int64
		return n, r.Scan(&n)
	})
	if err != nil {
		return 0, fmt.Errorf("rules cursor: %w", err)
	}
	return uint64(v), nil
}

// RuleStates implements store.Rules.
func (s *Store) RuleStates(ctx context.Context) ([]store.RuleState, error) {
	rows, err := s.DB.Query(ctx, `SELECT rule_id, device, pending_since FROM rule_states`)
	if err != nil {
		return nil, fmt.Errorf("rule states: %w", err)
	}
	return all(rows, func(r Rows) (store.RuleState, error) {
		var x store.RuleState
		var at int64
		err := r.Scan(&x.RuleID, &x.Device, &at)
		x.PendingSince = fromMS(at)
		return x, err
	})
}

const alarmColumns = `id, rule_id, rule_name, gateway, device, severity, state, summary, snapshot, raised_at, acked_at, acked_by, cleared_at, cleared_by`

func scanAlarm(r Rows) (store.Alarm, error) {
	var a store.Alarm
	var raised int64
	var acked, cleared sql.NullInt64
	if err := r.Scan(&a.ID, &a.RuleID, &a.RuleName, &a.Gateway, &a.Device, &a.Severity, &a.State, &a.Summary, &a.Snapshot,
		&raised, &acked, &a.AckedBy, &cleared, &a.ClearedBy); err != nil {
		return a, err
	}
	a.RaisedAt, a.AckedAt, a.ClearedAt = fromMS(raised), fromNull(acked), fromNull(cleared)
	return a, nil
}

// CommitRules implements store.Rules.
func (s *Store) CommitRules(ctx context.Context, c store.RuleCommit) error {
	err := s.DB.Tx(ctx, func(db DB) error {
		for _, st := range c.States {
			if st.PendingSince.IsZero() {
				if _, err := db.Exec(ctx, `DELETE FROM rule_states WHERE rule_id = ? AND device = ?`, st.RuleID, st.Device); err != nil {
					return err
				}
				continue
			}
			if _, err := db.Exec(ctx, `INSERT INTO rule_states (rule_id, device, pending_since) VALUES (?, ?, ?)
				ON CONFLICT (rule_id, device) DO UPDATE SET pending_since = excluded.pending_since`,
				st.RuleID, st.Device, ms(st.PendingSince)); err != nil {
				return err
			}
		}
		skipped := map[string]bool{}
		for _, ch := range c.Alarms {
			a := ch.Alarm
			if ch.Clear {
				if _, err := db.Exec(ctx, `UPDATE alarms SET state = ?, cleared_at = ?, cleared_by = 'rule' WHERE id = ? AND state <> ?`,
					store.AlarmCleared, ms(ch.At), a.ID, store.AlarmCleared); err != nil {
					return fmt.Errorf("clear alarm: %w", err)
				}
				continue
			}
			n, err := db.Exec(ctx, `INSERT INTO alarms (`+alarmColumns+`) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, NULL, '', NULL, '') ON CONFLICT DO NOTHING`,
				a.ID, a.RuleID, a.RuleName, a.Gateway, a.Device, a.Severity, store.AlarmActive, store.SafeText(a.Summary), a.Snapshot, ms(a.RaisedAt))
			if err != nil {
				return fmt.Errorf("raise alarm: %w", err)
			}
			if n == 0 {
				skipped[a.ID] = true
			}
		}
		for _, m := range c.Outbox {
			if skipped[c.AlarmOf[m.ID]] {
				continue
			}
			if _, err := db.Exec(ctx, `INSERT INTO outbox (id, kind, rule_id, gateway, payload, state, attempts, next_at, last_error, created_at)
				VALUES (?, ?, ?, ?, ?, ?, 0, ?, '', ?) ON CONFLICT DO NOTHING`,
				m.ID, m.Kind, m.RuleID, m.Gateway, m.Payload, store.OutboxPending, ms(m.NextAt), ms(m.CreatedAt)); err != nil {
				return fmt.Errorf("outbox: %w", err)
			}
		}
		for _, e := range c.Errors {
			if _, err := db.Exec(ctx, `INSERT INTO rule_errors (rule_id, gateway, device, message, snapshot, at, count, last_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)
				ON CONFLICT (rule_id, device, message) DO UPDATE SET count = rule_errors.count + excluded.count, last_at = excluded.last_at, snapshot = excluded.snapshot`,
				e.RuleID, e.Gateway, e.Device, store.SafeText(e.Message), e.Snapshot, ms(e.At), max(e.Count, 1), ms(e.At)); err != nil {
				return fmt.Errorf("rule error: %w", err)
			}
		}
		if c.Cursor != nil {
			if _, err := db.Exec(ctx, `INSERT INTO rules_cursor (one, next) VALUES (1, ?) ON CONFLICT (one) DO UPDATE SET next = excluded.next`,
				int64(*c.Cursor)); err != nil {
				return fmt.Errorf("rules cursor: %w", err)
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("commit rules: %w", err)
	}
	return nil
}

// Alarms implements store.Rules.
func (s *Store) Alarms(ctx context.Context, q store.AlarmQuery) ([]store.Alarm, error) {
	where, args, err := scopeWhere("gateway", q.Scope)
	if err != nil {
		return nil, err
	}
	var b strings.Builder
	b.WriteString(`SELECT ` + alarmColumns + ` FROM alarms WHERE ` + where)
	switch q.State {
	case "":
	case "open":
		b.WriteString(` AND state <> ?`)
		args = append(args, store.AlarmCleared)
	default:
		b.WriteString(` AND state = ?`)
		args = append(args, q.State)
	}
	if q.RuleID != "" {
		b.WriteString(` AND rule_id = ?`)
		args = append(args, q.RuleID)
	}
	if q.Device != "" {
		b.WriteString(` AND device = ?`)
		args = append(args, q.Device)
	}
	b.WriteString(` ORDER BY raised_at DESC, id LIMIT ?`)
	args = append(args, store.EffectiveLimit(q.Limit))
	rows, err := s.DB.Query(ctx, b.String(), args...)
	if err != nil {
		return nil, fmt.Errorf("alarms: %w", err)
	}
	return all(rows, scanAlarm)
}

// Alarm implements store.Rules.
func (s *Store) Alarm(ctx context.Context, id string) (store.Alarm, error) {
	return get(ctx, s.DB, "alarm", id, scanAlarm, `SELECT `+alarmColumns+` FROM alarms WHERE id = ?`)
}

// AckAlarm implements store.Rules.
func (s *Store) AckAlarm(ctx context.Context, id, by string, at time.Time) (store.Alarm, error) {
	return s.alarmChange(ctx, id, `UPDATE alarms SET state = ?, acked_at = ?, acked_by = ? WHERE id = ? AND state = ?`,
		"only an active alarm can be acknowledged", store.AlarmAcknowledged, ms(at), store.SafeText(by), id, store.AlarmActive)
}

// ClearAlarm implements store.Rules.
func (s *Store) ClearAlarm(ctx context.Context, id, by string, at time.Time) (store.Alarm, error) {
	return s.alarmChange(ctx, id, `UPDATE alarms SET state = ?, cleared_at = ?, cleared_by = ? WHERE id = ? AND state <> ?`,
		"the alarm is cleared already", store.AlarmCleared, ms(at), store.SafeText(by), id, store.AlarmCleared)
}

func (s *Store) alarmChange(ctx context.Context, id, q, conflict string, args ...any) (store.Alarm, error) {
	var a store.Alarm
	err := s.DB.Tx(ctx, func(db DB) error {
		n, err := db.Exec(ctx, q, args...)
		if err != nil {
			return err
		}
		if a, err = get(ctx, db, "alarm", id, scanAlarm, `SELECT `+alarmColumns+` FROM alarms WHERE id = ?`); err != nil {
			return err
		}
		if n == 0 {
			return fmt.Errorf("alarm %s: %w: %s", id, store.ErrConflict, conflict)
		}
		return nil
	})
	return a, err
}

const taskColumns = `id, title, gateway, device, assignee, due, state, rule_id, alarm_id, created_at, updated_at`

func scanTask(r Rows) (store.Task, error) {
	var t store.Task
	var due sql.NullInt64
	var created, updated int64
	if err := r.Scan(&t.ID, &t.Title, &t.Gateway, &t.Device, &t.Assignee, &due, &t.State, &t.RuleID, &t.AlarmID, &created, &updated); err != nil {
		return t, err
	}
	t.Due, t.CreatedAt, t.UpdatedAt = fromNull(due), fromMS(created), fromMS(updated)
	return t, nil
}

// PutTask implements store.Rules.
func (s *Store) PutTask(ctx context.Context, t store.Task) (bool, error) {
	if t.ID == "" {
		t.ID = newID("t-")
	}
	if t.State == "" {
		t.State = store.TaskOpen
	}
	n, err := s.DB.Exec(ctx, `INSERT INTO tasks (`+taskColumns+`) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING`,
		t.ID, store.SafeText(t.Title), t.Gateway, t.Device, store.SafeText(t.Assignee), nullMS(t.Due), t.State, t.RuleID, t.AlarmID,
		ms(t.CreatedAt), ms(t.CreatedAt))
	if err != nil {
		return false, fmt.Errorf("put task %s: %w", t.ID, err)
	}
	return n > 0, nil
}

// Task implements store.Rules.
func (s *Store) Task(ctx context.Context, id string) (store.Task, error) {
	t, err := get(ctx, s.DB, "task", id, scanTask, `SELECT `+taskColumns+` FROM tasks WHERE id = ?`)
	if err != nil {
		return t, err
	}
	rows, err := s.DB.Query(ctx, `SELECT author, text, at FROM task_comments WHERE task_id = ? ORDER BY id`, id)
	if err != nil {
		return t, fmt.Errorf("task %s comments: %w", id, err)
	}
	t.Comments, err = all(rows, func(r Rows) (store.TaskComment, error) {
		var c store.TaskComment
		var at int64
		err := r.Scan(&c.Author, &c.Text, &at)
		c.At = fromMS(at)
		return c, err
	})
	return t, err
}

// Tasks implements store.Rules.
func (s *Store) Tasks(ctx context.Context, q store.TaskQuery) ([]store.Task, error) {
	where, args, err := scopeWhere("gateway", q.Scope)
	if err != nil {
		return nil, err
	}
	var b strings.Builder
	b.WriteString(`SELECT ` + taskColumns + ` FROM tasks WHERE ` + where)
	if q.State != "" {
		b.WriteString(` AND state = ?`)
		args = append(args, q.State)
	}
	if q.Assignee != "" {
		b.WriteString(` AND assignee = ?`)
		args = append(args, q.Assignee)
	}
	b.WriteString(` ORDER BY created_at DESC, id LIMIT ?`)
	args = append(args, store.EffectiveLimit(q.Limit))
	rows, err := s.DB.Query(ctx, b.String(), args...)
	if err != nil {
		return nil, fmt.Errorf("tasks: %w", err)
	}
	return all(rows, scanTask)
}

// UpdateTask implements store.Rules.
func (s *Store) UpdateTask(ctx context.Context, id string, u store.TaskUpdate) (store.Task, error) {
	err := s.DB.Tx(ctx, func(db DB) error {
		n, err := db.Exec(ctx, `UPDATE tasks SET updated_at = ? WHERE id = ?`, ms(u.At), id)
		if err != nil {
			return err
		}
		if n == 0 {
			return fmt.Errorf("task %s: %w", id, store.ErrNotFound)
		}
		if u.State != "" {
			if _, err := db.Exec(ctx, `UPDATE tasks SET state = ? WHERE id = ?`, u.State, id); err != nil {
				return err
			}
		}
		if u.Assignee != "" {
			if _, err := db.Exec(ctx, `UPDATE tasks SET assignee = ? WHERE id = ?`, store.SafeText(u.Assignee), id); err != nil {
				return err
			}
		}
		if c := u.Comment; c != nil {
			if _, err := db.Exec(ctx, `INSERT INTO task_comments (task_id, author, text, at) VALUES (?, ?, ?, ?)`,
				id, store.SafeText(c.Author), store.SafeText(c.Text), ms(c.At)); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return store.Task{}, fmt.Errorf("update task %s: %w", id, err)
	}
	return s.Task(ctx, id)
}

const outboxColumns = `id, kind, rule_id, gateway, payload, state, attempts, next_at, last_error, created_at, sent_at`

func scanOutbox(r Rows) (store.OutboxMessage, error) {
	var m store.OutboxMessage
	var attempts, next, created int64
	var sent sql.NullInt64
	if err := r.Scan(&m.ID, &m.Kind, &m.RuleID, &m.Gateway, &m.Payload, &m.State, &attempts, &next, &m.LastError, &created, &sent); err != nil {
		return m, err
	}
	m.Attempts, m.NextAt, m.CreatedAt, m.SentAt = int(attempts), fromMS(next), fromMS(created), fromNull(sent)
	return m, nil
}

// DueOutbox implements store.Rules.
func (s *Store) DueOutbox(ctx context.Context, now time.Time, limit int) ([]store.OutboxMessage, error) {
	rows, err := s.DB.Query(ctx, `SELECT `+outboxColumns+` FROM outbox WHERE state = ? AND next_at <= ? ORDER BY next_at, id LIMIT ?`,
		store.OutboxPending, ms(now), store.EffectiveLimit(limit))
	if err != nil {
		return nil, fmt.Errorf("due outbox: %w", err)
	}
	return all(rows, scanOutbox)
}

// OutboxSent implements store.Rules.
func (s *Store) OutboxSent(ctx context.Context, id string, at time.Time) error {
	_, err := s.DB.Exec(ctx, `UPDATE outbox SET state = ?, sent_at = ?, attempts = attempts + 1, last_error = '' WHERE id = ?`, store.OutboxSent, ms(at), id)
	if err != nil {
		return fmt.Errorf("outbox %s sent: %w", id, err)
	}
	return nil
}

// OutboxFailed implements store.Rules.
func (s *Store) OutboxFailed(ctx context.Context, id string, attempts int, next time.Time, lastErr, state string) error {
	if state == "" {
		state = store.OutboxPending
	}
	_, err := s.DB.Exec(ctx, `UPDATE outbox SET state = ?, attempts = ?, next_at = ?, last_error = ? WHERE id = ? AND state = ?`,
		state, attempts, ms(next), store.SafeText(lastErr), id, store.OutboxPending)
	if err != nil {
		return fmt.Errorf("outbox %s failed: %w", id, err)
	}
	return nil
}

// Outbox implements store.Rules.
func (s *Store) Outbox(ctx context.Context, q store.OutboxQuery) ([]store.OutboxMessage, error) {
	where, args, err := scopeWhere("gateway", q.Scope)
	if err != nil {
		return nil, err
	}
	query := `SELECT ` + outboxColumns + ` FROM outbox WHERE ` + where
	if q.State != "" {
		query += ` AND state = ?`
		args = append(args, q.State)
	}
	rows, err := s.DB.Query(ctx, query+` ORDER BY created_at DESC, id LIMIT ?`, append(args, store.EffectiveLimit(q.Limit))...)
	if err != nil {
		return nil, fmt.Errorf("outbox: %w", err)
	}
	return all(rows, scanOutbox)
}

// OutboxMessage implements store.Rules.
func (s *Store) OutboxMessage(ctx context.Context, id string) (store.OutboxMessage, error) {
	return get(ctx, s.DB, "outbox message", id, scanOutbox, `SELECT `+outboxColumns+` FROM outbox WHERE id = ?`)
}

// RetryOutbox implements store.Rules.
func (s *Store) RetryOutbox(ctx context.Context, id string, at time.Time) error {
	n, err := s.DB.Exec(ctx, `UPDATE outbox SET state = ?, attempts = 0, next_at = ? WHERE id = ? AND state IN (?, ?)`,
		store.OutboxPending, ms(at), id, store.OutboxDead, store.OutboxSuppressed)
	if err != nil {
		return fmt.Errorf("retry outbox %s: %w", id, err)
	}
	if n == 0 {
		if _, err := s.OutboxMessage(ctx, id); err != nil {
			return err
		}
		return fmt.Errorf("retry outbox %s: %w: only a dead or suppressed message can be retried", id, store.ErrConflict)
	}
	return nil
}

// TrimOutbox implements store.Rules.
func (s *Store) TrimOutbox(ctx context.Context, before time.Time) (int, error) {
	n, err := s.DB.Exec(ctx, `DELETE FROM outbox WHERE state IN (?, ?) AND created_at < ?`, store.OutboxSent, store.OutboxSuppressed, ms(before))
	if err != nil {
		return 0, fmt.Errorf("trim outbox: %w", err)
	}
	return int(n), nil
}

// RuleErrors implements store.Rules.
func (s *Store) RuleErrors(ctx context.Context, scope string, limit int) ([]store.RuleError, error) {
	where, args, err := scopeWhere("gateway", scope)
	if err != nil {
		return nil, err
	}
	rows, err := s.DB.Query(ctx, `SELECT rule_id, gateway, device, message, snapshot, at, count, last_at FROM rule_errors WHERE `+where+
		` ORDER BY last_at DESC, id LIMIT ?`, append(args, store.EffectiveLimit(limit))...)
	if err != nil {
		return nil, fmt.Errorf("rule errors: %w", err)
	}
	return all(rows, func(r Rows) (store.RuleError, error) {
		var e store.RuleError
		var at, n, last int64
		err := r.Scan(&e.RuleID, &e.Gateway, &e.Device, &e.Message, &e.Snapshot, &at, &n, &last)
		e.At, e.Count, e.LastAt = fromMS(at), int(n), fromMS(last)
		return e, err
	})
}

// PutWebhookEndpoint implements store.Rules.
func (s *Store) PutWebhookEndpoint(ctx context.Context, e store.WebhookEndpoint) error {
	return s.DB.Tx(ctx, func(db DB) error {
		old, err := get(ctx, db, "webhook endpoint", e.Name, scanEndpoint, `SELECT name, scope, url, secret, created_at FROM webhook_endpoints WHERE name = ?`)
		switch {
		case errors.Is(err, store.ErrNotFound):
			_, err = db.Exec(ctx, `INSERT INTO webhook_endpoints (name, scope, url, secret, created_at) VALUES (?, ?, ?, ?, ?)`,
				e.Name, e.Scope, e.URL, e.SealedSecret, ms(e.CreatedAt))
			return err
		case err != nil:
			return err
		case old.Scope != e.Scope:
			return fmt.Errorf("webhook endpoint %s: %w (in another scope)", e.Name, store.ErrExists)
		}
		_, err = db.Exec(ctx, `UPDATE webhook_endpoints SET url = ?, secret = ?, created_at = ? WHERE name = ?`, e.URL, e.SealedSecret, ms(e.CreatedAt), e.Name)
		return err
	})
}

func scanEndpoint(r Rows) (store.WebhookEndpoint, error) {
	var e store.WebhookEndpoint
	var at int64
	err := r.Scan(&e.Name, &e.Scope, &e.URL, &e.SealedSecret, &at)
	e.CreatedAt = fromMS(at)
	return e, err
}

// WebhookEndpoint implements store.Rules.
func (s *Store) WebhookEndpoint(ctx context.Context, name string) (store.WebhookEndpoint, error) {
	return get(ctx, s.DB, "webhook endpoint", name, scanEndpoint, `SELECT name, scope, url, secret, created_at FROM webhook_endpoints WHERE name = ?`)
}
