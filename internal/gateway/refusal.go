package gateway

import (
	"sync"
	"time"
)

// refusals reports messages the gateway ignored (forged or unreadable
// commands and notices) without amplifying a flood: per topic a burst of
// refusalBurst reports, then one per refusalEvery, each summing up the
// refusals since the last (Count); the log follows the same budget.
type refusals struct {
	mu      sync.Mutex
	tokens  map[string]float64
	last    map[string]time.Time
	pending map[string]int
	now     func() time.Time
}

const (
	refusalBurst = 5
	refusalEvery = 10 * time.Second
)

// allow takes a report from topic t's budget; it returns how many
// refusals the report stands for, 0 if it must wait.
func (r *refusals) allow(t string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.tokens == nil {
		r.tokens, r.last, r.pending = map[string]float64{}, map[string]time.Time{}, map[string]int{}
	}
	now := time.Now()
	if r.now != nil {
		now = r.now()
	}
	tok, seen := r.tokens[t]
	if !seen {
		tok = refusalBurst
	} else {
		tok = min(refusalBurst, tok+now.Sub(r.last[t]).Seconds()/refusalEvery.Seconds())
	}
	r.last[t] = now
	r.pending[t]++
	if tok < 1 {
		r.tokens[t] = tok
		return 0
	}
	r.tokens[t] = tok - 1
	n := r.pending[t]
	r.pending[t] = 0
	return n
}

// refuse logs and reports a refused message on topic report (the status
// or result topic of the channel it came on).
func (r *refusals) refuse(g *Gateway, report string, payload []byte, reason string) {
	n := r.allow(report)
	if n == 0 {
		g.log.Debug("message refused (report deferred: too many)", "reason", reason, "bytes", len(payload))
		return
	}
	digest := firmwareNoticeDigest(payload)
	g.log.Warn("message refused and reported", "report", report, "reason", reason, "bytes", len(payload), "digest", digest, "count", n)
	// Not on the MQTT client's delivery goroutine: waiting there for the
	// PUBACK would hold up every other message (the budget bounds how
	// many reports are in flight).
	rep := g.refusalReport(report, reason, digest, n)
	go func() {
		if err := g.publishSigned(report, rep); err != nil {
			g.log.Warn("refusal report not published", "err", err)
		}
	}()
}
