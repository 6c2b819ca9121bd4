package gateway

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"strings"
	"sync/atomic"
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
// credential and CA certificates from a real e2e PKI, an operator's
// command signer from the same PKI, and a real queue for its state.
type commandFixture struct {
	g       *Gateway
	state   *failingState
	signer  *credential
	gwE2E   *credential
	e2e     *pki.Authority
	results chan command.Result
	sent    chan []byte // what the gateway published
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
	f := &commandFixture{state: st, signer: issueCred(t, e2e, pki.LeafRequest{Service: "operator"}), gwE2E: gw, e2e: e2e,
		results: make(chan command.Result, 100), sent: make(chan []byte, 100)}
	f.g = &Gateway{cfg: Config{StateDir: t.TempDir(), hooks: testHooks{result: func(r command.Result) { f.results <- r }}},
		log: slog.New(slog.DiscardHandler), creds: creds, q: q, replay: st,
		crl: newCRLState(creds, slog.New(slog.DiscardHandler)), path: "ms-1/acc-1/gw-1", orders: make(chan sessionOrder, 1), interval: make(chan time.Duration, 1)}
	pub := func(_ string, b []byte) error { f.sent <- b; return nil }
	f.g.publisher.Store(&pub)
	return f
}

// command is a valid command for the fixture's gateway.
func (f *commandFixture) command(name string) command.Command {
	now := time.Now()
	return command.Command{ID: newTestID(), Type: name, Gateway: "ms-1/acc-1/gw-1", Issued: now, Expires: now.Add(time.Hour), Nonce: newTestID() + newTestID()}
}

// seal signs content by signer and seals it for the gateway.
func (f *commandFixture) sealBy(t *testing.T, signer *credential, content []byte) []byte {
	t.Helper()
	env, err := envelope.Seal(content, envelope.SealOptions{
		Recipients: []*x509.Certificate{f.gwE2E.leaf()},
		Signer:     &envelope.Signer{Cert: signer.leaf(), Key: signer.key, Chain: signer.chain[1:], EmbedCerts: true},
	})
	if err != nil {
		t.Fatal(err)
	}
	return env
}

func (f *commandFixture) seal(t *testing.T, c command.Command) []byte {
	t.Helper()
	b, _ := json.Marshal(c)
	return f.sealBy(t, f.signer, b)
}

// outcome is the result the gateway reported for the last command.
func (f *commandFixture) outcome(t *testing.T) command.Result {
	t.Helper()
	select {
	case r := <-f.results:
		return r
	case <-time.After(10 * time.Second):
		t.Fatal("no result reported")
	}
	return command.Result{}
}

func (f *commandFixture) noOutcome(t *testing.T) {
	t.Helper()
	select {
	case r := <-f.results:
		t.Fatalf("unexpected result %+v", r)
	default:
	}
}

// followed reports the session order the gateway queued, if any.
func (f *commandFixture) followed() (string, bool) {
	select {
	case o := <-f.g.orders:
		return o.cmd.ID, true
	default:
		return "", false
	}
}

var testIDs atomic.Uint64

func newTestID() string { return fmt.Sprintf("%016x", testIDs.Add(1)) }

// TestCommandReplayFailsClosed: a command is followed once; its replay is
// refused; and when the replay state cannot be read, is damaged, or cannot
// be written, every command is refused rather than followed without
// replay protection.
func TestCommandReplayFailsClosed(t *testing.T) {
	tests := []struct {
		name  string
		setup func(t *testing.T, f *commandFixture)
		first bool // the first command is followed
	}{
		{"healthy state", func(*testing.T, *commandFixture) {}, true},
		{"state unreadable", func(_ *testing.T, f *commandFixture) { f.state.failRead = true }, false},
		{"state damaged", func(t *testing.T, f *commandFixture) {
			if err := f.state.Queue.SetState(queue.KV{Key: nonceKey, Value: []byte("garbage")}); err != nil {
				t.Fatal(err)
			}
		}, false},
		{"state unwritable", func(_ *testing.T, f *commandFixture) { f.state.failWrite = true }, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newCommandFixture(t)
			c := f.command(command.Rebootstrap)
			first := f.seal(t, c)
			tt.setup(t, f)
			f.g.handleCommand(first)
			id, ok := f.followed()
			if ok != tt.first {
				t.Fatalf("first command followed = %v (%q), want %v", ok, id, tt.first)
			}
			if !tt.first {
				return
			}
			// The same envelope again, and the same command re-sealed,
			// are replays.
			f.g.handleCommand(first)
			f.g.handleCommand(f.seal(t, c))
			if id, ok := f.followed(); ok {
				t.Fatalf("replayed command %q followed", id)
			}
			for range 2 {
				if r := f.outcome(t); r.Status != command.StatusRefused || !strings.Contains(r.Error, "replayed") {
					t.Fatalf("replay reported as %+v", r)
				}
			}
			// Another command is followed, also after the nonces are
			// reread from the queue (as after a restart).
			next := f.command(command.Rebootstrap)
			f.g.handleCommand(f.seal(t, next))
			if id, ok := f.followed(); !ok || id != next.ID {
				t.Fatalf("next command: followed %q, %v", id, ok)
			}
			f.g.handleCommand(first)
			if id, ok := f.followed(); ok {
				t.Fatalf("the first command, replayed after another, was followed as %q", id)
			}
		})
	}
}

// TestCommandRefusals: every command that is not signed by an operator or
// platform service, not for this gateway, out of its validity or
// malformed is refused, not followed, and reported.
func TestCommandRefusals(t *testing.T) {
	f := newCommandFixture(t)
	other := issueCred(t, f.e2e, pki.LeafRequest{Path: pki.Path{"ms-1", "acc-1", "gw-2"}})
	customer := issueCred(t, f.e2e, pki.LeafRequest{Path: pki.Path{"ms-1", "acc-1"}})
	fwService := issueCred(t, f.e2e, pki.LeafRequest{Service: "firmware"})
	foreign := issueCred(t, testAuthorityOf(t, pki.E2E), pki.LeafRequest{Service: "operator"})
	js := func(c command.Command) []byte { b, _ := json.Marshal(c); return b }
	mod := func(m func(*command.Command)) command.Command { c := f.command(command.Reboot); m(&c); return c }
	for _, tc := range []struct {
		name, want string
		env        func() []byte
	}{
		{"garbage", "cannot open", func() []byte { return []byte("not an envelope") }},
		{"sealed for another gateway", "cannot open", func() []byte {
			env, _ := envelope.Seal(js(f.command(command.Reboot)), envelope.SealOptions{Recipients: []*x509.Certificate{other.leaf()},
				Signer: &envelope.Signer{Cert: f.signer.leaf(), Key: f.signer.key, Chain: f.signer.chain[1:], EmbedCerts: true}})
			return env
		}},
		{"unsigned", "cannot open", func() []byte {
			env, _ := envelope.Seal(js(f.command(command.Reboot)), envelope.SealOptions{Recipients: []*x509.Certificate{f.gwE2E.leaf()}})
			return env
		}},
		{"signed by another PKI", "cannot open", func() []byte { return f.sealBy(t, foreign, js(f.command(command.Reboot))) }},
		{"signed by a gateway", "not signed by an operator", func() []byte { return f.sealBy(t, other, js(f.command(command.Reboot))) }},
		{"signed by the customer", "not signed by an operator", func() []byte { return f.sealBy(t, customer, js(f.command(command.Reboot))) }},
		{"signed by the firmware service", "not signed by an operator", func() []byte { return f.sealBy(t, fwService, js(f.command(command.Reboot))) }},
		{"for another gateway", "another gateway", func() []byte { return f.seal(t, mod(func(c *command.Command) { c.Gateway = "ms-1/acc-1/gw-2" })) }},
		{"expired", "expired", func() []byte {
			return f.seal(t, mod(func(c *command.Command) {
				c.Issued, c.Expires = time.Now().Add(-2*time.Hour), time.Now().Add(-time.Hour)
			}))
		}},
		{"from the future", "future", func() []byte {
			return f.seal(t, mod(func(c *command.Command) { c.Issued, c.Expires = time.Now().Add(time.Hour), time.Now().Add(2*time.Hour) }))
		}},
		{"valid too long", "remembers nonces", func() []byte {
			return f.seal(t, mod(func(c *command.Command) { c.Expires = c.Issued.Add(command.MaxLifetime + time.Second) }))
		}},
		{"no nonce", "nonce", func() []byte { return f.seal(t, mod(func(c *command.Command) { c.Nonce = "" })) }},
		{"bad name", "name", func() []byte { return f.seal(t, mod(func(c *command.Command) { c.Type = "Reboot; rm -rf" })) }},
		{"unknown field", "unknown field", func() []byte {
			b := js(f.command(command.Reboot))
			return f.sealBy(t, f.signer, append(b[:len(b)-1], []byte(`,"sudo":true}`)...))
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f.g.refusals = refusals{} // a fresh report budget
			f.g.handleCommand(tc.env())
			if id, ok := f.followed(); ok {
				t.Fatalf("followed %q", id)
			}
			if r := f.outcome(t); r.Status != command.StatusRefused || !strings.Contains(r.Error, tc.want) {
				t.Fatalf("got %+v, want a refusal naming %q", r, tc.want)
			}
			select {
			case <-f.sent:
			case <-time.After(10 * time.Second):
				t.Fatal("the refusal was not reported")
			}
		})
	}
}

// TestCommandBuiltins: clean, set-interval, an unknown command and a
// registered handler report signed results; set-interval survives a
// restart.
func TestCommandBuiltins(t *testing.T) {
	f := newCommandFixture(t)
	f.g.cfg.Simulate = 3
	f.g.cfg.Commands = map[string]CommandHandler{"flush": func(_ context.Context, c command.Command) (map[string]string, error) {
		return map[string]string{"flushed": c.Args["what"]}, nil
	}}
	run := func(c command.Command) command.Result {
		f.g.handleCommand(f.seal(t, c))
		r := f.outcome(t)
		if r.ID != c.ID {
			t.Fatalf("result for %q, want %q", r.ID, c.ID)
		}
		return r
	}
	if r := run(f.command(command.Clean)); r.Status != command.StatusOK || r.Output["cleaned_devices"] != "3" {
		t.Fatalf("clean: %+v", r)
	}
	si := f.command(command.SetInterval)
	si.Args = map[string]string{"seconds": "30"}
	if r := run(si); r.Status != command.StatusOK {
		t.Fatalf("set-interval: %+v", r)
	}
	if d := <-f.g.interval; d != 30*time.Second || f.g.savedInterval() != 30*time.Second {
		t.Fatalf("interval %v, saved %v", d, f.g.savedInterval())
	}
	bad := f.command(command.SetInterval)
	bad.Args = map[string]string{"seconds": "0"}
	if r := run(bad); r.Status != command.StatusError {
		t.Fatalf("set-interval 0: %+v", r)
	}
	if r := run(f.command("self-destruct")); r.Status != command.StatusError || !strings.Contains(r.Error, "unknown command") {
		t.Fatalf("unknown: %+v", r)
	}
	fl := f.command("flush")
	fl.Args = map[string]string{"what": "cache"}
	if r := run(fl); r.Status != command.StatusOK || r.Output["flushed"] != "cache" {
		t.Fatalf("registered handler: %+v", r)
	}
	// Results are signed by the gateway.
	for len(f.sent) > 0 {
		b := <-f.sent
		got, err := envelope.Verify(context.Background(), b, envelope.VerifyOptions{Verifier: pki.NewVerifier(pki.E2E, f.e2e.Root(), f.e2e.ServicesCA(), nil)})
		if err != nil || got.Signer != "ms-1/acc-1/gw-1" {
			t.Fatalf("result not signed by the gateway: %v %v", got, err)
		}
	}
}

// TestRefusalBudget: a flood of forged commands yields a bounded number
// of reports, the later ones summing up the rest.
func TestRefusalBudget(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	r := refusals{now: func() time.Time { return now }}
	reports, total := 0, 0
	for range 1000 {
		if n := r.allow("t"); n > 0 {
			reports++
			total += n
		}
	}
	if reports != refusalBurst || total != refusalBurst {
		t.Fatalf("%d reports for %d refusals in a burst", reports, total)
	}
	now = now.Add(refusalEvery)
	if n := r.allow("t"); n != 1000-refusalBurst+1 {
		t.Fatalf("the report after the pause sums up %d refusals", n)
	}
}
