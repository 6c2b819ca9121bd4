package broker

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"go.etcd.io/bbolt"
)

// The write-ahead log: what the journal makes durable before a PUBACK.
//
// bbolt makes two fdatasync calls per commit and rewrites every page a
// transaction touched; a PUBACK waiting for that was the persistent-session
// p99 (docs/benchmarks.md). The journal now appends each batch — the
// mutations it resolved, across every connection that wrote meanwhile — as
// checksummed records to a preallocated log file and makes one fdatasync
// per batch. A background checkpointer applies the logged mutations to
// bbolt in large transactions (bbolt's own fsyncs off the PUBACK path) and
// records there the LSN it has applied; on open, the records after it are
// replayed.
//
// Files: broker.wal.0 and broker.wal.1, used in turn. A file is filled from
// offset 0; when the next record would take it beyond walFileMax the other
// file is reused from offset 0, once everything in it is checkpointed. A
// file is preallocated by writing zeros (not fallocate: its unwritten extents
// would make every first write a metadata update), so fdatasync in steady
// state writes data only. A file grows only while it is not the one being
// written (a background goroutine extends it and syncs the zeros itself,
// so the writer's fdatasync never carries them): created at walFirstAlloc,
// it grows fourfold each time the writer leaves it, up to walFileMax — a
// broker that writes little keeps small files, a busy one reaches the
// steady state after a few switches.
//
// Record: crc32c(4) | body length(4) | LSN(8) | body; all big endian, the
// checksum (Castagnoli) over everything after itself. Body: mutations, each
// op(1) | uvarint key length | key | (put only) uvarint value length | value.
// LSNs are consecutive across both files and never reused (a restart
// continues after the highest one seen). Reading a file stops at the first
// record that is short, fails its checksum, or does not carry the next LSN:
// a torn tail after a crash, preallocated zeros, or an older record behind
// the newest ones — all of them never acknowledged or already checkpointed.
const (
	walHeader     = 16
	walMaxBody    = 1 << 30
	walMaxValue   = walMaxBody / 2 // a record of one mutation stays readable (and bbolt takes it)   // far above any record the journal writes (bounded by MaxPacketSize)
	walRecordSoft = 4 << 20        // a record is closed once its body reaches this (it holds at least one mutation)
	walFileMax    = 64 << 20       // the next file is used when a record would take this one beyond it
	walFirstAlloc = 256 << 10      // a new file's preallocation
	walGrowth     = 4              // a file left by the writer grows to this many times its size, up to walFileMax
	walZeroChunk  = 1 << 20
	keyWALApplied = "w" // in bbolt: the LSN of the last mutation checkpointed (8 bytes big endian)
)

const (
	mutPut          byte = 1
	mutDelete       byte = 2
	mutDeletePrefix byte = 3
)

// walMut is one logged change to the bbolt bucket.
type walMut struct {
	op       byte
	key, val []byte
}

var (
	castagnoli = crc32.MakeTable(crc32.Castagnoli)

	// errWALEnd: no intact record here — the end of the log.
	errWALEnd = errors.New("end of log")
)

// validMut reports whether bbolt will accept m, so a mutation that it
// would refuse never reaches the log (where it would fail every replay).
func validMut(m walMut) error {
	switch {
	case m.op < mutPut || m.op > mutDeletePrefix:
		return fmt.Errorf("unknown mutation %d", m.op)
	case len(m.key) == 0 || len(m.key) > bbolt.MaxKeySize:
		return fmt.Errorf("key of %d bytes (1 to %d)", len(m.key), bbolt.MaxKeySize)
	case m.op == mutPut && len(m.val) > walMaxValue:
		return fmt.Errorf("value of %d bytes (at most %d)", len(m.val), walMaxValue)
	case m.op != mutPut && len(m.val) > 0:
		return errors.New("value on a deletion")
	}
	return nil
}

// appendWALRecord appends one record holding muts.
func appendWALRecord(dst []byte, lsn uint64, muts []walMut) []byte {
	start := len(dst)
	dst = append(dst, make([]byte, walHeader)...)
	for _, m := range muts {
		dst = append(dst, m.op)
		dst = binary.AppendUvarint(dst, uint64(len(m.key)))
		dst = append(dst, m.key...)
		if m.op == mutPut {
			dst = binary.AppendUvarint(dst, uint64(len(m.val)))
			dst = append(dst, m.val...)
		}
	}
	h := dst[start:]
	binary.BigEndian.PutUint32(h[4:], uint32(len(h)-walHeader))
	binary.BigEndian.PutUint64(h[8:], lsn)
	binary.BigEndian.PutUint32(h[0:], crc32.Checksum(h[4:], castagnoli))
	return dst
}

// parseWALRecord reads the record at the start of b: its LSN, mutations
// (aliasing b) and length. errWALEnd means there is no intact record; any
// other error, an intact (checksummed) record whose body this broker
// cannot read — corruption the checksum missed, or a newer format.
func parseWALRecord(b []byte) (lsn uint64, muts []walMut, n int, err error) {
	if len(b) < walHeader {
		return 0, nil, 0, errWALEnd
	}
	size := binary.BigEndian.Uint32(b[4:])
	lsn = binary.BigEndian.Uint64(b[8:])
	if size == 0 || size > walMaxBody || uint64(len(b)-walHeader) < uint64(size) || lsn == 0 {
		return 0, nil, 0, errWALEnd
	}
	n = walHeader + int(size)
	if crc32.Checksum(b[4:n], castagnoli) != binary.BigEndian.Uint32(b) {
		return 0, nil, 0, errWALEnd
	}
	body := b[walHeader:n]
	for len(body) > 0 {
		var m walMut
		m.op, body = body[0], body[1:]
		if m.key, body, err = walBytes(body); err != nil {
			return 0, nil, 0, fmt.Errorf("record %d: key: %w", lsn, err)
		}
		if m.op == mutPut {
			if m.val, body, err = walBytes(body); err != nil {
				return 0, nil, 0, fmt.Errorf("record %d: value: %w", lsn, err)
			}
		}
		if err := validMut(m); err != nil {
			return 0, nil, 0, fmt.Errorf("record %d: %w", lsn, err)
		}
		muts = append(muts, m)
	}
	return lsn, muts, n, nil
}

func walBytes(b []byte) (v, rest []byte, err error) {
	l, k := binary.Uvarint(b)
	if k <= 0 || l > uint64(len(b)-k) {
		return nil, nil, errors.New("truncated")
	}
	end := k + int(l)
	return b[k:end:end], b[end:], nil
}

// walRecord is one record read back from a file.
type walRecord struct {
	lsn  uint64
	muts []walMut
}

// scanWAL reads a file's run of consecutive records from offset 0. A
// record that checksums but cannot be parsed ends the run like a torn one
// and is reported.
func scanWAL(b []byte) (recs []walRecord, corrupt error) {
	for off := 0; ; {
		lsn, muts, n, err := parseWALRecord(b[off:])
		if errors.Is(err, errWALEnd) {
			return recs, nil
		}
		if err != nil {
			return recs, err
		}
		if len(recs) > 0 && lsn != recs[len(recs)-1].lsn+1 {
			return recs, nil // an older record behind the newest run
		}
		recs = append(recs, walRecord{lsn: lsn, muts: muts})
		off += n
	}
}

type walFile struct {
	path string
	f    *os.File
	size int64  // bytes preallocated (written and synced); guarded by wal.gmu once the log is open
	last uint64 // LSN of the last record in it not known to be checkpointed; 0: none
}

// wal appends records; only the journal's goroutine uses it, apart from
// the grower (grow), which extends files.
type wal struct {
	log   *slog.Logger
	files [2]walFile
	cur   int
	off   int64
	next  uint64 // LSN of the next record
	max   int64  // walFileMax; smaller in tests
	buf   []byte
	err   error // sticky: after a failed write or sync the log's state is unknown

	gmu     sync.Mutex
	gcond   *sync.Cond
	want    [2]int64 // size asked of the grower; guarded by gmu
	growErr error    // guarded by gmu
	gstop   bool     // guarded by gmu
	gdone   chan struct{}

	// checkpointed blocks until every record up to lsn is in bbolt.
	checkpointed func(lsn uint64) error
	// obs times the writes and syncs (nil: not measured); rounds tells
	// whether a checkpoint ran during a sync (checkpointer.rounds).
	obs    *storeMetrics
	rounds *atomic.Uint64
	// crash is a test hook: a crash test's child process kills itself at
	// the named step. Nil in production.
	crash func(step string)
}

func (w *wal) hook(step string) {
	if w.crash != nil {
		w.crash(step)
	}
}

// openWALFiles opens (creating and preallocating) the two log files of
// base and returns their contents.
func openWALFiles(base string, tune storeTuning) (files [2]walFile, data [2][]byte, err error) {
	for i := range files {
		p := fmt.Sprintf("%s.%d", base, i)
		f, err := os.OpenFile(p, os.O_RDWR|os.O_CREATE, 0o600)
		if err != nil {
			closeWALFiles(files)
			return files, data, fmt.Errorf("open log %s: %w", p, err)
		}
		files[i] = walFile{path: p, f: f}
		st, err := f.Stat()
		if err != nil {
			closeWALFiles(files)
			return files, data, fmt.Errorf("stat log %s: %w", p, err)
		}
		files[i].size = st.Size()
		if st.Size() == 0 {
			if err := preallocate(&files[i], min(walFirstAlloc, tune.walFileMax)); err != nil {
				closeWALFiles(files)
				return files, data, err
			}
			if err := datasync(f); err != nil {
				closeWALFiles(files)
				return files, data, fmt.Errorf("sync log %s: %w", p, err)
			}
			if err := syncDir(filepath.Dir(p)); err != nil {
				closeWALFiles(files)
				return files, data, err
			}
			continue
		}
		if data[i], err = os.ReadFile(p); err != nil {
			closeWALFiles(files)
			return files, data, fmt.Errorf("read log %s: %w", p, err)
		}
	}
	return files, data, nil
}

func closeWALFiles(files [2]walFile) {
	for _, f := range files {
		if f.f != nil {
			_ = f.f.Close()
		}
	}
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("open %s: %w", dir, err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("sync %s: %w", dir, err)
	}
	return nil
}

// preallocate extends f with zeros to size bytes.
func preallocate(f *walFile, size int64) error {
	if size <= f.size {
		return nil
	}
	zeros := make([]byte, min(walZeroChunk, size-f.size))
	for f.size < size {
		n := min(int64(len(zeros)), size-f.size)
		if _, err := f.f.WriteAt(zeros[:n], f.size); err != nil {
			return fmt.Errorf("preallocate log %s: %w", f.path, err)
		}
		f.size += n
	}
	return nil
}

// write appends muts as records and makes them durable with one
// fdatasync (two if the batch moved on to the other file). It returns the
// LSN of the last record.
func (w *wal) write(muts []walMut) (uint64, error) {
	if w.err != nil {
		return 0, w.err
	}
	lsn, err := w.writeRecords(muts)
	if err != nil {
		w.err = fmt.Errorf("write-ahead log failed, nothing more is acknowledged until a restart: %w", err)
		return 0, w.err
	}
	return lsn, nil
}

func (w *wal) writeRecords(muts []walMut) (uint64, error) {
	var last uint64
	var t0 time.Time
	if w.obs != nil {
		t0 = time.Now()
	}
	for len(muts) > 0 {
		// One record: mutations up to walRecordSoft bytes, at least one.
		n, size := 0, 0
		for n < len(muts) && (n == 0 || size < walRecordSoft) {
			size += len(muts[n].key) + len(muts[n].val) + 12
			n++
		}
		w.buf = appendWALRecord(w.buf[:0], w.next, muts[:n])
		if w.off > 0 && w.off+int64(len(w.buf)) > w.sizeOf(w.cur) {
			if err := w.switchFile(); err != nil {
				return 0, err
			}
		}
		if end := w.off + int64(len(w.buf)); end > w.sizeOf(w.cur) {
			// A record larger than the whole file: wait for it to grow.
			if err := w.grow(w.cur, end, true); err != nil {
				return 0, err
			}
		}
		f := &w.files[w.cur]
		w.hook("log:before-write")
		if _, err := f.f.WriteAt(w.buf, w.off); err != nil {
			return 0, fmt.Errorf("write log %s: %w", f.path, err)
		}
		w.off += int64(len(w.buf))
		f.last, last = w.next, w.next
		w.next++
		muts = muts[n:]
	}
	w.hook("log:before-sync")
	var t1 time.Time
	var r0 uint64
	if w.obs != nil {
		t1 = time.Now()
		w.obs.write.Observe(t1.Sub(t0).Seconds())
		r0 = w.rounds.Load()
	}
	if err := datasync(w.files[w.cur].f); err != nil {
		return 0, fmt.Errorf("sync log %s: %w", w.files[w.cur].path, err)
	}
	if w.obs != nil {
		overlap := 0
		if r1 := w.rounds.Load(); r0%2 == 1 || r1 != r0 {
			overlap = 1
		}
		w.obs.sync[overlap].Observe(time.Since(t1).Seconds())
	}
	w.hook("log:after-sync")
	if cap(w.buf) > 2*walRecordSoft {
		w.buf = nil // a huge message's record is not kept
	}
	return last, nil
}

// switchFile moves on to the other file once everything in it is
// checkpointed; what this file holds is made durable first, so records
// are durable in LSN order.
func (w *wal) switchFile() error {
	cur := &w.files[w.cur]
	if err := datasync(cur.f); err != nil {
		return fmt.Errorf("sync log %s: %w", cur.path, err)
	}
	other := &w.files[1-w.cur]
	if other.last > 0 {
		if err := w.checkpointed(other.last); err != nil {
			return err
		}
		other.last = 0
	}
	w.hook("log:switch")
	if size := w.sizeOf(w.cur); size < w.max {
		_ = w.grow(w.cur, min(size*walGrowth, w.max), false)
	}
	w.cur, w.off = 1-w.cur, 0
	return nil
}

func (w *wal) sizeOf(i int) int64 {
	w.gmu.Lock()
	defer w.gmu.Unlock()
	return w.files[i].size
}

// grow asks the grower to extend file i to size; with wait it returns once
// it has (or failed).
func (w *wal) grow(i int, size int64, wait bool) error {
	w.gmu.Lock()
	defer w.gmu.Unlock()
	w.want[i] = max(w.want[i], size)
	w.gcond.Broadcast()
	for wait && w.files[i].size < size {
		if w.growErr != nil {
			return w.growErr
		}
		w.gcond.Wait()
	}
	return nil
}

// grower extends files with zeros beyond what the writer may use (it
// writes only below a file's published size), then syncs them and
// publishes the new size.
func (w *wal) grower() {
	defer close(w.gdone)
	w.gmu.Lock()
	defer w.gmu.Unlock()
	for {
		i := -1
		for k := range w.files {
			if w.want[k] > w.files[k].size {
				i = k
			}
		}
		if i < 0 {
			if w.gstop {
				return
			}
			w.gcond.Wait()
			continue
		}
		f := walFile{path: w.files[i].path, f: w.files[i].f, size: w.files[i].size}
		target := w.want[i]
		w.gmu.Unlock()
		err := preallocate(&f, target)
		w.hook("log:grown")
		if err == nil {
			if err = datasync(f.f); err != nil {
				err = fmt.Errorf("sync log %s: %w", f.path, err)
			}
		}
		w.gmu.Lock()
		if err != nil {
			w.log.Error("broker store: cannot preallocate the write-ahead log", "error", err)
			w.growErr, w.want[i] = err, w.files[i].size
		} else {
			w.files[i].size = target
		}
		w.gcond.Broadcast()
	}
}

func (w *wal) close() error {
	w.gmu.Lock()
	w.gstop = true
	w.want = [2]int64{} // what is still to grow is not needed any more
	w.gcond.Broadcast()
	w.gmu.Unlock()
	<-w.gdone
	var first error
	for _, f := range w.files {
		if err := f.f.Close(); err != nil && first == nil {
			first = err
		}
	}
	return first
}

// openWAL opens the log files of base and replays into db the records
// beyond the LSN db has applied. It returns the log, ready to append
// after the highest LSN seen, and the LSN db now holds.
func openWAL(db *bbolt.DB, base string, tune storeTuning, log *slog.Logger) (*wal, uint64, error) {
	var applied uint64
	err := db.View(func(tx *bbolt.Tx) error {
		v := tx.Bucket([]byte(bucketName)).Get([]byte(keyWALApplied))
		switch len(v) {
		case 0:
		case 8:
			applied = binary.BigEndian.Uint64(v)
		default:
			return fmt.Errorf("unreadable %q record (%d bytes)", keyWALApplied, len(v))
		}
		return nil
	})
	if err != nil {
		return nil, 0, err
	}
	files, data, err := openWALFiles(base, tune)
	if err != nil {
		return nil, 0, err
	}
	var pending []walRecord
	highest := applied
	for i := range files {
		recs, corrupt := scanWAL(data[i])
		if corrupt != nil {
			log.Error("broker store: write-ahead log record unreadable; the log is read up to it", "file", files[i].path, "error", corrupt)
		}
		for _, r := range recs {
			highest = max(highest, r.lsn)
			if r.lsn > applied {
				pending = append(pending, r)
			}
		}
	}
	sort.Slice(pending, func(i, j int) bool { return pending[i].lsn < pending[j].lsn })
	var muts []walMut
	last := applied
	for i, r := range pending {
		if r.lsn != last+1 {
			// Never the case unless the files were damaged: a record in
			// between is missing, so those after it are not applied.
			log.Error("broker store: write-ahead log has a gap; records after it skipped",
				"applied", last, "next_found", r.lsn, "skipped", len(pending)-i)
			break
		}
		muts = append(muts, r.muts...)
		last = r.lsn
	}
	if last > applied {
		err := db.Update(func(tx *bbolt.Tx) error { return applyMuts(tx.Bucket([]byte(bucketName)), muts, last) })
		if err != nil {
			closeWALFiles(files)
			return nil, 0, fmt.Errorf("replay write-ahead log: %w", err)
		}
		log.Info("broker store: replayed write-ahead log", "records", last-applied, "mutations", len(muts))
	}
	// Everything readable is in bbolt now: both files are free, and the
	// log continues in file 0 after the highest LSN either file holds.
	w := &wal{log: log, files: files, next: highest + 1, max: tune.walFileMax, crash: tune.crash, gdone: make(chan struct{})}
	w.gcond = sync.NewCond(&w.gmu)
	go w.grower()
	return w, last, nil
}
