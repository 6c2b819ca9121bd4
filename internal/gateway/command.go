package gateway

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/fieldtrust/fieldtrust/internal/command"
	"github.com/fieldtrust/fieldtrust/internal/firmware"
	"github.com/fieldtrust/fieldtrust/internal/queue"
	"github.com/fieldtrust/fieldtrust/internal/topic"
)

// CommandHandler runs a command beyond the built-ins; its output goes
// into the signed result.
type CommandHandler func(ctx context.Context, cmd command.Command) (map[string]string, error)

// sessionOrder is a command that ends the MQTT session (re-bootstrap,
// reboot): the session loop runs it and reports the result.
type sessionOrder struct {
	cmd command.Command
}

// nonceKey is the queue state key holding the nonces of the commands the
// gateway followed, with their expiry (JSON object nonce -> Unix seconds):
// a nonce is remembered as long as its command could be replayed.
const nonceKey = "command/nonces"

// maxNonces bounds the remembered nonces. Commands live at most
// command.MaxLifetime; beyond this many live ones the gateway refuses
// commands rather than forget a nonce.
const maxNonces = 100_000

// replayState is where the gateway keeps nonces and its firmware job: the
// queue's state, so both survive restarts.
type replayState interface {
	State(key string) ([]byte, error)
	SetState(kv ...queue.KV) error
}

// handleCommand opens, verifies and runs a command. It is followed only if
// it is signed by an e2e service identity (an operator or a platform
// service), names this gateway, is within its validity and carries a
// nonce not seen before. Replay protection fails closed: if the nonces
// cannot be read, decoded or recorded, the command is refused. Every
// refusal is reported (within a budget) on commands/result.
func (g *Gateway) handleCommand(payload []byte) {
	opened, err := g.openSealed(payload)
	if err != nil {
		g.refuseCommand(payload, "cannot open or verify it: "+err.Error())
		return
	}
	if !strings.HasPrefix(opened.Signer, "service:") || opened.Signer == firmware.Signer {
		g.refuseCommand(payload, "not signed by an operator or platform service but by "+opened.Signer)
		return
	}
	cmd, err := command.Parse(opened.Content)
	if err != nil {
		g.refuseCommand(payload, err.Error())
		return
	}
	now := time.Now()
	if err := cmd.Valid(g.path, now); err != nil {
		g.refuseCommand(payload, err.Error())
		return
	}
	g.cmdMu.Lock()
	err = g.recordNonce(cmd, now)
	g.cmdMu.Unlock()
	if err != nil {
		if errors.Is(err, command.ErrReplayed) {
			g.refuseCommand(payload, err.Error())
		} else {
			g.log.Error("command refused: replay protection cannot tell whether it was followed before", "id", cmd.ID, "err", err)
		}
		return
	}
	g.log.Info("command", "id", cmd.ID, "name", cmd.Type, "by", opened.Signer)
	switch cmd.Type {
	case command.Rebootstrap, command.Reboot:
		select {
		case g.orders <- sessionOrder{cmd: cmd}:
		default:
			g.reportResult(cmd, nil, errors.New("another re-bootstrap or reboot is pending"))
		}
	default:
		go func() {
			out, err := g.runCommand(cmd)
			g.reportResult(cmd, out, err)
		}()
	}
}

// recordNonce refuses a nonce seen before and records the new one.
func (g *Gateway) recordNonce(cmd command.Command, now time.Time) error {
	nonces := map[string]int64{}
	b, err := g.replay.State(nonceKey)
	if err != nil {
		return fmt.Errorf("read the command nonces: %w", err)
	}
	if b != nil {
		if err := json.Unmarshal(b, &nonces); err != nil {
			return fmt.Errorf("the command nonces in %s are damaged (%w): commands stay refused until it is restored from a backup or the gateway is enrolled again with a fresh state directory", filepath.Join(g.cfg.StateDir, "queue.db"), err)
		}
	}
	if _, seen := nonces[cmd.Nonce]; seen {
		return command.ErrReplayed
	}
	for n, exp := range nonces {
		if exp < now.Unix() {
			delete(nonces, n)
		}
	}
	if len(nonces) >= maxNonces {
		return fmt.Errorf("%d live command nonces: refusing more until some expire", len(nonces))
	}
	nonces[cmd.Nonce] = cmd.Expires.Unix() + 1
	b, err = json.Marshal(nonces)
	if err != nil {
		return err
	}
	if err := g.replay.SetState(queue.KV{Key: nonceKey, Value: b}); err != nil {
		return fmt.Errorf("record the command's nonce: %w", err)
	}
	return nil
}

// runCommand runs a command that does not end the session.
func (g *Gateway) runCommand(cmd command.Command) (map[string]string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if h, ok := g.cfg.Commands[cmd.Type]; ok {
		return h(ctx, cmd)
	}
	switch cmd.Type {
	case command.Clean:
		n := g.cfg.Simulate
		g.log.Info("cleaning procedure", "devices", n)
		return map[string]string{"cleaned_devices": strconv.Itoa(n)}, nil
	case command.SetInterval:
		s, err := strconv.Atoi(cmd.Args["seconds"])
		if err != nil || s < 1 || s > 86400 {
			return nil, fmt.Errorf("set-interval needs seconds=N, 1 to 86400 (got %q)", cmd.Args["seconds"])
		}
		if err := g.setInterval(time.Duration(s) * time.Second); err != nil {
			return nil, err
		}
		return map[string]string{"interval_seconds": strconv.Itoa(s)}, nil
	}
	return nil, fmt.Errorf("unknown command %q", cmd.Type)
}

// intervalKey keeps the interval set by set-interval across restarts.
const intervalKey = "simulate/interval"

func (g *Gateway) setInterval(d time.Duration) error {
	if err := g.replay.SetState(queue.KV{Key: intervalKey, Value: []byte(d.String())}); err != nil {
		return fmt.Errorf("record the interval: %w", err)
	}
	select {
	case g.interval <- d:
	default:
		// The simulator is not running or has not taken the last one:
		// it reads the state when it starts.
	}
	return nil
}

// savedInterval is the interval set by set-interval, 0 if none.
func (g *Gateway) savedInterval() time.Duration {
	b, err := g.replay.State(intervalKey)
	if err != nil || b == nil {
		return 0
	}
	d, err := time.ParseDuration(string(b))
	if err != nil {
		return 0
	}
	return d
}

// doRebootstrap rotates keys if asked, fetches the bootstrap document
// again and applies it; the caller then reconnects (possibly elsewhere).
func (g *Gateway) doRebootstrap(ctx context.Context, o sessionOrder) error {
	rotate := o.cmd.Arg("rotate_keys") == "true"
	if rotate {
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
	g.log.Info("re-bootstrapped", "brokers", doc.Brokers, "rotated_keys", rotate)
	return nil
}

// reportResult publishes a command's signed result.
func (g *Gateway) reportResult(cmd command.Command, out map[string]string, err error) {
	res := command.Result{ID: cmd.ID, Gateway: g.path, Name: cmd.Type, Status: command.StatusOK, Output: out, Time: time.Now().UTC()}
	if err != nil {
		res.Status, res.Error = command.StatusError, err.Error()
	}
	if g.cfg.hooks.result != nil {
		g.cfg.hooks.result(res)
	}
	if perr := g.publishSigned(topic.CommandResultsOf(g.path), res); perr != nil {
		g.log.Warn("could not publish the command result", "id", cmd.ID, "err", perr)
	}
}

func (g *Gateway) refuseCommand(payload []byte, reason string) {
	if g.cfg.hooks.result != nil {
		g.cfg.hooks.result(command.Result{Status: command.StatusRefused, Error: reason})
	}
	g.refusals.refuse(g, topic.CommandResultsOf(g.path), payload, reason)
}

// refusalReport is the report of a refused message for the topic it goes
// to.
func (g *Gateway) refusalReport(report, reason, digest string, count int) any {
	now := time.Now().UTC()
	if report == topic.FirmwareStatusOf(g.path) {
		return firmware.Status{Refused: true, Reason: reason, Digest: digest, Count: count, Time: now}
	}
	return command.Result{Gateway: g.path, Status: command.StatusRefused, Error: reason, Digest: digest, Count: count, Time: now}
}
