// Package outbox delivers the notifications rules write to the store's
// outbox: emails, signed webhook calls, tasks and MQTT events. Each message
// was stored in the transaction that raised its alarm, with a stable ID;
// the dispatcher sends what is due, retries failures with exponential
// backoff, moves a message that keeps failing to the dead letters (an
// admin may retry it), and holds each rule to its rate limit (messages
// beyond it are suppressed, not sent, and can be retried too). A crash
// between a delivery and its record sends that one message again, with the
// same ID (Message-ID, webhook-id), so the receiver can tell.
package outbox

import (
	"encoding/json"
	"time"
)

// Event is what a rule reports: the body of webhook calls and MQTT
// events, and the content of emails.
type Event struct {
	// Type: alarm.raised (an alarm rule fired), rule.matched (a rule of
	// mode each matched a snapshot).
	Type     string         `json:"type"`
	ID       string         `json:"id"` // the event's stable ID (the alarm's, or the match's)
	Rule     string         `json:"rule"`
	RuleID   string         `json:"rule_id"`
	Severity string         `json:"severity"`
	Device   string         `json:"device"` // measurement device path, or a gateway path
	Alarm    string         `json:"alarm,omitempty"`
	Summary  string         `json:"summary"`
	At       time.Time      `json:"at"` // when it happened (the snapshot's time)
	Snapshot *SnapshotRef   `json:"snapshot,omitempty"`
	Values   map[string]any `json:"values,omitempty"`
}

// SnapshotRef names the snapshot an event is about.
type SnapshotRef struct {
	Hash string    `json:"hash"` // hex SHA-256
	Seq  uint64    `json:"seq"`
	Time time.Time `json:"time"`
}

// Email is the payload of an email message.
type Email struct {
	To      []string `json:"to"`
	Subject string   `json:"subject"`
	Body    string   `json:"body"`
	// ReceivedAt is when the snapshot that caused it arrived (latency).
	ReceivedAt time.Time `json:"received_at"`
}

// Webhook is the payload of a webhook message: Body is posted to the
// endpoint's URL, signed with its secret.
type Webhook struct {
	Endpoint   string          `json:"endpoint"`
	URL        string          `json:"url"`
	Body       json.RawMessage `json:"body"`
	ReceivedAt time.Time       `json:"received_at"`
}

// Task is the payload of a task message.
type Task struct {
	Title    string    `json:"title"`
	Gateway  string    `json:"gateway"`
	Device   string    `json:"device"`
	Assignee string    `json:"assignee"`
	Due      time.Time `json:"due,omitzero"`
	AlarmID  string    `json:"alarm_id"`
	At       time.Time `json:"at"`
}

// MQTT is the payload of an MQTT event: Body is published to Topic.
type MQTT struct {
	Topic string          `json:"topic"`
	Body  json.RawMessage `json:"body"`
}
