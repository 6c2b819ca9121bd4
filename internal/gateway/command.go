package gateway

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/fieldtrust/fieldtrust/internal/command"
	"github.com/fieldtrust/fieldtrust/internal/envelope"
	"github.com/fieldtrust/fieldtrust/internal/pki"
	"github.com/fieldtrust/fieldtrust/internal/queue"
	"github.com/fieldtrust/fieldtrust/internal/topic"
)

type rebootstrapOrder struct {
	cmd command.Command
}

// lastCommandKey is the queue state key holding the signing time
// (time.Time.MarshalBinary) of the last command the gateway followed.
const lastCommandKey = "command/last"

// replayState is where the gateway keeps lastCommandKey: the queue's
// state, so replay protection survives restarts.
type replayState interface {
	State(key string) ([]byte, error)
	SetState(kv ...queue.KV) error
}

// handleCommand opens, verifies and dispatches a command. Replays are
// refused: a command's signing time must be later than the last one
// followed. Replay protection fails closed: if the last signing time
// cannot be read or decoded, or the new one cannot be recorded, the
// command is refused.
func (g *Gateway) handleCommand(payload []byte) {
	_, e2e := g.creds.current()
	cas := g.creds.cas()
	if len(cas) < 2 {
		g.log.Error("command refused: no e2e CA certificates to verify it with")
		return
	}
	v := pki.NewVerifier(pki.E2E, cas[0], cas[1], g.crl.revokedOf(pki.E2E))
	o, err := envelope.NewOpener(e2e.leaf(), e2e.key, envelope.OpenOptions{VerifyOptions: envelope.VerifyOptions{
		Signers:  envelope.NewCertPool(cas...),
		Verifier: v,
	}})
	if err != nil {
		g.log.Error("command refused", "err", err)
		return
	}
	opened, err := o.Open(context.Background(), payload)
	if err != nil {
		g.log.Warn("command refused: cannot open or verify it", "err", err)
		return
	}
	if opened.Signer != command.Signer {
		g.log.Warn("command refused: not signed by the platform", "signer", opened.Signer)
		return
	}
	lastT, err := g.lastCommand()
	if err != nil {
		g.log.Error("command refused: replay protection cannot tell whether it was followed before", "err", err)
		return
	}
	if !opened.SigningTime.After(lastT) {
		g.log.Warn("command refused: replayed or out of order", "signed", opened.SigningTime, "last", lastT)
		return
	}
	var cmd command.Command
	if err := json.Unmarshal(opened.Content, &cmd); err != nil {
		g.log.Warn("command refused: not JSON", "err", err)
		return
	}
	t, err := opened.SigningTime.MarshalBinary()
	if err != nil {
		g.log.Warn("command refused: its signing time cannot be recorded", "signed", opened.SigningTime, "err", err)
		return
	}
	if err := g.replay.SetState(queue.KV{Key: lastCommandKey, Value: t}); err != nil {
		g.log.Error("command refused: recording it for replay protection failed", "err", err)
		return
	}
	switch cmd.Type {
	case command.Rebootstrap:
		g.log.Info("re-bootstrap ordered by the platform", "id", cmd.ID, "rotate_keys", cmd.RotateKeys)
		select {
		case g.rebootstrap <- rebootstrapOrder{cmd: cmd}:
		default:
			g.log.Warn("a re-bootstrap is already pending", "id", cmd.ID)
		}
	default:
		g.log.Warn("command refused: unknown type", "type", cmd.Type, "id", cmd.ID)
	}
}

// lastCommand returns the signing time of the last command followed; zero
// if none ever was.
func (g *Gateway) lastCommand() (time.Time, error) {
	var t time.Time
	b, err := g.replay.State(lastCommandKey)
	if err != nil {
		return t, fmt.Errorf("read the last command's signing time: %w", err)
	}
	if b == nil {
		return t, nil
	}
	if err := t.UnmarshalBinary(b); err != nil {
		return t, fmt.Errorf("the last command's signing time in %s is damaged (%w): commands stay refused until it is restored from a backup or the gateway is enrolled again with a fresh state directory", filepath.Join(g.cfg.StateDir, "queue.db"), err)
	}
	return t, nil
}

// doRebootstrap rotates keys if asked, fetches the bootstrap document
// again and applies it; the caller then reconnects (possibly elsewhere).
func (g *Gateway) doRebootstrap(ctx context.Context, o rebootstrapOrder) error {
	if o.cmd.RotateKeys {
		if err := g.creds.enrollTransport(ctx, false); err != nil {
			return err
		}
		if err := g.creds.enrollE2E(ctx); err != nil {
			return err
		}
	}
	doc, err := g.creds.fetchBootstrap(ctx)
	if err != nil {
		return err
	}
	if doc.Identity != g.path {
		return fmt.Errorf("bootstrap document is for %q, not %q", doc.Identity, g.path)
	}
	if err := g.applyBootstrap(doc); err != nil {
		return err
	}
	g.mu.Lock()
	g.doc = doc
	g.mu.Unlock()
	g.log.Info("re-bootstrapped", "brokers", doc.Brokers, "rotated_keys", o.cmd.RotateKeys)
	return nil
}

func (g *Gateway) publishResult(c mqtt.Client, o rebootstrapOrder, err error) {
	res := command.Result{ID: o.cmd.ID, Status: "ok", Time: time.Now().UTC()}
	if err != nil {
		res.Status, res.Error = "error", err.Error()
	}
	b, _ := json.Marshal(res)
	if tok := c.Publish(topic.CommandResultsOf(g.path), 1, false, b); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		g.log.Warn("could not publish the command result", "id", o.cmd.ID, "err", errors.Join(tok.Error()))
	}
}
