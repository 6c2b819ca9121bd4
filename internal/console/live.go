package console

import (
	"context"
	"encoding/json"
	"errors"
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
//
// Nobody watching costs nothing: the poller reads the store only while a
// stream is open. The first stream to open after an idle spell finds where
// the ledger ends (one cheap read), and the feed starts there: a stream
// shows what arrives after it opened, as it always did. Each snapshot's
// event is encoded once, however many streams get it, and only if one of
// them may read it.
type hub struct {
	c  *Console
	mu sync.Mutex
	// Guarded by mu.
	subs map[*stream]struct{}
	// next is the ledger index of the next snapshot to look for; it is
	// valid while synced, which the first stream after an idle spell sets
	// and the poller clears when it finds no stream.
	next   uint64
	synced bool
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
	return &hub{c: c, subs: map[*stream]struct{}{}}
}

// LedgerSizer tells the hub where the ledger ends when the first stream
// opens. Without it the feed starts at the beginning of the ledger.
type LedgerSizer interface {
	LedgerSize(ctx context.Context) (uint64, error)
}

func (h *hub) run(ctx context.Context) error {
	every := h.c.opts.PollEvery
	if every <= 0 {
		every = time.Second
	}
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

// pollBatch is how many snapshots one store read of the poller returns.
const pollBatch = 1000

// poll publishes what arrived since the last poll, if anyone watches.
func (h *hub) poll(ctx context.Context) error {
	for {
		h.mu.Lock()
		if len(h.subs) == 0 {
			h.synced = false
			h.mu.Unlock()
			return nil
		}
		from := h.next
		h.mu.Unlock()
		recs, err := h.c.opts.Store.SnapshotsSince(ctx, "", from, pollBatch)
		if err != nil {
			return err
		}
		for i := range recs {
			h.publishSnapshot(&recs[i])
		}
		if len(recs) > 0 {
			h.mu.Lock()
			h.next = recs[len(recs)-1].LedgerIndex + 1
			h.mu.Unlock()
		}
		if len(recs) < pollBatch {
			return nil
		}
	}
}

// publishSnapshot encodes r's event once, if a stream may read it, and
// hands it to those that may.
func (h *hub) publishSnapshot(r *store.SnapshotRecord) {
	h.mu.Lock()
	defer h.mu.Unlock()
	var e event
	for s := range h.subs {
		if !s.v.CanRead(r.Gateway) {
			continue
		}
		if e.data == nil {
			data, err := appendSnapshotEvent(nil, r)
			if err != nil {
				h.c.log.Warn("console live feed: snapshot left out", "gateway", r.Gateway, "device", r.Device, "seq", r.Seq, "err", err)
				return
			}
			e = event{kind: "snapshot", gateway: r.Gateway, data: data}
		}
		h.send(s, e)
	}
}

// statusChanged publishes a gateway's new online state.
func (h *hub) statusChanged(gw string, s GatewayStatus) {
	b, _ := json.Marshal(map[string]any{"gateway": gw, "online": s.Online, "since": s.Since})
	h.publish(event{kind: "status", gateway: gw, data: b})
}

// publish hands e to every stream whose viewer may read its gateway.
func (h *hub) publish(e event) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for s := range h.subs {
		if s.v.CanRead(e.gateway) {
			h.send(s, e)
		}
	}
}

// send hands e to s; a stream that does not keep up is closed (the
// browser reconnects). h.mu is held.
func (h *hub) send(s *stream, e event) {
	select {
	case s.ch <- e:
	default:
		delete(h.subs, s)
		close(s.ch)
	}
}

// add opens a stream for v. The first stream after an idle spell finds
// where the ledger ends, so the feed starts there.
func (h *hub) add(ctx context.Context, v *Viewer) (*stream, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if len(h.subs) >= maxStreams {
		return nil, errTooManyStreams
	}
	if !h.synced {
		h.next = 0
		if ls, ok := h.c.opts.Store.(LedgerSizer); ok {
			n, err := ls.LedgerSize(ctx)
			if err != nil {
				return nil, fmt.Errorf("console live feed: where the ledger ends: %w", err)
			}
			h.next = n
		}
		h.synced = true
	}
	s := &stream{v: v, ch: make(chan event, streamBuffer)}
	h.subs[s] = struct{}{}
	return s, nil
}

var errTooManyStreams = errors.New("too many live views open")

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
	s, err := h.add(r.Context(), v)
	if errors.Is(err, errTooManyStreams) {
		w.Header().Set("Retry-After", "10")
		http.Error(w, "too many live views open; try again shortly", http.StatusServiceUnavailable)
		return
	}
	if err != nil {
		h.c.log.Warn("console live feed: a stream could not start", "err", err)
		w.Header().Set("Retry-After", "3")
		http.Error(w, "the live view could not start; try again shortly", http.StatusServiceUnavailable)
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
