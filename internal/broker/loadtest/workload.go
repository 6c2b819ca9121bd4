package loadtest

import (
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/fieldtrust/fieldtrust/internal/broker/packet"
)

// Workload is one publish→deliver run, identical for every broker.
//
// Publisher i connects as device identity ms-1/acc-1/dev-i and publishes
// to its own ms-1/acc-1/dev-i/snapshots; each subscriber connects as the
// account identity ms-1/acc-1 and subscribes to ms-1/acc-1/+/snapshots, so
// every message is delivered Subscribers times (the fan-out of an account
// with several consumers). With FanOut, one admin service publishes on
// FanOutTopic (as the platform publishes CRLs) and every subscriber is a
// device identity of its own. Clients are the harness's own (Client), MQTT
// 3.1.1 or 5 over mutual TLS.
type Workload struct {
	Publishers  int
	Subscribers int
	// Messages is what each publisher sends in the measured phase, after
	// Warmup messages that are delivered but not measured.
	Messages, Warmup int
	QoS              byte
	// Version is the MQTT version of every client: packet.V311 (default)
	// or packet.V5.
	Version byte
	// Persistent subscribers keep their sessions (clean session 0, or a
	// session expiry): for our broker every QoS 1/2 delivery is then
	// written to disk before the publisher's acknowledgement.
	Persistent bool
	// FanOut: one publisher (admin service), Subscribers device identities.
	FanOut bool
	// PayloadSize is the size of every message (about a sealed snapshot);
	// at least payloadHeader bytes.
	PayloadSize int
	// Window bounds each publisher's unacknowledged publishes (QoS 1/2: no
	// PUBACK/PUBCOMP yet; QoS 0: not yet flushed to the socket).
	Window int
	// Rate, if positive, paces the publishers to this many publishes per
	// second in total (open loop: latency is measured from the scheduled
	// send time, so a publisher that falls behind shows as latency);
	// zero publishes as fast as the window allows.
	Rate float64
	// Drain bounds the wait for outstanding deliveries after the last
	// publish; lost QoS 0 messages never arrive.
	Drain time.Duration
}

// FanOutTopic is what the fan-out publisher publishes on: every identity
// may read pki/crl/#, only a grant may write it (TACS rule 3).
const FanOutTopic = "pki/crl/bench"

// Result is what a run measured.
type Result struct {
	Broker    string
	Workload  Workload
	Published int // measured publishes
	Expected  int // Published × Subscribers
	Delivered int // measured deliveries (unique)
	Dupes     int // deliveries of a message the subscriber already had
	Elapsed   time.Duration
	// Throughput is delivered messages per second: Delivered over the time
	// from the first measured publish to the last measured delivery.
	Throughput         float64
	P50, P90, P99, Max time.Duration
	// WindowWaits: measured publishes that waited for an acknowledgement
	// (Client.WindowWaits); 0 means acknowledgement latency delayed none.
	WindowWaits int64
}

// Lost is the number of expected deliveries that never arrived.
func (r Result) Lost() int { return r.Expected - r.Delivered }

// payload layout: send time (ns since the run's epoch, monotonic clock),
// publisher index, sequence number, flags; the rest is filler.
const (
	payloadHeader = 17
	flagWarmup    = 1
)

func encodePayload(buf []byte, sent time.Duration, pub, seq int, flags byte) {
	binary.BigEndian.PutUint64(buf[0:], uint64(sent))
	binary.BigEndian.PutUint32(buf[8:], uint32(pub))
	binary.BigEndian.PutUint32(buf[12:], uint32(seq))
	buf[16] = flags
}

func decodePayload(buf []byte) (sent time.Duration, pub, seq int, flags byte, ok bool) {
	if len(buf) < payloadHeader {
		return 0, 0, 0, 0, false
	}
	return time.Duration(binary.BigEndian.Uint64(buf[0:])), int(binary.BigEndian.Uint32(buf[8:])),
		int(binary.BigEndian.Uint32(buf[12:])), buf[16], true
}

// runSeq makes client IDs unique per run, so one run's clients never meet
// the previous run's sessions. (Reusing a client ID right after a clean
// disconnect used to lose deliveries on our broker; that race is fixed and
// tested by internal/broker TestReconnectSameClientID.)
var runSeq atomic.Int64

// subscriber collects what one subscriber receives. Only its client's
// reader goroutine writes to it until the run is over.
type subscriber struct {
	client  *Client
	lat     []time.Duration
	seen    []uint64 // bitmap over pub*Messages+seq
	dupes   int
	last    time.Duration
	warm    atomic.Int64
	got     atomic.Int64
	invalid atomic.Int64
}

// Run executes w against the broker at addr. Identities come from p.
func (w Workload) Run(ctx context.Context, name, addr string, p *PKI) (Result, error) {
	if w.PayloadSize < payloadHeader {
		w.PayloadSize = payloadHeader
	}
	if w.Window <= 0 {
		w.Window = 1
	}
	if w.Drain <= 0 {
		w.Drain = 5 * time.Second
	}
	if w.FanOut {
		w.Publishers = 1
	}
	res := Result{Broker: name, Workload: w, Published: w.Publishers * w.Messages}
	res.Expected = res.Published * w.Subscribers
	run := runSeq.Add(1)
	epoch := time.Now()
	now := func() time.Duration { return time.Since(epoch) }
	total := w.Publishers * w.Messages

	subs := make([]*subscriber, w.Subscribers)
	defer func() {
		for _, s := range subs {
			if s != nil && s.client != nil {
				s.client.Close()
			}
		}
	}()
	filter := Account + "/+/snapshots"
	if w.FanOut {
		filter = FanOutTopic
	}
	for i := range subs {
		s := &subscriber{lat: make([]time.Duration, 0, total), seen: make([]uint64, (total+63)/64)}
		subs[i] = s
		handler := func(m *packet.Publish) { s.record(w, m, now()) }
		id := Account
		if w.FanOut {
			id = DevicePath(i)
		}
		cert, err := p.Identity(ctx, id)
		if err != nil {
			return res, err
		}
		o := ClientOptions{Version: w.Version, ClientID: fmt.Sprintf("r%d-sub-%d", run, i), Clean: !w.Persistent,
			SessionExpiry: 3600, Window: w.Window, OnPublish: handler}
		c, _, err := Dial(ctx, addr, p.ClientTLS(cert), o)
		if err != nil {
			return res, fmt.Errorf("subscriber %d: %w", i, err)
		}
		s.client = c
		code, err := c.Subscribe(filter, w.QoS)
		if err != nil || code >= 0x80 {
			return res, fmt.Errorf("subscriber %d: SUBACK 0x%02x: %v", i, code, err)
		}
	}

	pubs := make([]*Client, w.Publishers)
	defer func() {
		for _, c := range pubs {
			if c != nil {
				c.Close()
			}
		}
	}()
	for i := range pubs {
		var cert tls.Certificate
		var err error
		if w.FanOut {
			cert, err = p.Service(ctx, AdminService)
		} else {
			cert, err = p.Identity(ctx, DevicePath(i))
		}
		if err != nil {
			return res, err
		}
		o := ClientOptions{Version: w.Version, ClientID: fmt.Sprintf("r%d-pub-%d", run, i), Clean: true, Window: w.Window}
		if pubs[i], _, err = Dial(ctx, addr, p.ClientTLS(cert), o); err != nil {
			return res, fmt.Errorf("publisher %d: %w", i, err)
		}
	}

	// publishAll runs every publisher for n messages, paced if rate > 0.
	publishAll := func(n int, flags byte, rate float64) error {
		var wg sync.WaitGroup
		errs := make([]error, len(pubs))
		start := now()
		for i, c := range pubs {
			wg.Go(func() {
				errs[i] = w.publish(ctx, c, i, n, flags, rate, start, now)
			})
		}
		wg.Wait()
		return errors.Join(errs...)
	}

	// Warm-up: connections, TLS, the brokers' caches and our allocations.
	if w.Warmup > 0 {
		if err := publishAll(w.Warmup, flagWarmup, 0); err != nil {
			return res, fmt.Errorf("warm-up: %w", err)
		}
		want := int64(w.Warmup * w.Publishers)
		waitFor(ctx, w.Drain, func() bool {
			for _, s := range subs {
				if s.warm.Load() < want {
					return false
				}
			}
			return true
		})
	}

	var waits0 int64
	for _, c := range pubs {
		waits0 += c.WindowWaits()
	}
	start := now()
	if err := publishAll(w.Messages, 0, w.Rate); err != nil {
		return res, err
	}
	for _, c := range pubs {
		res.WindowWaits += c.WindowWaits()
	}
	res.WindowWaits -= waits0
	// Wait for every delivery, or until deliveries stop making progress
	// for Drain (lost QoS 0 messages).
	waitDeliveries(ctx, subs, res.Expected, w.Drain)
	for _, s := range subs {
		s.client.Close() // its reader has ended: s is ours to read now
		s.client = nil
	}

	var lat []time.Duration
	var end time.Duration
	for i, s := range subs {
		if n := s.invalid.Load(); n > 0 {
			return res, fmt.Errorf("subscriber %d received %d malformed messages", i, n)
		}
		lat = append(lat, s.lat...)
		res.Dupes += s.dupes
		end = max(end, s.last)
	}
	res.Delivered = len(lat)
	res.Elapsed = end - start
	if res.Elapsed > 0 {
		res.Throughput = float64(res.Delivered) / res.Elapsed.Seconds()
	}
	slices.Sort(lat)
	res.P50, res.P90, res.P99 = percentile(lat, 50), percentile(lat, 90), percentile(lat, 99)
	if len(lat) > 0 {
		res.Max = lat[len(lat)-1]
	}
	return res, ctx.Err()
}

// publish sends n messages from publisher i with at most w.Window
// outstanding.
func (w Workload) publish(ctx context.Context, c *Client, i, n int, flags byte, rate float64, start time.Duration, now func() time.Duration) error {
	topic := DevicePath(i) + "/snapshots"
	if w.FanOut {
		topic = FanOutTopic
	}
	var interval time.Duration
	if rate > 0 {
		interval = time.Duration(float64(time.Second) * float64(w.Publishers) / rate)
	}
	// Stagger paced publishers over one interval so they do not fire in
	// lockstep.
	offset := time.Duration(0)
	if w.Publishers > 0 {
		offset = interval * time.Duration(i) / time.Duration(w.Publishers)
	}
	buf := make([]byte, w.PayloadSize) // the client copies it into its buffer
	for seq := range n {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		sent := now()
		if interval > 0 {
			sent = start + offset + time.Duration(seq)*interval
			if d := sent - now(); d > 0 {
				time.Sleep(d)
			}
		}
		encodePayload(buf, sent, i, seq, flags)
		if err := c.Publish(topic, w.QoS, buf, interval > 0); err != nil {
			return fmt.Errorf("publisher %d: %w", i, err)
		}
	}
	return c.Drain(60 * time.Second)
}

// record counts one delivery to s (on its client's reader goroutine): its
// latency, or a duplicate, or a warm-up message, or a malformed one.
func (s *subscriber) record(w Workload, m *packet.Publish, at time.Duration) {
	sent, pub, seq, flags, ok := decodePayload(m.Payload)
	if !ok || pub >= w.Publishers || seq >= w.Messages {
		s.invalid.Add(1)
		return
	}
	if flags&flagWarmup != 0 {
		s.warm.Add(1)
		return
	}
	k := pub*w.Messages + seq
	if s.seen[k/64]&(1<<(k%64)) != 0 {
		s.dupes++
		return
	}
	s.seen[k/64] |= 1 << (k % 64)
	if s.lat != nil {
		s.lat = append(s.lat, at-sent)
	}
	s.last = at
	s.got.Add(1)
}

// waitDeliveries waits until the subscribers got expected deliveries, or
// until deliveries made no progress for drain (lost QoS 0 messages).
func waitDeliveries(ctx context.Context, subs []*subscriber, expected int, drain time.Duration) {
	var last int64
	lastProgress := time.Now()
	waitFor(ctx, time.Hour, func() bool {
		n := int64(0)
		for _, s := range subs {
			n += s.got.Load()
		}
		if n == int64(expected) {
			return true
		}
		if n != last {
			last, lastProgress = n, time.Now()
		}
		return time.Since(lastProgress) > drain
	})
}

func waitFor(ctx context.Context, limit time.Duration, done func() bool) {
	deadline := time.Now().Add(limit)
	for !done() && ctx.Err() == nil && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
}

// percentile returns the q-th percentile (nearest rank) of sorted values.
func percentile(sorted []time.Duration, q float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := int(q/100*float64(len(sorted))+0.5) - 1
	return sorted[min(max(i, 0), len(sorted)-1)]
}

// Restartable is a broker Resume can restart.
type Restartable interface {
	Address() string
	Restart(ctx context.Context, timeout time.Duration) error
}

// Resume measures persistent sessions across a broker restart: the
// subscribers (persistent sessions, QoS of w) subscribe and go offline,
// the publishers publish w.Messages each (acknowledged), the broker is
// restarted cleanly, and the subscribers reconnect. Delivered must equal
// Expected; Elapsed is from the first reconnect to the last message, and
// Throughput the queued messages delivered per second.
func (w Workload) Resume(ctx context.Context, name string, b Restartable, p *PKI) (Result, error) {
	if w.PayloadSize < payloadHeader {
		w.PayloadSize = payloadHeader
	}
	if w.Window <= 0 {
		w.Window = 1
	}
	if w.Drain <= 0 {
		w.Drain = 10 * time.Second
	}
	w.Persistent, w.Warmup = true, 0
	res := Result{Broker: name, Workload: w, Published: w.Publishers * w.Messages}
	res.Expected = res.Published * w.Subscribers
	run := runSeq.Add(1)
	epoch := time.Now()
	now := func() time.Duration { return time.Since(epoch) }
	total := w.Publishers * w.Messages
	acct, err := p.Identity(ctx, Account)
	if err != nil {
		return res, err
	}
	subs := make([]*subscriber, w.Subscribers)
	opts := func(i int, s *subscriber) ClientOptions {
		return ClientOptions{Version: w.Version, ClientID: fmt.Sprintf("r%d-resume-%d", run, i), Clean: false,
			SessionExpiry: 3600, Window: w.Window, OnPublish: func(m *packet.Publish) {
				if s != nil {
					s.record(w, m, now())
				}
			}}
	}
	for i := range subs {
		c, _, err := Dial(ctx, b.Address(), p.ClientTLS(acct), opts(i, nil))
		if err != nil {
			return res, fmt.Errorf("subscriber %d: %w", i, err)
		}
		if code, err := c.Subscribe(Account+"/+/snapshots", w.QoS); err != nil || code >= 0x80 {
			return res, fmt.Errorf("subscriber %d: SUBACK 0x%02x: %v", i, code, err)
		}
		c.Close()
	}
	var wg sync.WaitGroup
	errs := make([]error, w.Publishers)
	for i := range w.Publishers {
		wg.Go(func() {
			cert, err := p.Identity(ctx, DevicePath(i))
			if err != nil {
				errs[i] = err
				return
			}
			c, _, err := Dial(ctx, b.Address(), p.ClientTLS(cert), ClientOptions{Version: w.Version, ClientID: fmt.Sprintf("r%d-pub-%d", run, i), Clean: true, Window: w.Window})
			if err != nil {
				errs[i] = err
				return
			}
			defer c.Close()
			errs[i] = w.publish(ctx, c, i, w.Messages, 0, 0, 0, now)
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return res, err
	}
	if err := b.Restart(ctx, 60*time.Second); err != nil {
		return res, fmt.Errorf("restart: %w", err)
	}
	start := now()
	for i := range subs {
		s := &subscriber{seen: make([]uint64, (total+63)/64)}
		subs[i] = s
		c, ack, err := Dial(ctx, b.Address(), p.ClientTLS(acct), opts(i, s))
		if err != nil {
			return res, fmt.Errorf("subscriber %d after restart: %w", i, err)
		}
		s.client = c
		if !ack.SessionPresent {
			return res, fmt.Errorf("subscriber %d: no session after the restart", i)
		}
	}
	waitDeliveries(ctx, subs, res.Expected, w.Drain)
	var end time.Duration
	for _, s := range subs {
		s.client.Close()
		res.Delivered += int(s.got.Load())
		res.Dupes += s.dupes
		end = max(end, s.last)
	}
	res.Elapsed = end - start
	if res.Elapsed > 0 {
		res.Throughput = float64(res.Delivered) / res.Elapsed.Seconds()
	}
	res.P50, res.P90, res.P99, res.Max = res.Elapsed, res.Elapsed, res.Elapsed, res.Elapsed
	return res, ctx.Err()
}
