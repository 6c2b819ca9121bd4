package broker

import (
	"fmt"
	"sync/atomic"
	"testing"

	"github.com/fieldtrust/fieldtrust/internal/broker/packet"
)

// TestCreditWithinIdentityLimit: the in-flight credit is per session (an
// eighth of the session's byte limit), the drop limit also per identity
// (QueuedBytes, 16 MiB for an account, two sessions' worth). An account
// with one offline persistent session holding its 8 MiB and 8 live
// sessions that read everything and acknowledge nothing yet (within their
// window) has 8 MiB left for 8 credits of 1 MiB: its live subscribers
// lose PUBACKed messages before any publisher waits for them, and so
// before stallAfter marks them stalled. Before the credit (63a91bd) the
// publisher waited at 512 KiB per session and nothing was dropped.
func TestCreditWithinIdentityLimit(t *testing.T) {
	for _, tc := range []struct {
		name       string
		size, fill int // message size; messages that fill the offline session
	}{
		{"64 KiB", 64 << 10, 127},
		{"1000 KiB", 1000 << 10, 8},
	} {
		t.Run(tc.name, func(t *testing.T) { creditWithinIdentityLimit(t, tc.size, tc.fill) })
	}
}

func creditWithinIdentityLimit(t *testing.T, size, fill int) {
	e := newEnv(t)
	acc := e.pki.identity("ms-acc-1/acc-1")

	// One persistent session of the account, offline, filled to just
	// under its 8 MiB by dev-2.
	off, _ := e.dialRaw(acc, subConnect("off", true, 3600, 0, 0))
	off.subscribe("ms-acc-1/acc-1/dev-2/snapshots", 1, packet.Properties{})
	off.send(packet.AppendDisconnect(nil, packet.V5, &packet.Disconnect{}))
	off.expectClosed(0)
	dev2, _ := e.dialRaw(e.pki.identity("ms-acc-1/acc-1/dev-2"), packet.Connect{Version: packet.V5, CleanStart: true, KeepAlive: 60})
	for range fill {
		dev2.publish("ms-acc-1/acc-1/dev-2/snapshots", 1, false, make([]byte, size), packet.Properties{})
		if a := expect[packet.Ack](dev2); a.Reason != 0 {
			t.Fatalf("PUBACK 0x%02x", a.Reason)
		}
	}
	if d := droppedTotal(t, e); d != 0 {
		t.Fatalf("setup dropped %v", d)
	}

	// 8 live sessions (the account's connection limit) read everything
	// and acknowledge nothing (yet): all within their window of 512.
	var received atomic.Int64
	for i := range 8 {
		r, _ := e.dialRaw(acc, packet.Connect{Version: packet.V5, ClientID: fmt.Sprintf("live-%d", i), CleanStart: true, KeepAlive: 60})
		if a := r.subscribe("ms-acc-1/acc-1/dev-1/snapshots", 1, packet.Properties{}); a.Reasons[0] != 1 {
			t.Fatalf("SUBACK %v", a.Reasons)
		}
		go r.readPublishes(func(*packet.Publish) { received.Add(1) })
	}

	// One publisher, one message at a time, until it is held back.
	const max = 64 // 4 MiB per live session, beyond the credit either way
	pub, _ := e.dialRaw(e.pki.identity("ms-acc-1/acc-1/dev-1"), packet.Connect{Version: packet.V5, CleanStart: true, KeepAlive: 60})
	var acked atomic.Int64
	done := make(chan struct{})
	defer func() { _ = pub.conn.Close(); <-done }()
	go func() {
		defer close(done)
		for i := range max {
			b := packet.AppendPublish(nil, packet.V5, &packet.Publish{Topic: "ms-acc-1/acc-1/dev-1/snapshots", QoS: 1, PacketID: uint16(i + 1), Payload: make([]byte, size)})
			if _, err := pub.conn.Write(b); err != nil {
				return
			}
			p, err := pub.next()
			if err != nil {
				return
			}
			if a, ok := p.(*packet.Ack); !ok || a.Reason != 0 {
				return
			}
			acked.Add(1)
		}
	}()
	eventually(func() bool { return heldBack(e) || droppedTotal(t, e) > 0 || acked.Load() == max })
	dropped, waited := droppedTotal(t, e), heldBack(e)
	t.Logf("PUBACKed %d, received %d by 8 live subscribers, dropped %v, publisher held back %v", acked.Load(), received.Load(), dropped, waited)
	if dropped > 0 {
		e.b.mu.Lock()
		id := e.b.identities["ms-acc-1/acc-1"]
		e.b.mu.Unlock()
		t.Fatalf("%v messages PUBACKed to the publisher dropped for live subscribers that read everything, before any publisher waited (identity queued %d of %d)",
			dropped, id.queued.Load(), id.limits.QueuedBytes)
	}
	if !waited {
		t.Fatalf("publisher never held back after %d messages", acked.Load())
	}
}

// heldBack reports whether a publisher waits for a live session and
// stays waiting until the subscriber acknowledges or stalls: relieve
// wakes it only at lowWater, and without the unwritten output (which a
// reading subscriber takes at once) the backlog is still above it.
func heldBack(e *env) bool {
	e.b.mu.Lock()
	defer e.b.mu.Unlock()
	for _, s := range e.b.sessions {
		s.mu.Lock()
		held := s.conn != nil && s.drained != nil && s.backlog()-int64(s.conn.out.pending()) > lowWater
		s.mu.Unlock()
		if held {
			return true
		}
	}
	return false
}
