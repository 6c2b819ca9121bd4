package devicemsg

import (
	"context"
	"fmt"
	"time"

	"github.com/fieldtrust/fieldtrust/internal/command"
	"github.com/fieldtrust/fieldtrust/internal/envelope"
	"github.com/fieldtrust/fieldtrust/internal/store"
	"github.com/fieldtrust/fieldtrust/internal/tacs"
	"github.com/fieldtrust/fieldtrust/internal/topic"
)

// MayCommand is the one rule of who may have the platform sign and send
// a command to gateway gw: a service (account identities are refused:
// customers see what was sent, they do not order it) whose role may
// publish on the gateway's commands topic (TACS, as on MQTT: admin and
// device-manager by default). The API (POST .../commands) and the
// console's command form both ask it.
func MayCommand(g tacs.Grants, subj tacs.Subject, gw string) bool {
	return subj.IsService() && tacs.Authorize(g, subj, tacs.Publish, topic.CommandsOf(gw)).Allowed
}

// NewCommand builds a command for gateway gw valid for life from now
// (0: command.DefaultLifetime), with a fresh id and nonce, refusing a bad
// name or a lifetime beyond command.MaxLifetime (command.ErrInvalid).
func NewCommand(gw, name string, args map[string]string, life time.Duration, now time.Time) (command.Command, error) {
	if err := command.CheckName(name); err != nil {
		return command.Command{}, err
	}
	if life == 0 {
		life = command.DefaultLifetime
	}
	if life < time.Second || life > command.MaxLifetime {
		return command.Command{}, fmt.Errorf("%w: lifetime %s: want 1 s to %s", command.ErrInvalid, life, command.MaxLifetime)
	}
	if len(args) == 0 {
		args = nil
	}
	return command.Command{ID: NewID(), Type: name, Args: args, Gateway: gw, Issued: now, Expires: now.Add(life), Nonce: NewID() + NewID()}, nil
}

// OpenResult checks that a result record was signed by the gateway it
// came from (an e2e signature verified now) and decodes it.
func OpenResult(ctx context.Context, v envelope.SignerVerifier, m store.DeviceMessage) (command.Result, error) {
	opened, err := envelope.Verify(ctx, m.Body, envelope.VerifyOptions{Verifier: v})
	if err != nil {
		return command.Result{}, fmt.Errorf("result %s: %w", m.ID, err)
	}
	if opened.Signer != m.Gateway {
		return command.Result{}, fmt.Errorf("result %s: signed by %s, not by the gateway %s", m.ID, opened.Signer, m.Gateway)
	}
	return command.ParseResult(opened.Content)
}
