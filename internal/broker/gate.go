package broker

import (
	"net"
	"sync"

	mqtt "github.com/mochi-mqtt/server/v2"
)

// sessionGate serialises, per mochi client ID, the end of one connection
// with the start of the next.
//
// mochi's attachClient, when a connection ends, runs the OnDisconnect
// hooks, then checks IsTakenOver() and, if not, unsubscribes the client
// and deletes its Clients entry — by ID. A new connection with the same
// ID that registers and subscribes between that check and that cleanup
// loses its subscription or its Clients entry, silently. (Our store's
// writes in OnDisconnect used to widen the window to milliseconds.)
//
// The gate closes the window: a connection holds its ID's gate from
// OnSessionEstablish (just before mochi inherits or replaces an existing
// session) until OnSessionEstablished, and an ending connection holds it
// from OnDisconnect until mochi's attachClient has returned (our listener
// reports that). So either the old connection's cleanup is complete
// before the new one looks for a session, or the new one has marked the
// old one taken over before its cleanup checks.
//
// Holding the gate never waits for another connection's progress, only
// for the other holder's own bounded steps (hook calls, writing CONNACK),
// so it cannot deadlock: the new connection does not wait for the old one
// to finish reading.
type sessionGate struct {
	mu    sync.Mutex
	ids   map[string]*gateEntry // guarded by mu
	holds sync.Map              // net.Conn → func() (release), one per connection at a time
}

type gateEntry struct {
	mu   sync.Mutex
	refs int // guarded by sessionGate.mu
}

func newSessionGate() *sessionGate { return &sessionGate{ids: map[string]*gateEntry{}} }

// acquire takes id's gate on behalf of conn, releasing first whatever conn
// held. Connections without a network conn (inline, restored) are not gated.
func (g *sessionGate) acquire(cl *mqtt.Client) {
	if cl.Net.Conn == nil || cl.Net.Inline {
		return
	}
	g.release(cl.Net.Conn)
	id := cl.ID
	g.mu.Lock()
	e := g.ids[id]
	if e == nil {
		e = &gateEntry{}
		g.ids[id] = e
	}
	e.refs++
	g.mu.Unlock()
	e.mu.Lock()
	g.holds.Store(cl.Net.Conn, func() {
		e.mu.Unlock()
		g.mu.Lock()
		if e.refs--; e.refs == 0 {
			delete(g.ids, id)
		}
		g.mu.Unlock()
	})
}

// release gives up what conn holds, if anything.
func (g *sessionGate) release(conn net.Conn) {
	if conn == nil {
		return
	}
	if v, ok := g.holds.LoadAndDelete(conn); ok {
		v.(func())()
	}
}
