package broker

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"io"
	"log/slog"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"go.etcd.io/bbolt"
)

func walTestMuts() []walMut {
	return []walMut{
		{op: mutPut, key: []byte("q/a\x00k1"), val: []byte("value one")},
		{op: mutPut, key: []byte("i/a\x00\x00\x01")}, // empty value
		{op: mutDelete, key: []byte("q/a\x00k0")},
		{op: mutDeletePrefix, key: []byte("u/a\x00")},
	}
}

// TestWALRecord: a record reads back as written; anything short of an
// intact record — every truncation, any flipped bit, zeros, a wrong
// length — is the end of the log, never a partial record.
func TestWALRecord(t *testing.T) {
	rec := appendWALRecord(nil, 7, walTestMuts())
	lsn, muts, n, err := parseWALRecord(append(rec, 0, 0, 0))
	if err != nil || lsn != 7 || n != len(rec) || fmt.Sprint(muts) != fmt.Sprint(walTestMuts()) {
		t.Fatalf("round trip: lsn %d n %d/%d err %v muts %v", lsn, n, len(rec), err, muts)
	}
	for cut := range len(rec) {
		if _, _, _, err := parseWALRecord(rec[:cut]); err != errWALEnd {
			t.Fatalf("record cut at %d of %d bytes: %v, want the end of the log", cut, len(rec), err)
		}
	}
	for i := range rec {
		for bit := range 8 {
			b := bytes.Clone(rec)
			b[i] ^= 1 << bit
			if _, _, _, err := parseWALRecord(b); err != errWALEnd {
				t.Fatalf("bit %d of byte %d flipped: %v, want the end of the log", bit, i, err)
			}
		}
	}
	if _, _, _, err := parseWALRecord(make([]byte, 64)); err != errWALEnd {
		t.Fatalf("zeros: %v", err)
	}
	// An intact record with a body this broker cannot read is reported,
	// not taken for the end of the log.
	bad := appendWALRecord(nil, 1, []walMut{{op: 9, key: []byte("k")}})
	if _, _, _, err := parseWALRecord(bad); err == nil || err == errWALEnd {
		t.Fatalf("unknown mutation: %v, want a corruption error", err)
	}
}

// TestWALScanStopsAtStaleRecords: a file reused from offset 0 still holds
// older records behind the newest ones; reading stops where the LSNs stop
// being consecutive.
func TestWALScanStopsAtStaleRecords(t *testing.T) {
	var old []byte
	for lsn := uint64(1); lsn <= 5; lsn++ {
		old = appendWALRecord(old, lsn, walTestMuts()[:1])
	}
	fresh := appendWALRecord(nil, 20, walTestMuts()[:1])
	fresh = appendWALRecord(fresh, 21, walTestMuts()[:1])
	file := append(fresh, old[len(fresh):]...) // the newest over the start of the oldest
	recs, err := scanWAL(file)
	if err != nil || len(recs) != 2 || recs[0].lsn != 20 || recs[1].lsn != 21 {
		t.Fatalf("scan: %v, %d records", err, len(recs))
	}
}

// TestWALCheckpointAndReplay: what is logged reaches bbolt by checkpoint
// and, when the process stops before a checkpoint, by replay; the files
// are reused in turn and their size stays bounded.
func TestWALCheckpointAndReplay(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "broker.db")
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	tune := storeTuning{walFileMax: 64 << 10, checkpointEvery: time.Hour}
	st, err := openStore(path, log, tune)
	if err != nil {
		t.Fatal(err)
	}
	val := bytes.Repeat([]byte("x"), 1000)
	for i := range 300 {
		st.put("put", fmt.Sprintf("q/k%04d", i), val)
		if i%10 == 9 {
			if err := st.barrier(); err != nil {
				t.Fatal(err)
			}
		}
	}
	// Nothing checkpointed by time (an hour), but the files switched, each
	// switch waiting for a checkpoint of the file it reuses.
	if n, err := st.count("q/"); err != nil || n != 300 {
		t.Fatalf("count %d, %v", n, err)
	}
	for i := range 2 {
		fi, err := os.Stat(fmt.Sprintf("%s.%d", strings.TrimSuffix(path, ".db")+".wal", i))
		if err != nil {
			t.Fatal(err)
		}
		if fi.Size() > walFirstAlloc+tune.walFileMax {
			t.Fatalf("log file %d is %d bytes", i, fi.Size())
		}
	}
	st.del("del", "q/k0000")
	if err := st.barrier(); err != nil {
		t.Fatal(err)
	}
	// Stop without a checkpoint: the journal and the log, not bbolt.
	st.j.close()
	st.ckpt.mu.Lock()
	st.ckpt.queue = nil // as if the process had died here
	st.ckpt.closing = true
	st.ckpt.mu.Unlock()
	st.ckpt.close()
	if err := st.db.Close(); err != nil {
		t.Fatal(err)
	}
	if err := st.wal.close(); err != nil {
		t.Fatal(err)
	}
	st, err = openStore(path, log, tune)
	if err != nil {
		t.Fatal(err)
	}
	defer st.close()
	if n, err := st.count("q/"); err != nil || n != 299 {
		t.Fatalf("after replay: count %d, %v; want 299", n, err)
	}
}

// walCrashOps is the crash tests' workload: op i is a put of a new key, a
// deletion of an earlier put, or the deletion of a key prefix.
func walCrashOp(i int) (op byte, key string, val []byte) {
	switch {
	case i%50 == 49:
		return mutDeletePrefix, fmt.Sprintf("q/s%d\x00", i%7), nil
	case i%5 == 4:
		return mutDelete, walCrashKey(i - 3), nil
	}
	return mutPut, walCrashKey(i), bytes.Repeat([]byte{byte(i)}, 100+(i%5)*400)
}

func walCrashKey(i int) string { return fmt.Sprintf("q/s%d\x00%06d", i%7, i) }

const walCrashN = 3000

// TestWALCrashChild is the child process of TestWALCrash: it runs the
// workload, prints "ack I" once op I is durable, and kills itself
// (SIGKILL) at the AT-th occurrence of STEP.
func TestWALCrashChild(t *testing.T) {
	dir := os.Getenv("FIELDTRUST_WAL_CRASH_DIR")
	if dir == "" {
		t.Skip("child of TestWALCrash")
	}
	step := os.Getenv("FIELDTRUST_WAL_CRASH_STEP")
	at, _ := strconv.Atoi(os.Getenv("FIELDTRUST_WAL_CRASH_AT"))
	seen := 0
	tune := storeTuning{walFileMax: 1 << 20, checkpointEvery: 2 * time.Millisecond, crash: func(s string) {
		if s == step {
			if seen++; seen == at {
				_ = syscall.Kill(os.Getpid(), syscall.SIGKILL)
				select {} // the signal is on its way
			}
		}
	}}
	st, err := openStore(filepath.Join(dir, "broker.db"), slog.New(slog.NewTextHandler(os.Stderr, nil)), tune)
	if err != nil {
		t.Fatal(err)
	}
	for i := range walCrashN {
		switch op, key, val := walCrashOp(i); op {
		case mutPut:
			st.put("put", key, val)
		case mutDelete:
			st.del("del", key)
		case mutDeletePrefix:
			st.delPrefix("del prefix", key)
		}
		st.afterDurable(func(err error) {
			if err == nil {
				_, _ = fmt.Fprintf(os.Stdout, "ack %d\n", i)
			}
		})
		if i%20 == 19 {
			_ = st.barrier()
		}
		if i%100 == 99 {
			// At least one checkpoint round per 100 ops however fast the
			// machine (timed rounds coalesce when it is fast), so the
			// checkpoint steps are reached in every round of every case.
			_ = st.checkpoint()
		}
	}
	_ = st.close()
	fmt.Println("completed without reaching the step")
}

// TestWALCrash: SIGKILL at every step of logging and checkpointing — before
// the log write, between write and sync, after the sync (before the
// acknowledgements), while switching files, while a file grows, inside a bbolt checkpoint
// transaction, after it — and with a torn last record. After each, the
// reopened state is exactly the state after some prefix of the workload
// that contains every acknowledged op: nothing acknowledged is lost, and
// nothing deleted (a delivery the subscriber acknowledged) comes back.
func TestWALCrash(t *testing.T) {
	if testing.Short() {
		t.Skip("spawns child processes")
	}
	cases := []struct {
		step string
		at   int
		torn bool
	}{
		{"log:before-write", 40, false},
		{"log:before-sync", 60, false},
		{"log:before-sync", 70, true}, // and the record written is torn
		{"log:after-sync", 80, false},
		{"log:switch", 3, false},
		{"log:grown", 2, false}, // zeros written beyond a file's end, not yet synced; files grow in round 1 only
		{"checkpoint:in-tx", 10, false},
		{"checkpoint:after-commit", 12, false},
	}
	for _, tc := range cases {
		name := strings.ReplaceAll(tc.step, ":", "-")
		if tc.torn {
			name += "-torn"
		}
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			// Twice on the same state: the second run continues a log that
			// holds the first one's records (LSNs go on, files are reused).
			model := map[string]string{}
			for round := 1; round <= 2; round++ {
				at := tc.at
				if round == 2 && at < 5 { // the files are grown: fewer switches
					at = 1
				}
				if round == 2 && tc.step == "log:grown" {
					break
				}
				acked := runWALCrashChild(t, dir, tc.step, at)
				if tc.torn {
					tearLastRecord(t, filepath.Join(dir, "broker.wal"))
				}
				got := reopenWALState(t, dir)
				// Some prefix of at least the acknowledged ops, exactly.
				prev := maps.Clone(model)
				found := false
				for k := 0; k <= walCrashN; k++ {
					if k >= acked && maps.Equal(model, got) {
						t.Logf("round %d: %d ops acknowledged; the state after the crash is the state after %d", round, acked, k)
						found = true
						break
					}
					if k == walCrashN {
						break
					}
					applyWALCrashOp(model, k)
				}
				if !found {
					t.Fatalf("round %d: %d ops acknowledged; the %d records after the crash are not the state after any prefix of at least those (%d records before the round)",
						round, acked, len(got), len(prev))
				}
			}
		})
	}
}

func applyWALCrashOp(model map[string]string, k int) {
	switch op, key, val := walCrashOp(k); op {
	case mutPut:
		enc, _ := encMode.Marshal(val) // as store.put writes it
		model[key] = string(enc)
	case mutDelete:
		delete(model, key)
	case mutDeletePrefix:
		maps.DeleteFunc(model, func(mk, _ string) bool { return strings.HasPrefix(mk, key) })
	}
}

// runWALCrashChild runs TestWALCrashChild on dir until it kills itself at
// the at-th step, and returns how many ops it acknowledged.
func runWALCrashChild(t *testing.T, dir, step string, at int) int {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^TestWALCrashChild$", "-test.count=1")
	cmd.Env = append(os.Environ(), "FIELDTRUST_WAL_CRASH_DIR="+dir, "FIELDTRUST_WAL_CRASH_STEP="+step,
		"FIELDTRUST_WAL_CRASH_AT="+strconv.Itoa(at))
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	ee, ok := err.(*exec.ExitError)
	if !ok || ee.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
		t.Fatalf("child did not die by SIGKILL at %s: %v\n%s%s", step, err, out, stderr.String())
	}
	acked := 0
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "ack "); ok {
			i, _ := strconv.Atoi(v)
			if i != acked {
				t.Fatalf("ack %d after %d acks: out of order", i, acked)
			}
			acked++
		}
	}
	return acked
}

// reopenWALState opens the store in dir as a restarted broker does (the
// log replayed), and returns its q/ records.
func reopenWALState(t *testing.T, dir string) map[string]string {
	t.Helper()
	var logs bytes.Buffer
	st, err := openStore(filepath.Join(dir, "broker.db"), slog.New(slog.NewTextHandler(&logs, nil)), storeTuning{})
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	err = st.db.View(func(tx *bbolt.Tx) error {
		c := tx.Bucket([]byte(bucketName)).Cursor()
		for k, v := c.Seek([]byte("q/")); k != nil && bytes.HasPrefix(k, []byte("q/")); k, v = c.Next() {
			got[string(k)] = string(v)
		}
		return nil
	})
	if cerr := st.close(); err == nil {
		err = cerr
	}
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(logs.String(), "level=ERROR") {
		t.Fatalf("reopening logged an error:\n%s", logs.String())
	}
	return got
}

// tearLastRecord damages the second half of the log's newest record, as a
// crash in the middle of its write would.
func tearLastRecord(t *testing.T, base string) {
	t.Helper()
	var newest uint64
	var file string
	var off, size int
	for i := range 2 {
		p := fmt.Sprintf("%s.%d", base, i)
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		recs, _ := scanWAL(b)
		o := 0
		for _, r := range recs {
			n := walHeader + int(binary.BigEndian.Uint32(b[o+4:]))
			if r.lsn > newest {
				newest, file, off, size = r.lsn, p, o, n
			}
			o += n
		}
	}
	if file == "" {
		t.Fatal("no record to tear")
	}
	f, err := os.OpenFile(file, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteAt(bytes.Repeat([]byte{0xA5}, size-size/2), int64(off+size/2)); err != nil {
		t.Fatal(err)
	}
}

// FuzzWALRecord: the log record parser, on whatever bytes replay may find
// in a file after a crash or damage: it never panics and never reads past
// the record; a record it accepts encodes back to the same bytes and holds
// only mutations bbolt accepts.
func FuzzWALRecord(f *testing.F) {
	rec := appendWALRecord(nil, 3, walTestMuts())
	f.Add(rec)
	f.Add(rec[:len(rec)/2])
	f.Add(appendWALRecord(rec, 4, walTestMuts()[:1]))
	f.Add(make([]byte, 32))
	f.Add(appendWALRecord(nil, 1, []walMut{{op: mutPut, key: []byte("k"), val: bytes.Repeat([]byte("v"), 300)}}))
	f.Fuzz(func(t *testing.T, b []byte) {
		// The bytes as a body under an intact header too, or the checksum
		// would keep the fuzzer away from the body's parser.
		if len(b) > 0 {
			h := make([]byte, walHeader, walHeader+len(b))
			binary.BigEndian.PutUint32(h[4:], uint32(len(b)))
			binary.BigEndian.PutUint64(h[8:], 1)
			h = append(h, b...)
			binary.BigEndian.PutUint32(h, crc32.Checksum(h[4:], castagnoli))
			if _, muts, _, err := parseWALRecord(h); err == nil {
				_, again, _, err := parseWALRecord(appendWALRecord(nil, 1, muts))
				if err != nil || fmt.Sprint(again) != fmt.Sprint(muts) {
					t.Fatalf("body does not survive a round trip: %v", err)
				}
			} else if err == errWALEnd {
				t.Fatalf("intact header taken for the end of the log")
			}
		}
		lsn, muts, n, err := parseWALRecord(b)
		if err != nil {
			if n != 0 || muts != nil {
				t.Fatalf("error %v with %d bytes and %d mutations", err, n, len(muts))
			}
			_, _ = scanWAL(b)
			return
		}
		if n > len(b) || lsn == 0 {
			t.Fatalf("record of %d bytes in %d, lsn %d", n, len(b), lsn)
		}
		for _, m := range muts {
			if err := validMut(m); err != nil {
				t.Fatalf("accepted an invalid mutation: %v", err)
			}
		}
		if again := appendWALRecord(nil, lsn, muts); !bytes.Equal(again, b[:n]) {
			t.Fatalf("record does not encode back to its bytes")
		}
		recs, _ := scanWAL(b)
		if len(recs) == 0 || recs[0].lsn != lsn {
			t.Fatalf("scan disagrees with parse")
		}
	})
}
