package broker

import (
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"
)

// BenchmarkFdatasync: the floor under BenchmarkStoreAck on the same disk —
// an overwrite of 16 KiB in a preallocated file made durable, as the log
// does for one batch: write then fdatasync (what the log does), or one
// write to a file opened O_DSYNC (the alternative; measured, not used).
//
//	go test -run '^$' -bench 'BenchmarkStoreAck|BenchmarkFdatasync' -benchtime 5000x ./internal/broker
func BenchmarkFdatasync(b *testing.B) {
	for _, c := range []struct {
		name  string
		flags int
	}{{"write+fdatasync", 0}, {"O_DSYNC", syscall.O_DSYNC}} {
		b.Run(c.name, func(b *testing.B) {
			const size, block = 64 << 20, 16 << 10
			p := filepath.Join(b.TempDir(), "sync")
			f, err := os.Create(p)
			if err != nil {
				b.Fatal(err)
			}
			wf := walFile{path: p, f: f}
			if err := preallocate(&wf, size); err != nil {
				b.Fatal(err)
			}
			if err := datasync(f); err != nil {
				b.Fatal(err)
			}
			_ = f.Close()
			if f, err = os.OpenFile(p, os.O_RDWR|c.flags, 0); err != nil {
				b.Fatal(err)
			}
			defer f.Close()
			buf := make([]byte, block)
			waits := make([]time.Duration, 0, b.N)
			b.ResetTimer()
			for i := range b.N {
				t0 := time.Now()
				if _, err := f.WriteAt(buf, int64(i*block)%size); err != nil {
					b.Fatal(err)
				}
				if c.flags == 0 {
					if err := datasync(f); err != nil {
						b.Fatal(err)
					}
				}
				waits = append(waits, time.Since(t0))
			}
			b.StopTimer()
			reportPercentiles(b, waits)
		})
	}
}
