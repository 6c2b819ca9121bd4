package ingest

import (
	"time"

	"github.com/fieldtrust/fieldtrust/internal/store"
)

// rejectBudget is each publisher's allowance of rejects recorded one by
// one: a token bucket of burst tokens, refilled one per every. Rejects
// beyond it are summed up per topic and reason (summaries) until the
// committer records them, once per batch. Used by the committer only.
type rejectBudget struct {
	burst     float64
	every     time.Duration
	buckets   map[string]*bucket
	summaries map[summaryKey]*store.Reject
}

type bucket struct {
	tokens float64
	last   time.Time
	spent  bool // the budget ran out since it last allowed a record
}

type summaryKey struct{ topic, reason string }

// maxBuckets bounds the budgets kept: beyond it, full buckets (publishers
// that were quiet long enough to be back to their whole budget) are
// forgotten, which changes nothing for them.
const maxBuckets = 10_000

func newRejectBudget(burst int, every time.Duration) *rejectBudget {
	return &rejectBudget{burst: float64(burst), every: every, buckets: map[string]*bucket{}, summaries: map[summaryKey]*store.Reject{}}
}

// allow takes a token of key's budget. first reports the first refusal
// after the budget ran out (to log it once).
func (b *rejectBudget) allow(key string, now time.Time) (ok, first bool) {
	bk := b.buckets[key]
	if bk == nil {
		if len(b.buckets) >= maxBuckets {
			b.forgetFull(now)
		}
		bk = &bucket{tokens: b.burst, last: now}
		b.buckets[key] = bk
	}
	if el := now.Sub(bk.last); el > 0 {
		bk.tokens = min(b.burst, bk.tokens+float64(el)/float64(b.every))
		bk.last = now
	}
	if bk.tokens >= 1 {
		bk.tokens--
		bk.spent = false
		return true, false
	}
	first = !bk.spent
	bk.spent = true
	return false, first
}

func (b *rejectBudget) forgetFull(now time.Time) {
	for k, bk := range b.buckets {
		if bk.tokens+float64(now.Sub(bk.last))/float64(b.every) >= b.burst {
			delete(b.buckets, k)
		}
	}
}

// summarize counts r into the summary of its topic and reason.
func (b *rejectBudget) summarize(r store.Reject) {
	k := summaryKey{r.Topic, r.Reason}
	s := b.summaries[k]
	if s == nil {
		s = &store.Reject{Topic: r.Topic, Gateway: r.Gateway, Reason: r.Reason, At: r.At}
		b.summaries[k] = s
	}
	s.Count++
	s.Size += r.Size
	s.LastAt = r.At
}
