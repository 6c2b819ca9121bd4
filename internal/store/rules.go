package store

import (
	"context"
	"errors"
	"time"
)

// ErrConflict is returned (wrapped) when a change does not apply to the
// record's current state (acknowledging a cleared alarm, retrying a
// message that is not dead).
var ErrConflict = errors.New("conflict with the current state")

// Rule is a stored rule file (package rules parses and runs it). The store
// keeps the source as given, so what runs is what its author wrote.
type Rule struct {
	ID       string // assigned by PutRule, stable across revisions
	Name     string
	Scope    string // an identity path, or "*" for the vendor's whole fleet
	Author   string // who added it (an identity path or "service:NAME")
	Revision int    // 1 for the first PutRule of (Scope, Name), then +1 each
	Source   []byte
	Enabled  bool
	// UpdatedAt is when this revision was stored (milliseconds).
	UpdatedAt time.Time
}

// RuleState is what the rules engine remembers of one rule and one device
// between snapshots: since when the condition holds (for a rule with a
// duration) without an alarm yet.
type RuleState struct {
	RuleID       string
	Device       string // measurement device path (gateway/device)
	PendingSince time.Time
}

// Alarm states.
const (
	AlarmActive       = "active"
	AlarmAcknowledged = "acknowledged"
	AlarmCleared      = "cleared"
)

// Alarm is raised by a rule for a device. At most one alarm per rule and
// device is open (not cleared) at a time: the store refuses a second one.
type Alarm struct {
	ID       string // stable: derived from what raised it
	RuleID   string
	RuleName string
	Gateway  string // the device's gateway path: the alarm's scope
	Device   string // measurement device path (gateway/device), or the gateway path
	Severity string
	State    string
	Summary  string
	Snapshot []byte // hash of the snapshot that raised it; nil for silent alarms
	RaisedAt time.Time
	AckedAt  time.Time
	AckedBy  string
	// ClearedAt and ClearedBy: by the rule's clear condition (ClearedBy
	// "rule") or by hand.
	ClearedAt time.Time
	ClearedBy string
}

// Open reports whether the alarm is not cleared.
func (a Alarm) Open() bool { return a.State != AlarmCleared }

// AlarmQuery selects alarms. Zero fields match all.
type AlarmQuery struct {
	Scope  string // as SnapshotQuery.Scope, on the alarm's Gateway
	State  string // one state, or "open" for active and acknowledged
	RuleID string
	Device string
	Limit  int // EffectiveLimit
}

// AlarmChange raises an alarm or, with Clear, clears the open alarm
// Alarm.ID at At by its rule's condition.
type AlarmChange struct {
	Alarm Alarm
	Clear bool
	At    time.Time
}

// Task states.
const (
	TaskOpen       = "open"
	TaskInProgress = "in_progress"
	TaskDone       = "done"
)

// Task is an investigation or maintenance task, created by a rule's task
// action (its ID is the outbox message's) or by hand.
type Task struct {
	ID        string
	Title     string
	Gateway   string // the task's scope
	Device    string
	Assignee  string
	Due       time.Time // zero: none
	State     string
	RuleID    string
	AlarmID   string
	CreatedAt time.Time
	UpdatedAt time.Time
	Comments  []TaskComment // filled by Task, not by Tasks
}

// TaskComment is a comment on a task.
type TaskComment struct {
	Author string
	Text   string
	At     time.Time
}

// TaskQuery selects tasks. Zero fields match all.
type TaskQuery struct {
	Scope    string
	State    string
	Assignee string
	Limit    int
}

// TaskUpdate changes a task; empty fields are kept.
type TaskUpdate struct {
	State    string
	Assignee string
	Comment  *TaskComment
	At       time.Time
}

// Outbox message states.
const (
	OutboxPending    = "pending"
	OutboxSent       = "sent"
	OutboxDead       = "dead"       // failed too often: an admin may retry it
	OutboxSuppressed = "suppressed" // over its rule's rate limit: may be retried too
)

// OutboxMessage is one notification to deliver (an email, a webhook call,
// a task, an MQTT event). It is written in the same transaction as the
// alarm it belongs to and carries a stable ID, so a crash neither loses
// nor duplicates it; the dispatcher delivers it at least once and the ID
// lets the receiver recognize a repeat (Message-ID, webhook-id).
type OutboxMessage struct {
	ID        string
	Kind      string // email, webhook, task, mqtt
	RuleID    string
	Gateway   string // the scope of what it is about
	Payload   []byte // JSON, the kind's own
	State     string
	Attempts  int
	NextAt    time.Time
	LastError string
	CreatedAt time.Time // when the event that caused it arrived
	SentAt    time.Time
}

// OutboxQuery selects outbox messages. Zero fields match all.
type OutboxQuery struct {
	Scope string
	State string
	Limit int
}

// RuleError is a rule that failed at run time on a snapshot (a missing
// channel, a wrong type). Repeats of the same message for the same rule
// and device are aggregated into one record.
type RuleError struct {
	RuleID   string
	Gateway  string
	Device   string
	Message  string
	Snapshot []byte // hash of the (last) snapshot it failed on
	At       time.Time
	Count    int // 0 means 1
	LastAt   time.Time
}

// WebhookEndpoint is a webhook receiver and the secret its calls are
// signed with. The store keeps the secret as given, which is its sealed
// form (package secretbox): it never sees the plaintext.
type WebhookEndpoint struct {
	Name         string
	Scope        string // the owner: an identity path or "*"
	URL          string
	SealedSecret []byte
	CreatedAt    time.Time
}

// RuleCommit is the outcome of evaluating snapshots, made durable at once
// by CommitRules: a crash before it repeats the evaluation (which yields
// the same IDs), a crash after it repeats nothing.
type RuleCommit struct {
	// Cursor, if set, is the next ledger index the engine will evaluate.
	Cursor *uint64
	// States to write; a state with a zero PendingSince is deleted.
	States []RuleState
	// Alarms are applied in order. A raised alarm whose ID exists, or
	// whose rule and device have an open alarm already, is skipped, and
	// so are the outbox messages that name it in AlarmOf.
	Alarms []AlarmChange
	// Outbox inserts messages; one whose ID exists is skipped.
	Outbox []OutboxMessage
	// AlarmOf maps an outbox message ID to the ID of the alarm it
	// announces (for the skip rule of Raise).
	AlarmOf map[string]string
	Errors  []RuleError
}

// Rules keeps rules, what they raised and what they are to deliver.
type Rules interface {
	// PutRule stores a rule by (Scope, Name): a new one gets an ID and
	// revision 1, a known one its next revision and is enabled again.
	PutRule(ctx context.Context, r Rule) (Rule, error)
	// Rule returns the rule with the ID, or ErrNotFound.
	Rule(ctx context.Context, id string) (Rule, error)
	// ListRules returns the rules whose scope lies in scope ("" for all;
	// "*" rules only then), ordered by scope and name.
	ListRules(ctx context.Context, scope string) ([]Rule, error)
	// SetRuleEnabled enables or disables a rule.
	SetRuleEnabled(ctx context.Context, id string, enabled bool) error

	// RulesCursor returns the next ledger index the rules engine is to
	// evaluate (0 at first).
	RulesCursor(ctx context.Context) (uint64, error)
	// SnapshotsFromLedger returns up to limit snapshots whose ledger
	// index is at least from, in ledger order.
	SnapshotsFromLedger(ctx context.Context, from uint64, limit int) ([]SnapshotRecord, error)
	// RuleStates returns every rule state.
	RuleStates(ctx context.Context) ([]RuleState, error)
	// CommitRules applies c in one transaction.
	CommitRules(ctx context.Context, c RuleCommit) error

	// Alarms returns the alarms q selects, newest first.
	Alarms(ctx context.Context, q AlarmQuery) ([]Alarm, error)
	// Alarm returns one alarm, or ErrNotFound.
	Alarm(ctx context.Context, id string) (Alarm, error)
	// AckAlarm acknowledges an active alarm (ErrConflict if it is not
	// active); ClearAlarm clears an open one by hand (ErrConflict if it is
	// cleared).
	AckAlarm(ctx context.Context, id, by string, at time.Time) (Alarm, error)
	ClearAlarm(ctx context.Context, id, by string, at time.Time) (Alarm, error)

	// PutTask inserts a task unless one with its ID exists; it reports
	// whether it did.
	PutTask(ctx context.Context, t Task) (bool, error)
	Task(ctx context.Context, id string) (Task, error)
	// Tasks returns the tasks q selects, newest first, without comments.
	Tasks(ctx context.Context, q TaskQuery) ([]Task, error)
	UpdateTask(ctx context.Context, id string, u TaskUpdate) (Task, error)

	// DueOutbox returns pending messages with NextAt <= now, oldest first.
	DueOutbox(ctx context.Context, now time.Time, limit int) ([]OutboxMessage, error)
	// OutboxSent marks a message delivered.
	OutboxSent(ctx context.Context, id string, at time.Time) error
	// OutboxFailed records a failed attempt: the message is retried at
	// next, or moved to state (dead or suppressed) if state is not empty.
	OutboxFailed(ctx context.Context, id string, attempts int, next time.Time, lastErr, state string) error
	Outbox(ctx context.Context, q OutboxQuery) ([]OutboxMessage, error)
	OutboxMessage(ctx context.Context, id string) (OutboxMessage, error)
	// RetryOutbox makes a dead or suppressed message pending again
	// (ErrConflict otherwise).
	RetryOutbox(ctx context.Context, id string, at time.Time) error
	// TrimOutbox deletes sent and suppressed messages created before
	// before, and returns how many: the outbox stays bounded. Pending and
	// dead messages stay.
	TrimOutbox(ctx context.Context, before time.Time) (int, error)

	// RuleErrors returns the rule errors of devices in scope, newest first.
	RuleErrors(ctx context.Context, scope string, limit int) ([]RuleError, error)

	// PutWebhookEndpoint stores an endpoint by name (ErrExists if the
	// name belongs to another scope).
	PutWebhookEndpoint(ctx context.Context, e WebhookEndpoint) error
	WebhookEndpoint(ctx context.Context, name string) (WebhookEndpoint, error)
}

// VendorScope is the scope of a rule over the whole fleet.
const VendorScope = "*"
