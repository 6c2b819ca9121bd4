package broker

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/fxamacker/cbor/v2"
	"go.etcd.io/bbolt"

	"github.com/fieldtrust/fieldtrust/internal/broker/packet"
	"github.com/fieldtrust/fieldtrust/internal/tacs"
)

// Storage layout (one bbolt bucket, keys by prefix; KEY is a session key
// "identity|clientID", which contains no NUL):
//
//	v               format version (storeVersion)
//	s/KEY           sessionRecord: a persistent session, its pending will
//	u/KEY\0FILTER   subRecord: a granted subscription
//	m/MID           messageRecord: a message queued for persistent sessions,
//	                written once (MID: 8 bytes big endian)
//	q/KEY\0SEQ      deliveryRecord: a session's reference to a message, queued
//	                or inflight (SEQ: 8 bytes big endian, arrival order)
//	i/KEY\0PID      inbound QoS 2 packet id awaiting PUBREL (2 bytes)
//	r/TOPIC         retainedRecord
//	w               the last write-ahead log LSN applied (wal.go, 8 bytes)
//
// Values are CBOR (deterministic encoding, integer keys); messages inside
// them are MQTT 5 PUBLISH packets, so one fuzzed codec reads both the wire
// and the disk. Only persistent sessions are stored: a session that ends
// with its connection must not come back after a crash anyway.
const (
	bucketName    = "broker"
	keyVersion    = "v"
	keySession    = "s/"
	keySub        = "u/"
	keyQueued     = "q/"
	keyMessage    = "m/"
	keyInbound    = "i/"
	keyRetained   = "r/"
	sep           = "\x00"
	storeVersion  = "3" // 3: written through the write-ahead log (2 had none)
	storeLockWait = 2 * time.Second
)

type sessionRecord struct {
	Subject        string      `cbor:"1,keyasint"` // username form, see subjectKey
	ClientID       string      `cbor:"2,keyasint"`
	Version        byte        `cbor:"3,keyasint"`
	Expiry         uint32      `cbor:"4,keyasint"` // seconds
	DisconnectedAt int64       `cbor:"5,keyasint"` // unix ms; 0 while connected
	NextSeq        uint64      `cbor:"6,keyasint"`
	Will           *willRecord `cbor:"7,keyasint,omitempty"`
}

type willRecord struct {
	Publish []byte   `cbor:"1,keyasint"` // MQTT 5 PUBLISH: topic, QoS, retain, properties, payload
	Due     int64    `cbor:"2,keyasint"` // unix ms
	Chain   [][]byte `cbor:"3,keyasint"` // verified chain of the connection that set it (DER)
}

type subRecord struct {
	QoS            byte   `cbor:"1,keyasint"`
	NoLocal        bool   `cbor:"2,keyasint,omitempty"`
	RAP            bool   `cbor:"3,keyasint,omitempty"`
	RetainHandling byte   `cbor:"4,keyasint,omitempty"`
	ID             uint32 `cbor:"5,keyasint,omitempty"`
}

// messageRecord is a message queued for one or more persistent sessions,
// stored once.
type messageRecord struct {
	Publish []byte `cbor:"1,keyasint"` // the message as an MQTT 5 PUBLISH
	Origin  string `cbor:"2,keyasint,omitempty"`
	Created int64  `cbor:"3,keyasint"` // unix ms
	Expires int64  `cbor:"4,keyasint,omitempty"`
}

// deliveryRecord is one session's reference to a stored message.
type deliveryRecord struct {
	MID    uint64   `cbor:"1,keyasint"`
	QoS    byte     `cbor:"2,keyasint"` // delivery QoS
	Retain bool     `cbor:"3,keyasint,omitempty"`
	SubIDs []uint32 `cbor:"4,keyasint,omitempty"`
	PID    uint16   `cbor:"5,keyasint,omitempty"`
	State  uint8    `cbor:"6,keyasint,omitempty"`
}

type retainedRecord struct {
	Publish []byte   `cbor:"1,keyasint"`
	Owner   string   `cbor:"2,keyasint,omitempty"`
	Chain   [][]byte `cbor:"3,keyasint,omitempty"`
	Created int64    `cbor:"4,keyasint"`
	Expires int64    `cbor:"5,keyasint,omitempty"`
}

var (
	// encMode also encodes into a caller's buffer: the journal reuses one
	// for every record it logs (MarshalToBuffer).
	encMode, _ = cbor.CoreDetEncOptions().UserBufferEncMode()
	decMode, _ = cbor.DecOptions{DupMapKey: cbor.DupMapKeyEnforcedAPF, ExtraReturnErrors: cbor.ExtraDecErrorUnknownField}.DecMode()
)

// store persists what persistent sessions and retained messages need. All
// writes are queued on the journal in order and never waited for by the
// writer; barrier and afterDurable wait for (or run after) durability.
type store struct {
	log *slog.Logger

	mu   sync.RWMutex // guards db against close (scans); writes go through j
	db   *bbolt.DB    // nil after close
	j    *journal
	wal  *wal
	ckpt *checkpointer

	// Delivery records queued on the journal and not yet applied: a
	// delivery acknowledged (or re-recorded) before its write reaches the
	// disk updates or cancels that write instead of adding one. A live
	// subscriber that keeps up thus costs no disk write at all, and a
	// PUBACK still waits only for what is not yet delivered.
	pmu     sync.Mutex
	pending map[pendingKey]*pendingPut // guarded by pmu
	nextMID uint64                     // last message id used; guarded by pmu
}

// pendingPut is a write waiting for the journal (its resolver). Its record
// is encoded only when the journal logs it, on the journal's goroutine: not
// on the publisher's path under pmu (the CBOR of a message and of each
// delivery was a fifth of the broker's CPU there, docs/benchmarks.md), and
// not at all if it is replaced or cancelled first. It is one allocation
// per write: the key is a pendingKey (its bytes are built only if it is
// logged), the record a typed field, and it is its own resolver — no
// closure, no boxed record, no key string on the publish path.
type pendingPut struct {
	st                *store
	key               pendingKey
	msg               *message       // a message's write; nil for a delivery's
	rec               deliveryRecord // a delivery's newest state; guarded by store.pmu
	del               bool           // the deletion of a logged record (never in pending)
	applied, canceled bool           // guarded by store.pmu
}

// pendingKey names a record that a queued write may still replace or
// cancel: a message (sess "") or one delivery of a session (a session key
// is never empty).
type pendingKey struct {
	sess string // session key; "" for a message
	n    uint64 // the delivery's seq or the message's id
}

// appendTo appends the record's store key (seqKey or midKey).
func (k pendingKey) appendTo(dst []byte) []byte {
	if k.sess == "" {
		dst = append(dst, keyMessage...)
	} else {
		dst = append(dst, keyQueued...)
		dst = append(dst, k.sess...)
		dst = append(dst, sep...)
	}
	return binary.BigEndian.AppendUint64(dst, k.n)
}

// size is the length of the store key.
func (k pendingKey) size() int {
	if k.sess == "" {
		return len(keyMessage) + 8
	}
	return len(keyQueued) + len(k.sess) + len(sep) + 8
}

// storeTuning is what tests change; the zero value is production.
type storeTuning struct {
	walFileMax      int64             // walFileMax
	checkpointEvery time.Duration     // checkpointEvery
	crash           func(step string) // crash tests' hook (wal.crash)
	observe         *storeMetrics     // the store's latency histograms; nil: not measured
}

// openStore opens the bbolt state at path and its write-ahead log
// (path without ".db" + ".wal.0" and ".wal.1"), replaying into bbolt what
// the log holds beyond the last checkpoint.
func openStore(path string, log *slog.Logger, tune storeTuning) (*store, error) {
	if tune.walFileMax == 0 {
		tune.walFileMax = walFileMax
	}
	if tune.checkpointEvery == 0 {
		tune.checkpointEvery = checkpointEvery
	}
	// The freelist is rebuilt on open instead of written on every commit:
	// the store churns (a record per queued message), and writing the
	// freelist each time made commits grow with the file.
	db, err := bbolt.Open(path, 0o600, &bbolt.Options{Timeout: storeLockWait, NoFreelistSync: true, FreelistType: bbolt.FreelistMapType})
	if err != nil {
		return nil, fmt.Errorf("open state %s: %w (is another broker using it?)", path, err)
	}
	err = db.Update(func(tx *bbolt.Tx) error {
		b, err := tx.CreateBucketIfNotExists([]byte(bucketName))
		if err != nil {
			return err
		}
		v := b.Get([]byte(keyVersion))
		switch {
		case v == nil:
			if err := migrateV1(b, log); err != nil {
				return err
			}
			return b.Put([]byte(keyVersion), []byte(storeVersion))
		case string(v) == "2": // the same records, no log yet
			return b.Put([]byte(keyVersion), []byte(storeVersion))
		case string(v) != storeVersion:
			return fmt.Errorf("state format %q is newer than this broker understands (%s); run the newer fieldtrust", v, storeVersion)
		}
		return nil
	})
	if err != nil {
		_ = db.Close()
		return nil, fmt.Errorf("init state %s: %w", path, err)
	}
	w, applied, err := openWAL(db, strings.TrimSuffix(path, ".db")+".wal", tune, log)
	if err != nil {
		_ = db.Close()
		return nil, fmt.Errorf("state %s: %w", path, err)
	}
	ckpt := newCheckpointer(db, applied, tune.checkpointEvery, tune.crash, log)
	ckpt.obs = tune.observe
	w.checkpointed, w.obs, w.rounds = ckpt.waitApplied, tune.observe, &ckpt.rounds
	return &store{log: log, db: db, wal: w, ckpt: ckpt, j: newJournal(w, ckpt, tune.observe, log), pending: map[pendingKey]*pendingPut{}}, nil
}

func (s *store) close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.db == nil {
		return nil
	}
	s.j.close()    // logs everything queued
	s.ckpt.close() // applies it to bbolt
	err := s.db.Close()
	if werr := s.wal.close(); err == nil {
		err = werr
	}
	s.db = nil
	return err
}

// checkpoint returns once everything written before it is in bbolt (for
// reads of bbolt: tests, diagnostics).
func (s *store) checkpoint() error {
	if err := s.barrier(); err != nil {
		return err
	}
	return s.ckpt.waitApplied(s.j.logged.Load())
}

// barrier returns once everything written before it is durable.
func (s *store) barrier() error { return s.j.submit("barrier", nil, true) }

// afterDurable runs cb once everything written before it is durable.
func (s *store) afterDurable(cb func(error)) { s.j.then("acknowledge", cb) }

// notifyDurable is afterDurable for a notifier (no closure per PUBACK).
func (s *store) notifyDurable(n notifier) { s.j.notify("acknowledge", n) }

func (s *store) put(what, key string, v any) {
	data, err := encMode.Marshal(v)
	if err != nil {
		s.log.Error("broker store encode failed", "op", what, "error", err)
		return
	}
	_ = s.j.submit(what, func(dst []walMut) []walMut {
		return append(dst, walMut{op: mutPut, key: []byte(key), val: data})
	}, false)
}

func (s *store) del(what string, keys ...string) {
	_ = s.j.submit(what, func(dst []walMut) []walMut {
		for _, k := range keys {
			dst = append(dst, walMut{op: mutDelete, key: []byte(k)})
		}
		return dst
	}, false)
}

func (s *store) delPrefix(what string, prefixes ...string) {
	_ = s.j.submit(what, func(dst []walMut) []walMut {
		for _, p := range prefixes {
			dst = append(dst, walMut{op: mutDeletePrefix, key: []byte(p)})
		}
		return dst
	}, false)
}

func seqKey(sess string, seq uint64) string { return string(pendingKey{sess, seq}.appendTo(nil)) }

func midKey(mid uint64) string { return string(pendingKey{"", mid}.appendTo(nil)) }

func pidKey(sess string, pid uint16) string {
	return keyInbound + sess + sep + string([]byte{byte(pid >> 8), byte(pid)})
}

// putSession records a persistent session and its pending will. The
// caller holds s.mu.
func (st *store) putSession(s *session) {
	rec := sessionRecord{Subject: subjectKey(s.subject), ClientID: s.clientID, Version: s.version,
		Expiry: uint32(s.expiry / time.Second), NextSeq: s.nextSeq}
	if s.conn == nil {
		rec.DisconnectedAt = s.disconnectedAt.UnixMilli()
	}
	if w := s.will; w != nil {
		rec.Will = &willRecord{Publish: willPublish(w.will), Due: w.due.UnixMilli(), Chain: chainDER(w.cs)}
	}
	st.put("put session", keySession+s.key, rec)
}

// forgetSession deletes everything of a session, and the messages only it
// referred to. The caller holds s.mu.
func (st *store) forgetSession(s *session) {
	for _, d := range s.inflight {
		st.deleteDelivery(s, d)
	}
	for _, d := range s.queue.all() {
		st.deleteDelivery(s, d)
	}
	st.del("delete session", keySession+s.key)
	st.delPrefix("delete session state", keySub+s.key+sep, keyQueued+s.key+sep, keyInbound+s.key+sep)
}

func (st *store) putSubscription(s *session, sub *subscription) {
	st.put("put subscription", keySub+s.key+sep+sub.filter, subRecord{QoS: sub.qos, NoLocal: sub.noLocal,
		RAP: sub.retainAsPublished, RetainHandling: sub.retainHandling, ID: sub.id})
}

func (st *store) deleteSubscription(s *session, filter string) {
	st.del("delete subscription", keySub+s.key+sep+filter)
}

// putDelivery records (or re-records, with a new state) one delivery of a
// persistent session. The message itself is written once, however many
// sessions queue it; each delivery is a small reference. The caller holds
// s.mu.
func (st *store) putDelivery(s *session, d *delivery) {
	m := d.msg
	st.pmu.Lock()
	if m.mid == 0 {
		st.nextMID++
		m.mid = st.nextMID
		st.putPendingLocked("put message", pendingKey{"", m.mid}, m, deliveryRecord{})
	}
	if !d.stored {
		d.stored = true
		m.refs++
	}
	st.putPendingLocked("put delivery", pendingKey{s.key, d.seq}, nil, deliveryRecord{MID: m.mid, QoS: d.qos, Retain: d.retain,
		SubIDs: d.subIDs, PID: d.pid, State: d.state})
	st.pmu.Unlock()
}

// deleteDelivery forgets a stored delivery, and its message once no
// session refers to it. The caller holds s.mu.
func (st *store) deleteDelivery(s *session, d *delivery) {
	st.pmu.Lock()
	defer st.pmu.Unlock()
	if !d.stored {
		return
	}
	d.stored = false
	st.deletePendingLocked("delete delivery", pendingKey{s.key, d.seq})
	m := d.msg
	if m.refs--; m.refs == 0 {
		st.deletePendingLocked("delete message", pendingKey{"", m.mid})
		m.mid = 0
	}
}

// putPendingLocked queues a write of msg's record (msg set) or of rec
// that a later write or delete of the same key may still replace or
// cancel while it waits for the journal. The caller holds pmu.
func (st *store) putPendingLocked(what string, key pendingKey, msg *message, rec deliveryRecord) {
	if pp := st.pending[key]; pp != nil && !pp.applied {
		pp.msg, pp.rec = msg, rec // the queued write carries the newest state
		return
	}
	pp := &pendingPut{st: st, key: key, msg: msg, rec: rec}
	st.pending[key] = pp
	st.j.push(what, pp)
}

// resolve is the journal's resolver of a pending write: the record's
// newest state, unless cancelled, encoded into the batch's arena.
func (pp *pendingPut) resolve(dst []walMut, a *walArena) []walMut {
	if pp.del {
		return append(dst, walMut{op: mutDelete, key: pp.key.appendTo(a.take(pp.key.size()))})
	}
	st := pp.st
	st.pmu.Lock()
	if pp.canceled {
		st.pmu.Unlock()
		if st.j.obs != nil {
			st.j.obs.cancelled.Inc()
		}
		return dst
	}
	pp.applied = true
	if st.pending[pp.key] == pp {
		delete(st.pending, pp.key)
	}
	m := pp.msg
	a.delivery = pp.rec
	st.pmu.Unlock()
	if st.j.obs != nil {
		st.j.obs.logged.Inc()
	}
	val, err := a.encodePending(m)
	if err != nil {
		st.log.Error("broker store encode failed", "op", "put", "key", pp.key.sess, "error", err)
		return dst
	}
	return append(dst, walMut{op: mutPut, key: pp.key.appendTo(a.take(pp.key.size())), val: val})
}

// encodePending encodes a pending write's record into the arena: a message
// (read-only once accepted, so it may be read here without its session's
// lock) as its messageRecord, else a.delivery.
func (a *walArena) encodePending(m *message) ([]byte, error) {
	a.enc.Reset()
	var err error
	if m != nil {
		a.publish = appendMessagePublish(a.publish[:0], m)
		a.message = messageRecord{Publish: a.publish, Origin: m.origin, Created: m.created.UnixMilli()}
		if !m.expires.IsZero() {
			a.message.Expires = m.expires.UnixMilli()
		}
		err = encMode.MarshalToBuffer(&a.message, &a.enc)
		a.message = messageRecord{}
	} else {
		err = encMode.MarshalToBuffer(&a.delivery, &a.enc)
		a.delivery = deliveryRecord{} // drop the subscription ids' reference
	}
	if err != nil {
		return nil, err
	}
	return append(a.take(a.enc.Len()), a.enc.Bytes()...), nil
}

// deletePendingLocked cancels a queued write of key, or queues its
// deletion. The caller holds pmu.
func (st *store) deletePendingLocked(what string, key pendingKey) {
	if pp := st.pending[key]; pp != nil && !pp.applied {
		pp.canceled = true
		delete(st.pending, key)
		return
	}
	st.j.push(what, &pendingPut{st: st, key: key, del: true})
}

func (st *store) putInbound(s *session, pid uint16) {
	key := pidKey(s.key, pid)
	_ = st.j.submit("put inbound", func(dst []walMut) []walMut { return append(dst, walMut{op: mutPut, key: []byte(key)}) }, false)
}

func (st *store) deleteInbound(s *session, pid uint16) { st.del("delete inbound", pidKey(s.key, pid)) }

// putRetained records (or, for an empty payload, deletes) a retained
// message and who retained it (c nil: the platform).
func (st *store) putRetained(m *message, c *conn) {
	if c == nil {
		st.putRetainedFor(m, "", nil)
		return
	}
	cs := c.tlsState()
	st.putRetainedFor(m, c.id.key, &cs)
}

func (st *store) putRetainedFor(m *message, owner string, cs *tls.ConnectionState) {
	if len(m.payload) == 0 {
		st.del("delete retained", keyRetained+m.topic)
		return
	}
	rec := retainedRecord{Publish: messagePublish(m), Owner: owner, Created: m.created.UnixMilli()}
	if cs != nil {
		rec.Chain = chainDER(*cs)
	}
	if !m.expires.IsZero() {
		rec.Expires = m.expires.UnixMilli()
	}
	st.put("put retained", keyRetained+m.topic, rec)
}

// messagePublish encodes a message as an MQTT 5 PUBLISH.
func messagePublish(m *message) []byte { return appendMessagePublish(nil, m) }

func appendMessagePublish(dst []byte, m *message) []byte {
	p := packet.Publish{QoS: m.qos, Retain: m.retain, Topic: m.topic, Props: m.props, Payload: m.payload}
	if p.QoS > 0 {
		p.PacketID = 1
	}
	return packet.AppendPublish(dst, packet.V5, &p)
}

// willPublish encodes a will as an MQTT 5 PUBLISH (its delay is kept as
// the record's due time).
func willPublish(w *packet.Will) []byte {
	p := packet.Publish{QoS: w.QoS, Retain: w.Retain, Topic: w.Topic, Payload: w.Payload}
	for _, id := range []byte{packet.PropPayloadFormat, packet.PropMessageExpiry, packet.PropContentType,
		packet.PropResponseTopic, packet.PropCorrelationData} {
		if w.Props.Has(id) {
			p.Props.Set(id)
		}
	}
	p.Props.PayloadFormat, p.Props.MessageExpiry, p.Props.ContentType = w.Props.PayloadFormat, w.Props.MessageExpiry, w.Props.ContentType
	p.Props.ResponseTopic, p.Props.CorrelationData, p.Props.User = w.Props.ResponseTopic, w.Props.CorrelationData, w.Props.User
	if p.QoS > 0 {
		p.PacketID = 1
	}
	return packet.AppendPublish(nil, packet.V5, &p)
}

func decodePublish(b []byte) (*packet.Publish, error) {
	h, err := packet.ReadHeader(bytes.NewReader(b), 0)
	if err != nil {
		return nil, err
	}
	off := len(b) - h.Remaining
	p, err := packet.Decode(packet.V5, h, b[off:], true)
	if err != nil {
		return nil, err
	}
	pub, ok := p.(*packet.Publish)
	if !ok {
		return nil, fmt.Errorf("stored packet is %s, not PUBLISH", h.Type)
	}
	return pub, nil
}

func chainDER(cs tls.ConnectionState) [][]byte {
	if len(cs.VerifiedChains) == 0 {
		return nil
	}
	out := make([][]byte, len(cs.VerifiedChains[0]))
	for i, c := range cs.VerifiedChains[0] {
		out[i] = c.Raw
	}
	return out
}

// chainState rebuilds the TLS state Identify needs from a stored verified
// chain. The chain was verified when the connection was made; what
// Identify decides again is revocation and identity.
func chainState(ders [][]byte) (tls.ConnectionState, error) {
	if len(ders) == 0 {
		return tls.ConnectionState{}, errors.New("no stored chain")
	}
	chain := make([]*x509.Certificate, len(ders))
	for i, d := range ders {
		c, err := x509.ParseCertificate(d)
		if err != nil {
			return tls.ConnectionState{}, err
		}
		chain[i] = c
	}
	return identityState(chain[:1], [][]*x509.Certificate{chain}), nil
}

// subjectKey encodes a subject in a stored record: "PATH",
// "service:NAME:ROLE" or "site:PATH" (a site restored as a plain PATH
// would gain the account's rights).
func subjectKey(s tacs.Subject) string {
	if s.IsService() {
		return "service:" + s.Service + ":" + s.Role
	}
	if s.Site {
		return "site:" + s.Path
	}
	return s.Path
}

func parseSubjectKey(k string) (tacs.Subject, bool) {
	if rest, ok := strings.CutPrefix(k, "service:"); ok {
		name, role, ok := strings.Cut(rest, ":")
		subj := tacs.ServiceSubject(name, role)
		return subj, ok && subj.Validate() == nil
	}
	if path, ok := strings.CutPrefix(k, "site:"); ok {
		subj := tacs.SiteSubject(path)
		return subj, subj.Validate() == nil
	}
	subj := tacs.Account(k)
	return subj, subj.Validate() == nil
}

// restore loads the stored sessions and retained messages. Sessions are
// offline until their client reconnects; their expiry and pending wills
// resume from what was recorded.
func (b *Broker) restore() error {
	st := b.store
	st.mu.RLock()
	defer st.mu.RUnlock()
	now := time.Now()
	type loaded struct {
		s    *session
		dels []*delivery
		will *willRecord
	}
	sessions := map[string]*loaded{}
	messages := map[uint64]*message{}
	var bad []string
	err := st.db.View(func(tx *bbolt.Tx) error {
		c := tx.Bucket([]byte(bucketName)).Cursor()
		// Sessions first: the records that belong to them sort before
		// them ("i/", "q/" < "s/").
		var recs [][2][]byte
		for _, prefix := range []string{keySession, keyMessage, keySub, keyQueued, keyInbound, keyRetained} {
			for k, v := c.Seek([]byte(prefix)); k != nil && bytes.HasPrefix(k, []byte(prefix)); k, v = c.Next() {
				recs = append(recs, [2][]byte{k, v})
			}
		}
		for _, kv := range recs {
			key, v := string(kv[0]), kv[1]
			switch {
			case strings.HasPrefix(key, keySession):
				var rec sessionRecord
				if err := decMode.Unmarshal(v, &rec); err != nil {
					bad = append(bad, key)
					continue
				}
				subj, ok := parseSubjectKey(rec.Subject)
				if !ok {
					bad = append(bad, key)
					continue
				}
				skey := strings.TrimPrefix(key, keySession)
				b.mu.Lock()
				id := b.identityFor(subj)
				id.persistent++
				b.mu.Unlock()
				s := newSession(b, skey, rec.ClientID, subj, id)
				s.persistent, s.version, s.nextSeq = true, rec.Version, rec.NextSeq
				s.expiry = time.Duration(rec.Expiry) * time.Second
				s.disconnectedAt = now
				if rec.DisconnectedAt > 0 {
					s.disconnectedAt = time.UnixMilli(rec.DisconnectedAt)
				}
				sessions[skey] = &loaded{s: s, will: rec.Will}
			case strings.HasPrefix(key, keySub):
				skey, filter, _ := strings.Cut(strings.TrimPrefix(key, keySub), sep)
				l := sessions[skey]
				var rec subRecord
				if l == nil || decMode.Unmarshal(v, &rec) != nil {
					bad = append(bad, key)
					continue
				}
				topic, group, ok := splitShared(filter)
				if !ok {
					bad = append(bad, key)
					continue
				}
				if l.s.subs == nil {
					l.s.subs = map[string]*subscription{}
				}
				l.s.subs[filter] = &subscription{filter: filter, topic: topic, group: group, qos: rec.QoS, noLocal: rec.NoLocal,
					retainAsPublished: rec.RAP, retainHandling: rec.RetainHandling, id: rec.ID}
			case strings.HasPrefix(key, keyMessage):
				rest := strings.TrimPrefix(key, keyMessage)
				var rec messageRecord
				if len(rest) != 8 || decMode.Unmarshal(v, &rec) != nil {
					bad = append(bad, key)
					continue
				}
				p, err := decodePublish(rec.Publish)
				if err != nil {
					bad = append(bad, key)
					continue
				}
				m := newMessage(p.Topic, p.Payload, p.QoS, p.Retain, p.Props, rec.Origin, time.UnixMilli(rec.Created))
				if rec.Expires > 0 {
					m.expires = time.UnixMilli(rec.Expires)
				}
				m.mid = binary.BigEndian.Uint64([]byte(rest))
				messages[m.mid] = m
				st.nextMID = max(st.nextMID, m.mid)
			case strings.HasPrefix(key, keyQueued):
				rest := strings.TrimPrefix(key, keyQueued)
				if len(rest) < 9 {
					bad = append(bad, key)
					continue
				}
				skey, seq := rest[:len(rest)-9], binary.BigEndian.Uint64([]byte(rest[len(rest)-8:]))
				l := sessions[skey]
				var rec deliveryRecord
				if l == nil || decMode.Unmarshal(v, &rec) != nil || messages[rec.MID] == nil {
					bad = append(bad, key)
					continue
				}
				m := messages[rec.MID]
				m.refs++
				l.dels = append(l.dels, &delivery{msg: m, qos: rec.QoS, retain: rec.Retain, subIDs: rec.SubIDs, pid: rec.PID, state: rec.State, seq: seq, stored: true})
			case strings.HasPrefix(key, keyInbound):
				rest := strings.TrimPrefix(key, keyInbound)
				if len(rest) < 3 {
					bad = append(bad, key)
					continue
				}
				l := sessions[rest[:len(rest)-3]]
				if l == nil {
					bad = append(bad, key)
					continue
				}
				if l.s.inQoS2 == nil {
					l.s.inQoS2 = map[uint16]struct{}{}
				}
				l.s.inQoS2[uint16(rest[len(rest)-2])<<8|uint16(rest[len(rest)-1])] = struct{}{}
			case strings.HasPrefix(key, keyRetained):
				var rec retainedRecord
				if decMode.Unmarshal(v, &rec) != nil {
					bad = append(bad, key)
					continue
				}
				p, err := decodePublish(rec.Publish)
				if err != nil {
					bad = append(bad, key)
					continue
				}
				m := newMessage(p.Topic, p.Payload, p.QoS, true, p.Props, "", time.UnixMilli(rec.Created))
				if rec.Expires > 0 {
					m.expires = time.UnixMilli(rec.Expires)
				}
				var cs *tls.ConnectionState
				if len(rec.Chain) > 0 {
					state, err := chainState(rec.Chain)
					if err != nil {
						bad = append(bad, key)
						continue
					}
					cs = &state
				}
				b.retained.setFor(m, rec.Owner, cs)
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	for _, m := range messages {
		if m.refs == 0 { // its deliveries were deleted and a crash lost its deletion
			st.del("delete orphan message", midKey(m.mid))
		}
	}
	if len(bad) > 0 {
		// Unreadable records are reported and skipped, never silently: the
		// rest of the state is still restored.
		b.log.Error("broker store: skipped unreadable records", "count", len(bad), "first", logTopic(bad[0]))
	}
	for _, l := range sessions {
		s := l.s
		sort.Slice(l.dels, func(i, j int) bool { return l.dels[i].seq < l.dels[j].seq })
		for _, d := range l.dels {
			if d.seq >= s.nextSeq {
				s.nextSeq = d.seq + 1
			}
			s.load.Add(int64(d.msg.size))
			s.id.queued.Add(int64(d.msg.size))
			if d.state == stateQueued {
				s.queue.push(d)
			} else {
				if s.inflight == nil {
					s.inflight = map[uint16]*delivery{}
				}
				s.inflight[d.pid] = d
			}
		}
		for _, sub := range s.subs {
			b.subs.add(s, sub)
		}
		b.sessions[s.key] = s
		s.mu.Lock()
		if w := l.will; w != nil {
			b.restoreWill(s, w)
		}
		s.armExpiry()
		s.mu.Unlock()
	}
	if n := len(sessions); n > 0 || b.retained.count > 0 {
		b.log.Info("broker state restored", "sessions", n, "retained", b.retained.count)
	}
	return nil
}

// restoreWill re-arms a pending will from its record. The caller holds s.mu.
func (b *Broker) restoreWill(s *session, w *willRecord) {
	p, err := decodePublish(w.Publish)
	if err != nil {
		b.log.Error("broker store: unreadable will dropped", "client", s.clientID, "error", err)
		return
	}
	cs, err := chainState(w.Chain)
	if err != nil {
		b.log.Error("broker store: will without a readable chain dropped (it cannot be re-identified)", "client", s.clientID, "error", err)
		return
	}
	will := &packet.Will{QoS: p.QoS, Retain: p.Retain, Topic: p.Topic, Payload: p.Payload, Props: p.Props}
	pw := &pendingWill{will: will, subject: s.subject, origin: s.key, cs: cs, due: time.UnixMilli(w.Due)}
	s.will = pw
	s.willTimer = time.AfterFunc(time.Until(pw.due), func() {
		s.mu.Lock()
		if s.will != pw {
			s.mu.Unlock()
			return
		}
		s.will, s.willTimer = nil, nil
		b.store.putSession(s)
		s.mu.Unlock()
		b.sendWill(pw)
	})
}

// count returns how many records have prefix (tests, diagnostics).
func (st *store) count(prefix string) (int, error) {
	if err := st.checkpoint(); err != nil {
		return 0, err
	}
	st.mu.RLock()
	defer st.mu.RUnlock()
	if st.db == nil {
		return 0, errStoreClosed
	}
	n := 0
	err := st.db.View(func(tx *bbolt.Tx) error {
		c := tx.Bucket([]byte(bucketName)).Cursor()
		for k, _ := c.Seek([]byte(prefix)); k != nil && bytes.HasPrefix(k, []byte(prefix)); k, _ = c.Next() {
			n++
		}
		return nil
	})
	return n, err
}
