package gateway

import (
	"context"
	"crypto/x509"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/fieldtrust/fieldtrust/internal/envelope"
	"github.com/fieldtrust/fieldtrust/internal/queue"
	"github.com/fieldtrust/fieldtrust/internal/snapshot"
	"github.com/fieldtrust/fieldtrust/internal/topic"
)

// A queue item is a small header followed by the sealed envelope:
//
//	uvarint len(device) | device | uvarint seq | envelope (DER)
//
// The header is the gateway's own bookkeeping (it never leaves the
// gateway): it lets the gateway say which snapshot it dropped or sent
// without being able to open the envelope, which is sealed for others.
func encodeItem(device string, seq uint64, env []byte) []byte {
	b := binary.AppendUvarint(nil, uint64(len(device)))
	b = append(b, device...)
	b = binary.AppendUvarint(b, seq)
	return append(b, env...)
}

func decodeItem(b []byte) (device string, seq uint64, env []byte, err error) {
	n, k := binary.Uvarint(b)
	if k <= 0 || uint64(len(b)-k) < n {
		return "", 0, nil, errors.New("corrupt queue item")
	}
	device, b = string(b[k:k+int(n)]), b[k+int(n):]
	seq, k = binary.Uvarint(b)
	if k <= 0 {
		return "", 0, nil, errors.New("corrupt queue item")
	}
	return device, seq, b[k:], nil
}

// pipeline turns readings into sealed snapshots in the queue, and drains
// the queue to the broker.
type pipeline struct {
	topic string // topic.SnapshotsOf(path)
	q     *queue.Queue
	creds *credentials
	log   *slog.Logger

	recipients atomic.Pointer[[]*x509.Certificate] // from bootstrap; non-nil after setRecipients

	mu       sync.Mutex                   // serializes building: seq and prev must not race
	builders map[string]*snapshot.Builder // guarded by mu

	queued, sent, dropped atomic.Uint64
	wake                  chan struct{} // nudges the drainer; capacity 1
}

// errSignerExpired refuses a reading while the e2e certificate is expired:
// ingest verifies the signer at arrival and would refuse the snapshot, a
// gap in the device's chain for good; refused here, the reading's seq is
// not used up.
var errSignerExpired = errors.New("the e2e signing certificate is expired")

func newPipeline(path string, q *queue.Queue, creds *credentials, log *slog.Logger) *pipeline {
	return &pipeline{topic: topic.SnapshotsOf(path), q: q, creds: creds, log: log, builders: map[string]*snapshot.Builder{}, wake: make(chan struct{}, 1)}
}

func (p *pipeline) setRecipients(certs []*x509.Certificate) { p.recipients.Store(&certs) }

// submit seals one reading of a device and queues it durably. It returns
// once the snapshot is on disk.
func (p *pipeline) submit(device, deviceType string, at time.Time, values []snapshot.Value) error {
	rcpts := p.recipients.Load()
	_, e2e := p.creds.current()
	if rcpts == nil || e2e == nil {
		return errors.New("not bootstrapped yet; no recipients to seal for")
	}
	if e2e.expired(time.Now()) {
		return fmt.Errorf("reading of %s: %w (expired %s); it waits for the renewal", device, errSignerExpired, e2e.leaf().NotAfter.UTC().Format(time.RFC3339))
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	b, err := p.builder(device, deviceType)
	if err != nil {
		return err
	}
	prev := b.Head
	enc, s, err := b.Next(at.UnixMilli(), values)
	if err != nil {
		return fmt.Errorf("reading of %s: %w", device, err)
	}
	env, err := envelope.Seal(enc, envelope.SealOptions{
		Recipients: *rcpts,
		Signer:     &envelope.Signer{Cert: e2e.leaf(), Key: e2e.key, Chain: e2e.chain[1:]},
	})
	if err != nil {
		b.Head = prev
		return fmt.Errorf("seal snapshot %s/%d: %w", device, s.Seq, err)
	}
	head := make([]byte, 8, 40)
	binary.BigEndian.PutUint64(head, b.Head.Seq)
	head = append(head, b.Head.Hash[:]...)
	dropped, err := p.q.PutWithState(encodeItem(device, s.Seq, env), []queue.KV{{Key: "head/" + device, Value: head}})
	if err != nil {
		b.Head = prev
		p.dropped.Add(1)
		p.log.Error("queue full: snapshot refused; the device's next reading will retry", "device", device, "seq", s.Seq, "err", err)
		return err
	}
	for _, d := range dropped {
		dev, seq, _, _ := decodeItem(d.Data)
		p.dropped.Add(1)
		p.log.Error("queue full: dropped the oldest queued snapshot to make room", "device", dev, "seq", seq, "bytes", len(d.Data))
	}
	p.queued.Add(1)
	select {
	case p.wake <- struct{}{}:
	default:
	}
	return nil
}

// builder returns the device's chain builder, seeded from the head saved
// with its last queued snapshot.
func (p *pipeline) builder(device, deviceType string) (*snapshot.Builder, error) {
	if b, ok := p.builders[device]; ok {
		return b, nil
	}
	b := &snapshot.Builder{Device: device, DeviceType: deviceType}
	saved, err := p.q.State("head/" + device)
	if err != nil {
		return nil, err
	}
	if len(saved) == 40 {
		b.Head = &snapshot.Head{Seq: binary.BigEndian.Uint64(saved[:8])}
		copy(b.Head.Hash[:], saved[8:])
	}
	p.builders[device] = b
	return b, nil
}

// ackTimeout is how long the drainer waits for a PUBACK before it treats
// the connection as dead and reconnects (the snapshot stays queued).
const ackTimeout = 30 * time.Second

// drainBatch bounds how many snapshots are in flight to the broker at once.
const drainBatch = 64

// drain publishes queued snapshots in order, QoS 1, removing each only
// after the broker acknowledged it. It returns when ctx ends or a publish
// fails (the connection dropped); the caller reconnects and calls it again.
func (p *pipeline) drain(ctx context.Context, c mqtt.Client) error {
	idle := time.NewTicker(time.Second)
	defer idle.Stop()
	for {
		items, err := p.q.Peek(drainBatch)
		if err != nil {
			return err
		}
		if len(items) == 0 {
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-p.wake:
			case <-idle.C:
			}
			continue
		}
		tokens := make([]mqtt.Token, len(items))
		for i, it := range items {
			_, _, env, err := decodeItem(it.Data)
			if err != nil {
				p.log.Error("dropping a corrupt queue item", "id", it.ID, "err", err)
				p.q.Ack(it.ID)
				continue
			}
			tokens[i] = c.Publish(p.topic, 1, false, env)
		}
		var done []uint64
		for i, tok := range tokens {
			if tok == nil {
				continue
			}
			select {
			case <-tok.Done():
			case <-ctx.Done():
				p.q.Ack(done...)
				return ctx.Err()
			case <-time.After(ackTimeout):
				p.q.Ack(done...)
				return fmt.Errorf("publish: no acknowledgement within %v", ackTimeout)
			}
			if err := tok.Error(); err != nil {
				p.q.Ack(done...)
				return fmt.Errorf("publish: %w", err)
			}
			done = append(done, items[i].ID)
		}
		if err := p.q.Ack(done...); err != nil {
			return err
		}
		p.sent.Add(uint64(len(done)))
	}
}
