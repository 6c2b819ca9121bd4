package broker

import (
	"fmt"
	"io"
	"log/slog"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"
)

// BenchmarkStoreAck: what a persistent session's PUBACK waits for — 16
// publishers, each queuing a 1 KiB message and four delivery references,
// then waiting for the acknowledgement barrier (afterDurable, the PUBACK's
// own path), as a publish to four offline
// persistent subscribers does. Reports the wait's p50 and p99; compare
// with BenchmarkFdatasync in the same run (the disk alone):
//
//	go test -run '^$' -bench 'BenchmarkStoreAck|BenchmarkFdatasync' -benchtime 20000x ./internal/broker
func BenchmarkStoreAck(b *testing.B) {
	st, err := openStore(filepath.Join(b.TempDir(), "broker.db"), slog.New(slog.NewTextHandler(io.Discard, nil)), storeTuning{})
	if err != nil {
		b.Fatal(err)
	}
	defer st.close()
	payload := make([]byte, 1024)
	const publishers = 16
	var mu sync.Mutex
	var waits []time.Duration
	var wg sync.WaitGroup
	b.ResetTimer()
	for p := range publishers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			done := make(chan error, 1)
			for i := p; i < b.N; i += publishers {
				st.put("put message", midKey(uint64(i)), messageRecord{Publish: payload, Created: 1})
				for s := range 4 {
					st.put("put delivery", seqKey(fmt.Sprintf("sess-%d", s), uint64(i)), deliveryRecord{MID: uint64(i), QoS: 1})
				}
				t0 := time.Now()
				st.afterDurable(func(err error) { done <- err })
				if err := <-done; err != nil {
					b.Error(err)
					return
				}
				d := time.Since(t0)
				mu.Lock()
				waits = append(waits, d)
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	b.StopTimer()
	reportPercentiles(b, waits)
}

func reportPercentiles(b *testing.B, waits []time.Duration) {
	slices.Sort(waits)
	if len(waits) > 0 {
		b.ReportMetric(float64(waits[len(waits)/2].Microseconds()), "p50-µs")
		b.ReportMetric(float64(waits[len(waits)*99/100].Microseconds()), "p99-µs")
		b.ReportMetric(float64(waits[len(waits)-1].Microseconds()), "max-µs")
	}
}
