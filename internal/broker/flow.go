package broker

import (
	"context"
	"sync"
	"sync/atomic"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
)

// Flow-control bounds. mochi keeps, per client, an outbound write queue
// (MaximumClientWritesPending) and a map of unacknowledged QoS 1/2
// messages (MaximumInflight, which is also an offline session's queue).
// When either is full it drops the message for that client, after the
// publisher already got its PUBACK. flow keeps live subscribers below both.
const (
	// writeQueue is mochi's per-client outbound queue (a channel of
	// pointers: 8 KiB per connection, mochi's default 8192 costs 64 KiB).
	// Backpressure keeps QoS 1/2 traffic well below it, so it only needs
	// to absorb bursts of QoS 0.
	writeQueue = 1024
	// liveWindow is how many QoS 1/2 messages a live subscriber may have
	// unacknowledged (queued for writing or written) before publishers to
	// it wait. Below writeQueue, with room for QoS 0 and for publishers
	// that pass the check at the same moment.
	liveWindow = writeQueue / 2
	// resumeBelow: waiting publishers resume once the subscriber is back
	// below this, so they do not wake one by one.
	resumeBelow = liveWindow / 2
	// stallAfter bounds a publisher's wait for one subscriber. A
	// subscriber that acknowledges nothing for this long is marked
	// stalled: publishers stop waiting for it (one stuck client must not
	// halt every publisher) until it drains below resumeBelow, and what
	// overflows its queues is dropped and counted.
	stallAfter = 5 * time.Second
	// recheck is a fallback poll while waiting; wake-ups come from the
	// subscriber's acknowledgements.
	recheck = 50 * time.Millisecond
	// dropLogEvery rate-limits drop logs per client.
	dropLogEvery = time.Second
)

// flow applies backpressure from slow subscribers to publishers and counts
// every message mochi drops for a subscriber.
//
// For a QoS 1/2 publish, admit runs in the publisher's connection before
// mochi sends the PUBACK: for every live subscriber that would get the
// message at QoS > 0 and already has liveWindow unacknowledged messages,
// it waits until that subscriber acknowledges (or disconnects, or stalls).
// A PUBACK therefore means the message was handed to every subscriber
// session without exceeding mochi's bounds, except for sessions that are
// offline or stalled and whose queue (MaximumInflight) is full; those
// drops, and any outbound-queue overflow, are counted in
// fieldtrust_broker_dropped_total{reason} and logged with the identity.
type flow struct {
	mqtt.HookBase
	b           *Broker
	maxInflight int // mochi's MaximumInflight

	states  sync.Map     // *mqtt.Client → *flowState, for subscribers waited on or dropped for
	waiting atomic.Int64 // publishers waiting right now
}

type flowState struct {
	waiters atomic.Int32
	stalled atomic.Bool
	mu      sync.Mutex
	wake    chan struct{} // guarded by mu; closed to wake waiters
	// drop log rate limit
	lastLog    atomic.Int64 // unix nanoseconds
	suppressed atomic.Int64
}

func (f *flow) ID() string { return "fieldtrust-flow" }

func (f *flow) Provides(e byte) bool {
	switch e {
	case mqtt.OnQosComplete, mqtt.OnQosDropped, mqtt.OnDisconnect, mqtt.OnPublishDropped, mqtt.OnSelectSubscribers:
		return true
	}
	return false
}

func (f *flow) state(cl *mqtt.Client) *flowState {
	if v, ok := f.states.Load(cl); ok {
		return v.(*flowState)
	}
	v, _ := f.states.LoadOrStore(cl, &flowState{})
	return v.(*flowState)
}

// admit is called for every QoS 1/2 publish from a client, before its
// acknowledgement. It waits for subscribers' room (see flow), counts the
// deliveries mochi is about to drop, and reports whether a persistent
// session will queue the message (then the store logs it durably first).
func (f *flow) admit(pub *mqtt.Client, pk packets.Packet) (persistent bool) {
	srv := f.b.server
	subs := srv.Topics.Subscribers(pk.TopicName)
	for id, sub := range subs.Subscriptions {
		if cl, ok := srv.Clients.Get(id); ok {
			persistent = f.admitTo(pub, cl, sub, pk) || persistent
		}
	}
	for _, group := range subs.Shared {
		for id := range group {
			if cl, ok := srv.Clients.Get(id); ok && !ephemeral(cl) {
				persistent = true
			}
		}
		if cl, sub, ok := f.pickShared(group); ok {
			f.admitTo(pub, cl, sub, pk)
		}
	}
	return persistent
}

// admitTo handles one subscriber; it reports whether the subscriber's
// session is persistent and gets the message at QoS > 0.
func (f *flow) admitTo(pub, cl *mqtt.Client, sub packets.Subscription, pk packets.Packet) bool {
	if min(pk.FixedHeader.Qos, sub.Qos) == 0 || (sub.NoLocal && pk.Origin == cl.ID) {
		return false
	}
	if cl != pub && !cl.Closed() && cl.State.Inflight.Len() >= liveWindow {
		f.wait(cl)
	}
	if cl.State.Inflight.Len() >= f.maxInflight {
		f.dropped(cl, pk, "queue_full")
	}
	return !ephemeral(cl)
}

// wait blocks until cl is below liveWindow, disconnects, or stalls.
func (f *flow) wait(cl *mqtt.Client) {
	st := f.state(cl)
	if st.stalled.Load() {
		return
	}
	st.waiters.Add(1)
	f.waiting.Add(1)
	f.b.metrics.backpressure.WithLabelValues().Inc()
	defer func() {
		st.waiters.Add(-1)
		f.waiting.Add(-1)
	}()
	stall := time.NewTimer(stallAfter)
	defer stall.Stop()
	tick := time.NewTicker(recheck)
	defer tick.Stop()
	for {
		st.mu.Lock()
		if st.wake == nil {
			st.wake = make(chan struct{})
		}
		wake := st.wake
		st.mu.Unlock()
		if cl.State.Inflight.Len() < liveWindow || cl.Closed() || st.stalled.Load() {
			return
		}
		select {
		case <-wake:
		case <-tick.C:
		case <-stall.C:
			if !st.stalled.Swap(true) {
				subj, _ := f.b.access.subjectOf(cl)
				f.b.log.Warn("mqtt slow subscriber: publishers stop waiting for it", "identity", subj.String(),
					"client", rawClientID(cl.ID), "unacknowledged", cl.State.Inflight.Len(), "waited", stallAfter)
			}
			return
		}
	}
}

// release wakes publishers waiting for cl once it has room again.
func (f *flow) release(cl *mqtt.Client, force bool) {
	v, ok := f.states.Load(cl)
	if !ok {
		return
	}
	st := v.(*flowState)
	if st.waiters.Load() == 0 && !st.stalled.Load() && !force {
		return
	}
	if !force && cl.State.Inflight.Len() >= resumeBelow {
		return
	}
	st.stalled.Store(false)
	st.mu.Lock()
	if st.wake != nil {
		close(st.wake)
		st.wake = nil
	}
	st.mu.Unlock()
}

func (f *flow) OnQosComplete(cl *mqtt.Client, _ packets.Packet) { f.release(cl, false) }
func (f *flow) OnQosDropped(cl *mqtt.Client, _ packets.Packet)  { f.release(cl, false) }

func (f *flow) OnDisconnect(cl *mqtt.Client, _ error, _ bool) {
	f.release(cl, true)
	f.states.Delete(cl)
}

// OnPublishDropped is mochi's report of a full outbound queue: the message
// (any QoS) was not delivered to cl.
func (f *flow) OnPublishDropped(cl *mqtt.Client, pk packets.Packet) {
	f.dropped(cl, pk, "write_queue_full")
}

// OnSelectSubscribers picks, for each shared subscription group, the live
// member with the fewest unacknowledged messages (mochi picks an arbitrary
// one, offline or not).
func (f *flow) OnSelectSubscribers(subs *mqtt.Subscribers, _ packets.Packet) *mqtt.Subscribers {
	subs.SharedSelected = make(map[string]packets.Subscription, len(subs.Shared))
	for _, group := range subs.Shared {
		cl, sub, ok := f.pickShared(group)
		if !ok {
			continue
		}
		if prev, ok := subs.SharedSelected[cl.ID]; ok {
			sub = prev.Merge(sub)
		}
		subs.SharedSelected[cl.ID] = sub
	}
	return subs
}

func (f *flow) pickShared(group map[string]packets.Subscription) (*mqtt.Client, packets.Subscription, bool) {
	var best *mqtt.Client
	var bestSub packets.Subscription
	bestLoad := 0
	for id, sub := range group {
		cl, ok := f.b.server.Clients.Get(id)
		if !ok {
			continue
		}
		load := cl.State.Inflight.Len()
		if cl.Closed() {
			load += 1 << 20 // offline members only if nobody is live
		}
		if best == nil || load < bestLoad {
			best, bestSub, bestLoad = cl, sub, load
		}
	}
	return best, bestSub, best != nil
}

// dropped counts and logs (rate-limited per client) one message not
// delivered to cl.
func (f *flow) dropped(cl *mqtt.Client, pk packets.Packet, reason string) {
	f.b.metrics.dropped.WithLabelValues(reason).Inc()
	st := f.state(cl)
	now := time.Now().UnixNano()
	last := st.lastLog.Load()
	if now-last < int64(dropLogEvery) || !st.lastLog.CompareAndSwap(last, now) {
		st.suppressed.Add(1)
		return
	}
	subj, _ := f.b.access.subjectOf(cl)
	f.b.log.WarnContext(context.Background(), "mqtt message dropped", "reason", reason, "identity", subj.String(),
		"client", rawClientID(cl.ID), "topic", pk.TopicName, "qos", pk.FixedHeader.Qos,
		"unacknowledged", cl.State.Inflight.Len(), "offline", cl.Closed(), "suppressed_since_last_log", st.suppressed.Swap(0))
}
