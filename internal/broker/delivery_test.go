package broker

import (
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	pahov3 "github.com/eclipse/paho.mqtt.golang"
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
