// Package command defines the commands sent to gateways on
// topic.CommandsOf(path) and their results on topic.CommandResultsOf(path).
//
// A command is JSON, signed (CMS SignedData, package envelope) by the e2e
// identity of whoever issued it — an operator or a platform service, so
// the record names who sent it — and sealed for the one gateway's e2e key
// and its customer's. Neither the broker nor a client holding a valid
// transport certificate (even the platform's own) can read or forge one:
// that takes an e2e service key.
//
// A gateway follows a command only if it opens, verifies to an e2e service
// identity, names this gateway, has not expired, and carries a nonce the
// gateway has not seen before (remembered until the command's expiry,
// across restarts). The result is JSON signed by the gateway's e2e key.
package command

import (
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"strings"
	"time"

	"github.com/fieldtrust/fieldtrust/internal/ident"
)

// Signer is the identity of the platform's own commands (re-bootstrap).
const Signer = "service:platform"

// Built-in commands.
const (
	// Rebootstrap: fetch the configuration again (brokers, recipients,
	// intervals) and reconnect; with rotate_keys=true (or RotateKeys),
	// re-enroll both identities with fresh keys first.
	Rebootstrap = "rebootstrap"
	// Reboot restarts the gateway's connection and simulated devices.
	Reboot = "reboot"
	// Clean runs the devices' cleaning procedure.
	Clean = "clean"
	// SetInterval sets the simulated devices' interval: seconds=N.
	SetInterval = "set-interval"
)

// Limits.
const (
	// MaxLifetime bounds a command's validity: a gateway remembers nonces
	// for at most this long.
	MaxLifetime = 7 * 24 * time.Hour
	// DefaultLifetime is the validity the CLI gives a command.
	DefaultLifetime = time.Hour
	// MaxSkew is how far in the future a command's issue time may be
	// (clocks differ).
	MaxSkew = 5 * time.Minute
	// MaxArgs bounds a command's arguments.
	MaxArgs = 32
	// MaxBytes bounds a command's or a result's JSON.
	MaxBytes = 16 << 10
)

// Command is a command's content.
type Command struct {
	ID         string            `json:"id"`
	Type       string            `json:"type"` // the command's name
	Args       map[string]string `json:"args,omitempty"`
	RotateKeys bool              `json:"rotate_keys,omitempty"`
	Gateway    string            `json:"gateway"`
	Issued     time.Time         `json:"issued"`
	Expires    time.Time         `json:"expires"`
	Nonce      string            `json:"nonce"`
}

var (
	namePattern  = regexp.MustCompile(`^[a-z][a-z0-9-]{0,31}$`)
	argPattern   = regexp.MustCompile(`^[A-Za-z][A-Za-z0-9_.-]{0,63}$`)
	noncePattern = regexp.MustCompile(`^[0-9a-f]{32,64}$`)
	idPattern    = regexp.MustCompile(`^[0-9a-f]{16,64}$`)
)

// ErrInvalid is wrapped by every parse and check error.
var ErrInvalid = errors.New("invalid command")

// CheckName refuses a command name that is not [a-z][a-z0-9-]{0,31}.
func CheckName(name string) error {
	if !namePattern.MatchString(name) {
		return fmt.Errorf("%w: name %q: want lowercase letters, digits and '-', at most 32", ErrInvalid, name)
	}
	return nil
}

// ParseArgs turns key=value words (as the CLI takes them) into arguments.
func ParseArgs(words []string) (map[string]string, error) {
	if len(words) > MaxArgs {
		return nil, fmt.Errorf("%w: more than %d arguments", ErrInvalid, MaxArgs)
	}
	args := map[string]string{}
	for _, w := range words {
		k, v, ok := strings.Cut(w, "=")
		if !ok || !argPattern.MatchString(k) {
			return nil, fmt.Errorf("%w: argument %q: want key=value, the key of letters, digits, '_', '.', '-'", ErrInvalid, w)
		}
		if _, dup := args[k]; dup {
			return nil, fmt.Errorf("%w: argument %s given twice", ErrInvalid, k)
		}
		if len(v) > 1024 {
			return nil, fmt.Errorf("%w: argument %s longer than 1024 bytes", ErrInvalid, k)
		}
		args[k] = v
	}
	if len(args) == 0 {
		return nil, nil
	}
	return args, nil
}

// Parse decodes and checks a command strictly (unknown fields, trailing
// data, bad names, arguments, nonce, gateway or times are refused).
func Parse(b []byte) (Command, error) {
	var c Command
	if len(b) > MaxBytes {
		return c, fmt.Errorf("%w: larger than %d bytes", ErrInvalid, MaxBytes)
	}
	d := json.NewDecoder(strings.NewReader(string(b)))
	d.DisallowUnknownFields()
	if err := d.Decode(&c); err != nil {
		return c, fmt.Errorf("%w: %v", ErrInvalid, err)
	}
	if d.More() {
		return c, fmt.Errorf("%w: data after the JSON object", ErrInvalid)
	}
	return c, c.check()
}

func (c Command) check() error {
	if !idPattern.MatchString(c.ID) {
		return fmt.Errorf("%w: id %q", ErrInvalid, c.ID)
	}
	if err := CheckName(c.Type); err != nil {
		return err
	}
	if len(c.Args) > MaxArgs {
		return fmt.Errorf("%w: more than %d arguments", ErrInvalid, MaxArgs)
	}
	for k, v := range c.Args {
		if !argPattern.MatchString(k) || len(v) > 1024 {
			return fmt.Errorf("%w: argument %q", ErrInvalid, k)
		}
	}
	if p, err := ident.SplitPath(c.Gateway); err != nil || len(p) != 3 {
		return fmt.Errorf("%w: gateway %q is not master/account/gateway", ErrInvalid, c.Gateway)
	}
	if !noncePattern.MatchString(c.Nonce) {
		return fmt.Errorf("%w: nonce: want 32 to 64 lowercase hex digits", ErrInvalid)
	}
	if c.Issued.IsZero() || c.Expires.IsZero() || !c.Expires.After(c.Issued) {
		return fmt.Errorf("%w: issued and expires must be set, expires after issued", ErrInvalid)
	}
	if c.Expires.Sub(c.Issued) > MaxLifetime {
		return fmt.Errorf("%w: valid for %s, more than the %s a gateway remembers nonces", ErrInvalid, c.Expires.Sub(c.Issued), MaxLifetime)
	}
	return nil
}

// Refusals a gateway reports (Result.Error with Status "refused").
var (
	ErrExpired      = errors.New("command expired")
	ErrNotYetValid  = errors.New("command issued in the future (clock skew beyond 5 minutes)")
	ErrReplayed     = errors.New("command replayed (nonce seen before)")
	ErrOtherGateway = errors.New("command is for another gateway")
)

// Valid checks a parsed command for gateway at now (not the nonce: that is
// the gateway's state).
func (c Command) Valid(gateway string, now time.Time) error {
	if c.Gateway != gateway {
		return ErrOtherGateway
	}
	if !now.Before(c.Expires) {
		return ErrExpired
	}
	if c.Issued.After(now.Add(MaxSkew)) {
		return ErrNotYetValid
	}
	return nil
}

// Arg returns an argument, for rebootstrap also the legacy RotateKeys.
func (c Command) Arg(k string) string {
	if k == "rotate_keys" && c.RotateKeys {
		return "true"
	}
	return c.Args[k]
}

// Result statuses.
const (
	StatusOK      = "ok"
	StatusError   = "error"
	StatusRefused = "refused"
)

// Result reports how a gateway handled a command, or that it refused a
// message on its commands topic (then ID may be empty and Digest is the
// SHA-256 of what it refused, Count how many refusals it sums up).
type Result struct {
	ID      string            `json:"id,omitempty"`
	Gateway string            `json:"gateway,omitempty"`
	Name    string            `json:"name,omitempty"`
	Status  string            `json:"status"`
	Error   string            `json:"error,omitempty"`
	Output  map[string]string `json:"output,omitempty"`
	Digest  string            `json:"digest,omitempty"`
	Count   int               `json:"count,omitempty"`
	Time    time.Time         `json:"time"`
}

// ParseResult decodes a result strictly.
func ParseResult(b []byte) (Result, error) {
	var r Result
	if len(b) > MaxBytes {
		return r, fmt.Errorf("%w: result larger than %d bytes", ErrInvalid, MaxBytes)
	}
	d := json.NewDecoder(strings.NewReader(string(b)))
	d.DisallowUnknownFields()
	if err := d.Decode(&r); err != nil {
		return r, fmt.Errorf("%w: result: %v", ErrInvalid, err)
	}
	if d.More() {
		return r, fmt.Errorf("%w: result: data after the JSON object", ErrInvalid)
	}
	switch r.Status {
	case StatusOK, StatusError, StatusRefused:
	default:
		return r, fmt.Errorf("%w: result status %q", ErrInvalid, r.Status)
	}
	if len(r.ID) > 64 || len(r.Error) > 1024 || len(r.Output) > MaxArgs {
		return r, fmt.Errorf("%w: result field too long", ErrInvalid)
	}
	return r, nil
}
