package queue

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"
)

func open(t *testing.T, file string, opts Options) *Queue {
	t.Helper()
	q, err := Open(file, opts)
	if err != nil {
		t.Fatal(err)
	}
	return q
}

func TestOrderAckAndRestart(t *testing.T) {
	file := filepath.Join(t.TempDir(), "q.db")
	q := open(t, file, Options{})
	for i := range 10 {
		if _, err := q.Put([]byte(fmt.Sprint(i))); err != nil {
			t.Fatal(err)
		}
	}
	items, _ := q.Peek(3)
	if len(items) != 3 || string(items[0].Data) != "0" || string(items[2].Data) != "2" {
		t.Fatalf("Peek = %v", items)
	}
	// Peek does not remove; acknowledging does.
	if err := q.Ack(items[0].ID, items[1].ID); err != nil {
		t.Fatal(err)
	}
	q.Close()

	q = open(t, file, Options{}) // a restart keeps the rest, in order
	defer q.Close()
	items, _ = q.Peek(100)
	if len(items) != 8 || string(items[0].Data) != "2" || string(items[7].Data) != "9" {
		t.Fatalf("after restart Peek = %d items starting %q", len(items), items[0].Data)
	}
	st, _ := q.Stats()
	if st.Items != 8 || st.Bytes != 8 || st.Dropped != 0 {
		t.Fatalf("Stats = %+v", st)
	}
	// New items continue after the old ones.
	q.Put([]byte("10"))
	items, _ = q.Peek(100)
	if string(items[len(items)-1].Data) != "10" || items[len(items)-1].ID <= items[len(items)-2].ID {
		t.Fatal("new item not at the end")
	}
}

func TestBounds(t *testing.T) {
	tests := []struct {
		name        string
		opts        Options
		puts        int
		wantItems   int
		wantFirst   string
		wantDropped uint64
		wantErr     bool
	}{
		{"drop oldest by count", Options{MaxItems: 5}, 8, 5, "3", 3, false},
		{"drop oldest by bytes", Options{MaxBytes: 10}, 8, 5, "3", 3, false}, // 2 bytes each
		{"reject new by count", Options{MaxItems: 5, Policy: RejectNew}, 8, 5, "0", 3, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			q := open(t, filepath.Join(t.TempDir(), "q.db"), tt.opts)
			defer q.Close()
			var dropped []Item
			var sawFull bool
			for i := range tt.puts {
				d, err := q.Put([]byte(fmt.Sprintf("%d.", i)))
				if errors.Is(err, ErrFull) {
					sawFull = true
				} else if err != nil {
					t.Fatal(err)
				}
				dropped = append(dropped, d...)
			}
			if sawFull != tt.wantErr {
				t.Fatalf("ErrFull seen = %v", sawFull)
			}
			st, _ := q.Stats()
			items, _ := q.Peek(100)
			if st.Items != tt.wantItems || len(items) != tt.wantItems || string(items[0].Data[:1]) != tt.wantFirst || st.Dropped != tt.wantDropped {
				t.Fatalf("Stats %+v, first %q", st, items[0].Data)
			}
			if !tt.wantErr && (len(dropped) != int(tt.wantDropped) || string(dropped[0].Data) != "0.") {
				t.Fatalf("Put reported dropped %v", dropped)
			}
		})
	}
	q := open(t, filepath.Join(t.TempDir(), "q.db"), Options{MaxBytes: 4})
	defer q.Close()
	if _, err := q.Put([]byte("too large")); !errors.Is(err, ErrFull) {
		t.Fatalf("oversized item: %v", err)
	}
}

func TestConcurrentPut(t *testing.T) {
	q := open(t, filepath.Join(t.TempDir(), "q.db"), Options{MaxItems: 50})
	defer q.Close()
	var wg sync.WaitGroup
	var mu sync.Mutex
	dropped := 0
	for w := range 4 {
		wg.Go(func() {
			for i := range 25 {
				d, err := q.Put([]byte(fmt.Sprintf("%d-%d", w, i)))
				if err != nil {
					t.Error(err)
				}
				mu.Lock()
				dropped += len(d)
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	st, _ := q.Stats()
	if st.Items != 50 || dropped != 50 || st.Dropped != 50 {
		t.Fatalf("Stats %+v, dropped %d; want 50 kept, 50 dropped", st, dropped)
	}
}

// BenchmarkPutAck measures queue throughput: one durable Put and one Ack
// per item. It reports disk bytes per queued item as well.
func BenchmarkPutAck(b *testing.B) {
	q, err := Open(filepath.Join(b.TempDir(), "q.db"), Options{})
	if err != nil {
		b.Fatal(err)
	}
	defer q.Close()
	data := make([]byte, 1200) // a sealed 30-channel snapshot is about this size
	b.SetBytes(int64(len(data)))
	for b.Loop() {
		if _, err := q.Put(data); err != nil {
			b.Fatal(err)
		}
		items, _ := q.Peek(1)
		q.Ack(items[0].ID)
	}
}

func TestPutWithState(t *testing.T) {
	file := filepath.Join(t.TempDir(), "q.db")
	q := open(t, file, Options{MaxItems: 1, Policy: RejectNew})
	if _, err := q.PutWithState([]byte("a"), []KV{{"head/d", []byte("1")}}); err != nil {
		t.Fatal(err)
	}
	// A refused put changes no state.
	if _, err := q.PutWithState([]byte("b"), []KV{{"head/d", []byte("2")}}); !errors.Is(err, ErrFull) {
		t.Fatal(err)
	}
	if v, _ := q.State("head/d"); string(v) != "1" {
		t.Fatalf("state after refused put = %q", v)
	}
	q.Close()
	q = open(t, file, Options{})
	defer q.Close()
	if v, _ := q.State("head/d"); string(v) != "1" {
		t.Fatalf("state after reopen = %q", v)
	}
	if v, _ := q.State("missing"); v != nil {
		t.Fatalf("missing key = %q", v)
	}
}

// BenchmarkDiskPerItem queues 10,000 items of a sealed snapshot's size
// without draining (a WAN outage) and reports the file's bytes per item.
func BenchmarkDiskPerItem(b *testing.B) {
	for b.Loop() {
		file := filepath.Join(b.TempDir(), "q.db")
		q, err := Open(file, Options{})
		if err != nil {
			b.Fatal(err)
		}
		data := make([]byte, 1200)
		const n = 10_000
		for range n {
			if _, err := q.Put(data); err != nil {
				b.Fatal(err)
			}
		}
		qs, _ := q.Stats()
		q.Close()
		st, err := os.Stat(file)
		if err != nil {
			b.Fatal(err)
		}
		b.ReportMetric(float64(qs.DiskBytes)/n, "used-bytes/item")
		b.ReportMetric(float64(st.Size())/n, "file-bytes/item")
	}
}
