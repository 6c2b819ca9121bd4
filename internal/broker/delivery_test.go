package broker

import (
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	pahov3 "github.com/eclipse/paho.mqtt.golang"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/fieldtrust/fieldtrust/internal/broker/packet"
)

// TestSlowSubscriberLosesNothing: a persistent-session QoS 1 subscriber that
// stops acknowledging must not lose any message whose publisher got a
// PUBACK. Before flow control, mochi queued at most 8192 unacknowledged
// messages per client and silently dropped the rest after acknowledging
// them to the publisher.
//
// The subscriber's handler blocks until either every publish is
// acknowledged (a broker without backpressure) or the broker reports a
// publisher waiting for this subscriber (backpressure); then it drains.
// Either way every acknowledged message must arrive, and nothing may be
// counted as dropped.
func TestSlowSubscriberLosesNothing(t *testing.T) {
	const (
		publishers = 4
		perPub     = 2600 // 10 400 in total: more than mochi's 8192 per-client quota
		total      = publishers * perPub
		topic      = "ms-acc-1/acc-1/dev-%d/snapshots"
	)
	e := newEnv(t)

	gate := make(chan struct{})
	var mu sync.Mutex
	got := make(map[string]bool, total)
	recv := make(chan struct{}, total*2)
	subOpts := e.v3Options(e.pki.identity("ms-acc-1/acc-1"), v3opts{clientID: "slow-sub", clean: false})
	subOpts.SetDefaultPublishHandler(func(_ pahov3.Client, m pahov3.Message) {
		<-gate
		mu.Lock()
		got[string(m.Payload())] = true
		mu.Unlock()
		recv <- struct{}{}
	})
	sub := pahov3.NewClient(subOpts)
	if tok := sub.Connect(); !tok.WaitTimeout(wait) || tok.Error() != nil {
		t.Fatalf("subscriber connect: %v", tok.Error())
	}
	t.Cleanup(func() { sub.Disconnect(0) })
	if tok := sub.Subscribe("ms-acc-1/acc-1/+/snapshots", 1, nil); !tok.WaitTimeout(wait) || tok.Error() != nil {
		t.Fatalf("subscribe: %v", tok.Error())
	}

	var acked atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, publishers)
	for i := range publishers {
		pub := e.v3(e.pki.identity(fmt.Sprintf("ms-acc-1/acc-1/dev-%d", i)), v3opts{clean: true})
		wg.Go(func() {
			// paho sends all of them without waiting; the broker decides
			// when to acknowledge.
			toks := make([]pahov3.Token, 0, perPub)
			for n := range perPub {
				toks = append(toks, pub.Publish(fmt.Sprintf(topic, i), 1, false, fmt.Sprintf("%d-%d", i, n)))
			}
			for _, tok := range toks {
				if !tok.WaitTimeout(2*wait) || tok.Error() != nil {
					errs <- fmt.Errorf("publisher %d: no PUBACK: %v", i, tok.Error())
					return
				}
				acked.Add(1)
			}
		})
	}
	// Open the gate once the broker holds publishers back, or once every
	// publish is acknowledged (polling here is not a threshold: it only
	// decides when the subscriber starts reading).
	go func() {
		defer close(gate)
		for acked.Load() < total && !backpressured(e) {
			time.Sleep(5 * time.Millisecond)
		}
	}()
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	for n := 0; n < total; n++ {
		select {
		case <-recv:
		case <-time.After(wait):
			mu.Lock()
			t.Fatalf("subscriber received %d of %d acknowledged messages (dropped_total=%v)", len(got), total, droppedTotal(t, e))
			mu.Unlock()
		}
	}
	mu.Lock()
	defer mu.Unlock()
	if len(got) != total {
		t.Fatalf("subscriber received %d distinct of %d", len(got), total)
	}
	if d := droppedTotal(t, e); d != 0 {
		t.Errorf("dropped_total = %v; want 0", d)
	}
}

// TestReconnectSameClientID: a client that reconnects with the same client
// ID right after a clean disconnect, and subscribes again, receives every
// message published after its SUBACK. The old connection's cleanup used to
// race the new connection and could remove its subscription.
func TestReconnectSameClientID(t *testing.T) {
	const (
		rounds = 50
		msgs   = 5
		topic  = "ms-acc-1/acc-1/dev-1/snapshots"
	)
	e := newEnv(t)
	pub := e.v3(e.pki.identity("ms-acc-1/acc-1/dev-1"), v3opts{clean: true})
	subCert := e.pki.identity("ms-acc-1/acc-1")
	recv := make(chan string, msgs*rounds)
	for r := range rounds {
		opts := e.v3Options(subCert, v3opts{clientID: "same-id", clean: true, recv: recv})
		sub := pahov3.NewClient(opts)
		if tok := sub.Connect(); !tok.WaitTimeout(wait) || tok.Error() != nil {
			t.Fatalf("round %d: connect: %v", r, tok.Error())
		}
		if tok := sub.Subscribe(topic, 1, nil); !tok.WaitTimeout(wait) || tok.Error() != nil {
			t.Fatalf("round %d: subscribe: %v", r, tok.Error())
		}
		for n := range msgs {
			if tok := pub.Publish(topic, 1, false, fmt.Sprintf("%d-%d", r, n)); !tok.WaitTimeout(wait) || tok.Error() != nil {
				t.Fatalf("round %d: publish: %v", r, tok.Error())
			}
		}
		for n := range msgs {
			want := fmt.Sprintf("%d-%d", r, n)
			select {
			case p := <-recv:
				if p != want {
					t.Fatalf("round %d: got %q; want %q", r, p, want)
				}
			case <-time.After(wait):
				t.Fatalf("round %d: message %s never arrived", r, want)
			}
		}
		sub.Disconnect(0) // DISCONNECT, then at once the next round
	}
}

// backpressured reports whether a publisher is waiting for a slow
// subscriber right now.
func backpressured(e *env) bool { return e.b.waitingPublish.Load() > 0 }

// droppedTotal sums fieldtrust_broker_dropped_total over its reasons.
func droppedTotal(t *testing.T, e *env) float64 {
	t.Helper()
	mfs, err := e.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	sum := 0.0
	for _, mf := range mfs {
		if mf.GetName() != "fieldtrust_broker_dropped_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			sum += m.GetCounter().GetValue()
		}
	}
	return sum
}

// TestWindowIsNotBacklog: messages a subscriber has been sent within its
// window (its Receive Maximum) and not yet acknowledged do not hold its
// publishers back, up to the session's in-flight credit; messages queued
// beyond the window do, and so do in-flight bytes beyond the credit. The
// ingest service acknowledges a batch of 256 sealed snapshots (≈ 3 MB)
// once the batch is stored: when unacknowledged deliveries counted
// against the 512 KiB backlog bound, every publisher waited for every
// batch, and ingest sat idle a quarter of the time (docs/benchmarks.md,
// "Sixth round"). Without the credit, a window of 512 large messages
// would fill the session's byte limit before any publisher waited, and
// the rest would be dropped.
func TestWindowIsNotBacklog(t *testing.T) {
	for _, tc := range []struct {
		name           string
		receiveMaximum uint16
		size, count    int
		wantWaits      bool
	}{
		// 800 KiB: above highWater, within the window and the credit.
		{"all within the window", 512, 8 << 10, 100, false},
		{"queued beyond a window of 4", 4, 8 << 10, 100, true},
		// 10 MiB in a window of 512: beyond the account's credit (and
		// beyond its 8 MiB per session, which must drop nothing).
		{"in flight beyond the credit", 512, 256 << 10, 40, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t)
			sub, _ := e.dialRaw(e.pki.identity("ms-acc-1/acc-1"), subConnect("sub", true, 0, tc.receiveMaximum, 0))
			if ack := sub.subscribe("ms-acc-1/acc-1/+/snapshots", 1, packet.Properties{}); ack.Reasons[0] != 1 {
				t.Fatalf("SUBACK %v", ack.Reasons)
			}
			// The subscriber reads everything sent to it (nothing stays
			// unwritten in the broker) and acknowledges nothing until
			// release is closed, then everything it got and gets.
			release := make(chan struct{})
			got := make(chan uint16, tc.count)
			readErr := make(chan error, 1)
			go func() {
				for range tc.count {
					p, err := sub.next()
					if err != nil {
						readErr <- err
						return
					}
					pub, ok := p.(*packet.Publish)
					if !ok {
						readErr <- fmt.Errorf("got %T; want PUBLISH", p)
						return
					}
					got <- pub.PacketID
				}
				readErr <- nil
			}()
			acked := make(chan struct{})
			go func() {
				defer close(acked)
				<-release
				for range tc.count {
					var pid uint16
					select {
					case pid = <-got:
					case <-time.After(wait):
						return // the reader reports what is missing
					}
					sub.send(packet.AppendAck(nil, packet.V5, &packet.Ack{Type: packet.PUBACK, PacketID: pid}))
				}
			}()
			// One publish at a time, so that the broker's unwritten output
			// (which does count) stays one message: what holds the
			// publisher back is what the subscriber has not acknowledged.
			pub := e.v3(e.pki.identity("ms-acc-1/acc-1/dev-1"), v3opts{clean: true})
			payload := make([]byte, tc.size)
			published := make(chan error, 1)
			go func() {
				for i := range tc.count {
					tok := pub.Publish("ms-acc-1/acc-1/dev-1/snapshots", 1, false, payload)
					if !tok.WaitTimeout(wait) || tok.Error() != nil {
						published <- fmt.Errorf("publish %d: no PUBACK: %v", i, tok.Error())
						return
					}
				}
				published <- nil
			}()
			if tc.wantWaits {
				eventually(func() bool { return backpressured(e) })
				if !backpressured(e) {
					t.Fatalf("no publisher waits with %d messages of %d bytes for a window of %d (received %d)", tc.count, tc.size, tc.receiveMaximum, len(got))
				}
				close(release)
				if err := <-published; err != nil {
					t.Fatal(err)
				}
			} else {
				if err := <-published; err != nil {
					t.Fatalf("%v, with %d unacknowledged within a window of %d", err, len(got), tc.receiveMaximum)
				}
				close(release)
			}
			if err := <-readErr; err != nil {
				t.Fatalf("subscriber: %v", err)
			}
			<-acked
			waits := testutil.ToFloat64(e.b.metrics.backpressure.WithLabelValues())
			if tc.wantWaits != (waits > 0) {
				t.Errorf("backpressure_waits_total = %v; want waits: %v", waits, tc.wantWaits)
			}
			if d := droppedTotal(t, e); d != 0 {
				t.Errorf("dropped_total = %v; want 0", d)
			}
		})
	}
}

// TestOneStallBoundPerPublish: a publish held back by several slow
// subscribers waits at most one stallAfter in all, then every one of them
// still above its bound is marked stalled. It used to wait stallAfter for
// each in turn: k stuck subscribers (k connections of one customer, say)
// held every publisher on their topics k × 5 s, the platform's CRL
// publication included (review of the in-flight credit).
func TestOneStallBoundPerPublish(t *testing.T) {
	const subscribers = 3
	timers := make(chan chan time.Time, 16)
	e := newEnvWith(t, func(c *Config) {
		c.StallTimer = func() <-chan time.Time {
			ch := make(chan time.Time, 1)
			timers <- ch
			return ch
		}
	})
	// Each subscriber reads what it is sent (nothing stays unwritten) and
	// acknowledges nothing: with a window of 4, the same messages queue
	// for all three, which cross highWater on the same publish.
	var subs []*session
	for i := range subscribers {
		cp := subConnect(fmt.Sprintf("stuck-%d", i), true, 0, 4, 0)
		r, _ := e.dialRaw(e.pki.identity("ms-acc-1/acc-1"), cp)
		if ack := r.subscribe("ms-acc-1/acc-1/+/snapshots", 1, packet.Properties{}); ack.Reasons[0] != 1 {
			t.Fatalf("SUBACK %v", ack.Reasons)
		}
		go r.readPublishes(func(*packet.Publish) {})
		subs = append(subs, sessionNamed(t, e, cp.ClientID))
	}
	pub := e.v3(e.pki.identity("ms-acc-1/acc-1/dev-1"), v3opts{clean: true})
	payload := make([]byte, 8<<10)
	published := make(chan error, 1)
	go func() {
		for i := range 200 { // 4 + 64 of 8 KiB cross highWater; the rest waits
			tok := pub.Publish("ms-acc-1/acc-1/dev-1/snapshots", 1, false, payload)
			if !tok.WaitTimeout(2*wait) || tok.Error() != nil {
				published <- fmt.Errorf("publish %d: no PUBACK: %v", i, tok.Error())
				return
			}
		}
		published <- nil
	}()
	var first chan time.Time
	select {
	case first = <-timers:
	case <-time.After(wait):
		t.Fatal("the publisher was never held back")
	}
	for _, s := range subs {
		s.mu.Lock()
		over := s.backlog() > highWater
		s.mu.Unlock()
		if !over {
			t.Fatalf("%s is not above highWater while the publisher waits", s.clientID)
		}
	}
	first <- time.Now() // stallAfter has passed
	until(t, "every slow subscriber marked stalled", func() bool {
		for _, s := range subs {
			s.mu.Lock()
			stalled := s.stalled
			s.mu.Unlock()
			if !stalled {
				return false
			}
		}
		return true
	})
	select {
	case err := <-published:
		if err != nil {
			t.Fatal(err)
		}
	case <-timers:
		t.Fatal("the publisher waits a second stallAfter for the same publish")
	case <-time.After(2 * wait):
		t.Fatal("the publisher still waits after stallAfter")
	}
}
