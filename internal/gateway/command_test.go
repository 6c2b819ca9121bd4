package gateway

import (
	"crypto/x509"
	"encoding/json"
	"errors"
	"log/slog"
	"path/filepath"
	"testing"
	"time"

	"github.com/fieldtrust/fieldtrust/internal/command"
	"github.com/fieldtrust/fieldtrust/internal/envelope"
	"github.com/fieldtrust/fieldtrust/internal/pki"
	"github.com/fieldtrust/fieldtrust/internal/queue"
)

// failingState is the gateway's real queue whose state reads or writes
// fail on demand, as a failing disk makes them.
type failingState struct {
	*queue.Queue
	failRead, failWrite bool
}

var errDisk = errors.New("input/output error")

func (f *failingState) State(k string) ([]byte, error) {
	if f.failRead {
		return nil, errDisk
	}
	return f.Queue.State(k)
}

func (f *failingState) SetState(kv ...queue.KV) error {
	if f.failWrite {
		return errDisk
	}
	return f.Queue.SetState(kv...)
}

// commandFixture is a gateway that can receive commands: its e2e
// credential and CA certificates from a real e2e PKI, the platform's
// command signer from the same PKI, and a real queue for its state.
type commandFixture struct {
	g      *Gateway
	state  *failingState
	signer *credential
	gwE2E  *credential
}

func newCommandFixture(t *testing.T) *commandFixture {
	t.Helper()
	e2e := testAuthorityOf(t, pki.E2E)
	gw := issueCred(t, e2e, pki.LeafRequest{Path: pki.Path{"ms-1", "acc-1", "gw-1"}})
	q, err := queue.Open(filepath.Join(t.TempDir(), "queue.db"), queue.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { q.Close() })
	creds := &credentials{transport: gw, e2e: gw, e2eCAs: []*x509.Certificate{e2e.Root(), e2e.ServicesCA()}}
	st := &failingState{Queue: q}
	g := &Gateway{cfg: Config{StateDir: t.TempDir()}, log: slog.New(slog.DiscardHandler), creds: creds, q: q, replay: st,
		crl: newCRLState(creds, slog.New(slog.DiscardHandler)), path: "ms-1/acc-1/gw-1", rebootstrap: make(chan rebootstrapOrder, 1)}
	return &commandFixture{g: g, state: st, signer: issueCred(t, e2e, pki.LeafRequest{Service: "platform"}), gwE2E: gw}
}

// seal signs a rebootstrap command as the platform at signing time at.
func (f *commandFixture) seal(t *testing.T, id string, at time.Time) []byte {
	t.Helper()
	content, _ := json.Marshal(command.Command{ID: id, Type: command.Rebootstrap})
	env, err := envelope.Seal(content, envelope.SealOptions{
		Recipients: []*x509.Certificate{f.gwE2E.leaf()},
		Signer:     &envelope.Signer{Cert: f.signer.leaf(), Key: f.signer.key, Chain: f.signer.chain[1:], EmbedCerts: true},
		Now:        func() time.Time { return at },
	})
	if err != nil {
		t.Fatal(err)
	}
	return env
}

// followed reports the command the gateway queued for execution, if any.
func (f *commandFixture) followed() (string, bool) {
	select {
	case o := <-f.g.rebootstrap:
		return o.cmd.ID, true
	default:
		return "", false
	}
}

// TestCommandReplayFailsClosed: a command is followed once; its replay is
// refused; and when the replay state cannot be read, is damaged, or cannot
// be written, every command is refused rather than followed without
// replay protection.
func TestCommandReplayFailsClosed(t *testing.T) {
	t0 := time.Now().Add(-time.Hour).Truncate(time.Second)
	tests := []struct {
		name  string
		setup func(t *testing.T, f *commandFixture)
		first bool // the first command (signed at t0) is followed
	}{
		{"healthy state", func(*testing.T, *commandFixture) {}, true},
		{"state unreadable", func(_ *testing.T, f *commandFixture) { f.state.failRead = true }, false},
		{"state damaged", func(t *testing.T, f *commandFixture) {
			if err := f.state.Queue.SetState(queue.KV{Key: lastCommandKey, Value: []byte("garbage")}); err != nil {
				t.Fatal(err)
			}
		}, false},
		{"state unwritable", func(_ *testing.T, f *commandFixture) { f.state.failWrite = true }, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newCommandFixture(t)
			first := f.seal(t, "first", t0)
			tt.setup(t, f)
			f.g.handleCommand(first)
			id, ok := f.followed()
			if ok != tt.first {
				t.Fatalf("first command followed = %v (%q), want %v", ok, id, tt.first)
			}
			if !tt.first {
				return
			}
			// The same envelope again, and an older command, are replays.
			f.g.handleCommand(first)
			f.g.handleCommand(f.seal(t, "older", t0.Add(-time.Second)))
			if id, ok := f.followed(); ok {
				t.Fatalf("replayed command %q followed", id)
			}
			// A newer one is followed, also after the replay state is
			// reread from the queue (as after a restart).
			f.g.handleCommand(f.seal(t, "newer", t0.Add(time.Second)))
			if id, ok := f.followed(); !ok || id != "newer" {
				t.Fatalf("newer command: followed %q, %v", id, ok)
			}
			f.g.handleCommand(first)
			if id, ok := f.followed(); ok {
				t.Fatalf("the first command, replayed after a newer one, was followed as %q", id)
			}
		})
	}
}
