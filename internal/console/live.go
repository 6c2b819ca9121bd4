package console

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"sync"
	"time"

	"github.com/fieldtrust/fieldtrust/internal/store"
)

// hub is the live feed: one poller reads the snapshots the ledger recorded
// since it last looked (one indexed query per second, however many people
// watch) and hands each to the streams whose viewer may read its gateway
// (TACS, as every page). Gateway status changes arrive from the status
// watcher.
type hub struct {
	c    *Console
	mu   sync.Mutex
	subs map[*stream]struct{}
	next uint64 // the ledger index of the next snapshot to look for
	// ready is closed once the poller has found where the ledger is.
	ready chan struct{}
}

type stream struct {
	v  *Viewer
	ch chan event
}

type event struct {
	kind    string // snapshot, status
	gateway string
	data    []byte
}

// maxStreams bounds the open event streams; each costs a goroutine and a
// small buffer.
const (
	maxStreams   = 1000
	streamBuffer = 64
)

func newHub(c *Console) *hub {
	return &hub{c: c, subs: map[*stream]struct{}{}, ready: make(chan struct{})}
}

// LedgerSizer tells the hub where the ledger ends when it starts.
type LedgerSizer interface {
	LedgerSize(ctx context.Context) (uint64, error)
}

func (h *hub) run(ctx context.Context) error {
	every := h.c.opts.PollEvery
	if every <= 0 {
		every = time.Second
	}
	if ls, ok := h.c.opts.Store.(LedgerSizer); ok {
		n, err := ls.LedgerSize(ctx)
		if err != nil {
			return fmt.Errorf("console live feed: %w", err)
		}
		h.next = n
	}
	close(h.ready)
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		if err := h.poll(ctx); err != nil && ctx.Err() == nil {
			h.c.log.Warn("console live feed: poll failed", "err", err)
		}
	}
}

// poll publishes what arrived since the last poll.
func (h *hub) poll(ctx context.Context) error {
	for {
		recs, err := h.c.opts.Store.SnapshotsSince(ctx, "", h.next, 1000)
		if err != nil {
			return err
		}
		for _, r := range recs {
			h.publish(event{kind: "snapshot", gateway: r.Gateway, data: snapshotEvent(r)})
			h.next = r.LedgerIndex + 1
		}
		if len(recs) < 1000 {
			return nil
		}
	}
}

type liveValue struct {
	Channel string  `json:"c"`
	Value   float64 `json:"v"`
	Unit    string  `json:"u,omitempty"`
}

func snapshotEvent(r store.SnapshotRecord) []byte {
	vals := make([]liveValue, 0, len(r.Values))
	for _, v := range r.Values {
		vals = append(vals, liveValue{v.Channel, v.Value, v.Unit})
	}
	b, _ := json.Marshal(map[string]any{"path": r.Path(), "gateway": r.Gateway, "device": r.Device, "seq": r.Seq,
		"time": r.Time, "received": r.ReceivedAt, "ledger_index": r.LedgerIndex, "hash": hexHash(r.Hash), "values": vals})
	return b
}

// statusChanged publishes a gateway's new online state.
func (h *hub) statusChanged(gw string, s GatewayStatus) {
	b, _ := json.Marshal(map[string]any{"gateway": gw, "online": s.Online, "since": s.Since})
	h.publish(event{kind: "status", gateway: gw, data: b})
}

// publish hands e to every stream whose viewer may read its gateway. A
// stream that does not keep up is closed (the browser reconnects).
func (h *hub) publish(e event) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for s := range h.subs {
		if !s.v.CanRead(e.gateway) {
			continue
		}
		select {
		case s.ch <- e:
		default:
			delete(h.subs, s)
			close(s.ch)
		}
	}
}

func (h *hub) add(v *Viewer) (*stream, bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if len(h.subs) >= maxStreams {
		return nil, false
	}
	s := &stream{v: v, ch: make(chan event, streamBuffer)}
	h.subs[s] = struct{}{}
	return s, true
}

func (h *hub) remove(s *stream) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if _, ok := h.subs[s]; ok {
		delete(h.subs, s)
		close(s.ch)
	}
}

// revalidateEvery is how often an open stream checks that its session
// still exists: logging out everywhere or disabling the user ends it.
const revalidateEvery = 2 * time.Second

// serve is GET /events: Server-Sent Events of what the viewer may read.
func (h *hub) serve(w http.ResponseWriter, r *http.Request, v *Viewer) {
	rc := http.NewResponseController(w)
	s, ok := h.add(v)
	if !ok {
		w.Header().Set("Retry-After", "10")
		http.Error(w, "too many live views open; try again shortly", http.StatusServiceUnavailable)
		return
	}
	defer h.remove(s)
	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)
	fmt.Fprintf(w, "retry: 3000\n: live feed of %s\n\n", v.ScopeName())
	if err := rc.Flush(); err != nil {
		return
	}
	check := time.NewTicker(revalidateEvery)
	defer check.Stop()
	for {
		select {
		case <-r.Context().Done():
			return
		case <-check.C:
			if _, err := h.c.auth.viewer(r); err != nil {
				fmt.Fprint(w, "event: logout\ndata: {}\n\n")
				rc.Flush()
				return
			}
		case e, ok := <-s.ch:
			if !ok {
				return
			}
			fmt.Fprintf(w, "event: %s\ndata: %s\n\n", e.kind, e.data)
			if err := rc.Flush(); err != nil {
				return
			}
		}
	}
}
