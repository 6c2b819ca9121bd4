// Package command defines the commands the platform sends to gateways on
// topic.CommandsOf(path): JSON, signed by the platform's e2e "platform"
// service key and sealed (package envelope) for the one gateway's e2e key,
// so that neither the broker nor another tenant can read or forge them.
// Results come back as plain JSON on topic.CommandResultsOf(path).
//
// A gateway follows a command only if it opens, verifies to Signer, and
// carries a signing time later than the last command it followed (replay
// protection across restarts).
package command

import "time"

// Signer is the identity commands must be signed by.
const Signer = "service:platform"

// Types of command.
const (
	// Rebootstrap: fetch the configuration again (brokers, recipients,
	// intervals) and reconnect; with RotateKeys, re-enroll both identities
	// with fresh keys first.
	Rebootstrap = "rebootstrap"
)

// Command is a command's content.
type Command struct {
	ID         string `json:"id"`
	Type       string `json:"type"`
	RotateKeys bool   `json:"rotate_keys,omitempty"`
}

// Result reports how a gateway handled a command.
type Result struct {
	ID     string    `json:"id"`
	Status string    `json:"status"` // "ok" or "error"
	Error  string    `json:"error,omitempty"`
	Time   time.Time `json:"time"`
}
