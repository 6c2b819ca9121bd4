package store

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/fieldtrust/fieldtrust/internal/ident"
	"github.com/fieldtrust/fieldtrust/internal/snapshot"
)

// SnapshotRecord is one accepted snapshot as the store keeps it: the
// snapshot's own fields (enough to re-encode it exactly, see Snapshot) and
// what ingest learned while accepting it.
//
// Times have millisecond precision and are returned in UTC.
type SnapshotRecord struct {
	Gateway    string // identity path of the gateway that published it, e.g. ms-acc-1/acc-1/gw-1
	Device     string // the measurement device's id behind the gateway
	DeviceType string // may be empty
	Seq        uint64 // per-device sequence number, from 1; at most 2^63-1
	Time       time.Time
	Hash       []byte           // SHA-256 of the snapshot's encoding
	Prev       []byte           // hash of the previous snapshot; nil for seq 1
	Values     []snapshot.Value // in the order received (the encoding's order)

	Signer      string    // the signer as ingest names it (e.g. its e2e certificate serial)
	SignedAt    time.Time // the signing time the signature carries
	ReceivedAt  time.Time // when ingest received it
	LedgerIndex uint64    // index of the ledger leaf that records it
}

// Snapshot returns the wire-format snapshot the record was made from:
// snapshot.Encode of it yields the bytes whose SHA-256 is r.Hash.
func (r SnapshotRecord) Snapshot() *snapshot.Snapshot {
	return &snapshot.Snapshot{
		Version: snapshot.Version, Device: r.Device, DeviceType: r.DeviceType,
		Seq: r.Seq, TimeMillis: r.Time.UnixMilli(), Prev: r.Prev, Values: r.Values,
	}
}

// Path returns the device's path, gateway path and device id joined by '/'.
func (r SnapshotRecord) Path() string { return r.Gateway + "/" + r.Device }

// Cursor returns the position just after r in QuerySnapshots order.
func (r SnapshotRecord) Cursor() *Cursor {
	return &Cursor{Time: r.Time, Gateway: r.Gateway, Device: r.Device, Seq: r.Seq}
}

// Cursor is a position in QuerySnapshots order: ascending by Time, then
// Gateway, Device and Seq, a total order since (Gateway, Device, Seq) is
// unique. Paging with the cursor of the last record of a page never skips
// or repeats a snapshot, even while new ones arrive.
type Cursor struct {
	Time    time.Time
	Gateway string
	Device  string
	Seq     uint64
}

// Device is a measurement device that has sent at least one snapshot.
type Device struct {
	Gateway    string
	Device     string
	DeviceType string    // of its latest snapshot
	LastSeq    uint64    // the head: the largest seq stored
	LastHash   []byte    // hash of the head snapshot
	LastTime   time.Time // measurement time of the head snapshot
	Snapshots  uint64    // number of snapshots stored
}

// Path returns the device's path, gateway path and device id joined by '/'.
func (d Device) Path() string { return d.Gateway + "/" + d.Device }

// Integrity event kinds. Ingest may record others; the store keeps any
// non-empty kind.
const (
	EventGap   = "gap"   // snapshots are missing before Seq (ExpectedSeq was due)
	EventStale = "stale" // Seq arrived after a later one (late, reordered or replayed)
	EventFork  = "fork"  // Seq conflicts with the stored chain
)

// IntegrityEvent is something wrong with a device's hash chain, recorded
// when ingest notices it.
type IntegrityEvent struct {
	Gateway     string
	Device      string // may be empty for an event about the gateway
	Kind        string
	Seq         uint64 // the offending snapshot's seq
	ExpectedSeq uint64 // what the chain expected; 0 if not applicable
	Hash        []byte // the offending snapshot's hash; may be nil
	Detail      string
	At          time.Time
}

// Reject is a message ingest could not accept (it would not open, verify or
// decode, or came from where it must not). Every arriving message is
// either stored or counted in a reject: nothing is lost silently.
//
// One record may stand for several messages: repeats of the same message
// (same Topic, Reason and RawHash) are aggregated into one record, and
// ingest summarizes what it will not record one by one (a flood beyond a
// device's reject budget) as a record without RawHash whose Count is the
// number of messages, Size their total length.
type Reject struct {
	Topic   string
	Gateway string // identity path, if the message revealed one; may be empty
	Reason  string
	RawHash []byte // SHA-256 of the message as received; nil for a summary
	Size    int    // its length in bytes (a summary: the total)
	At      time.Time
	// Count is the number of messages the record stands for; 0 means 1.
	Count int
	// LastAt is when the last of them arrived; zero means At.
	LastAt time.Time
}

// N returns the number of messages r stands for (at least 1).
func (r Reject) N() int { return max(r.Count, 1) }

// Last returns when the last message r stands for arrived.
func (r Reject) Last() time.Time {
	if r.LastAt.IsZero() {
		return r.At
	}
	return r.LastAt
}

// SnapshotQuery selects snapshots for QuerySnapshots.
type SnapshotQuery struct {
	// Scope limits the result to devices whose gateway path is Scope or
	// lies below it, element by element; "" means every device (admin).
	Scope string
	// Gateway and Device narrow to one gateway's devices or one device.
	// Empty means any. Device requires Gateway.
	Gateway string
	Device  string
	// From and To bound the measurement time: From <= Time < To. A zero
	// bound is open.
	From, To time.Time
	// Channels, if not empty, keeps only the values of these channel names
	// (in received order) and only snapshots that have at least one.
	Channels []string
	// Limit bounds the number of records; 0 means DefaultLimit, anything
	// above MaxLimit means MaxLimit.
	Limit int
	// After, if not nil, starts the page after this position (keyset
	// paging: pass the Cursor of the previous page's last record).
	After *Cursor
}

// Limits of list and query results.
const (
	DefaultLimit = 1000
	MaxLimit     = 10000
)

// EffectiveLimit returns the limit a query with limit n applies.
func EffectiveLimit(n int) int {
	switch {
	case n <= 0:
		return DefaultLimit
	case n > MaxLimit:
		return MaxLimit
	}
	return n
}

// Snapshots stores accepted snapshots, the integrity events of their hash
// chains and the messages ingest rejected, and answers the questions the
// API and the rules engine ask of them.
//
// Every read takes a scope (see SnapshotQuery.Scope): a customer's queries
// are limited to its own subtree by the store, not by each caller. A scope
// must be "" or an identity path of 1 to 3 valid elements; anything else is
// an error wrapping ErrInvalidScope.
type Snapshots interface {
	// InsertSnapshots stores recs in one transaction, all or nothing.
	// Ingest has verified and classified them; the store checks only
	// uniqueness. A record with the same (Gateway, Device, Seq, Hash) as a
	// stored one (or an earlier one in recs) is a redelivery: it is
	// skipped and reported false in inserted, which has one entry per
	// record. The same (Gateway, Device, Seq) with another hash fails the
	// whole call with an error wrapping ErrExists. A device's head moves
	// to the largest seq stored, so a late (stale) snapshot that fills a
	// gap does not move it back.
	InsertSnapshots(ctx context.Context, recs []SnapshotRecord) (inserted []bool, err error)
	// DeviceHead returns the seq and hash of the device's head (its largest
	// stored seq), or an error wrapping ErrNotFound if it has none.
	DeviceHead(ctx context.Context, gateway, device string) (seq uint64, hash []byte, err error)
	// RecordIntegrityEvent records an integrity event. Kind and Gateway
	// must not be empty; Detail is stored as SafeText of it.
	RecordIntegrityEvent(ctx context.Context, e IntegrityEvent) error
	// RecordReject records a rejected message (or r.N() of them). It
	// accepts any content (a reject is evidence, not validated input);
	// text is stored as SafeText of it. If the most recently recorded
	// reject with the same Topic, Reason and RawHash (nil matching nil) is
	// still stored, r is aggregated into it: its Count grows by r.N(), its
	// Size by r.Size if RawHash is nil, and its LastAt becomes r.Last().
	RecordReject(ctx context.Context, r Reject) error
	// TrimRejects deletes the oldest reject records (in recording order)
	// until at most keep remain, and returns how many it deleted: the
	// table of evidence is bounded whatever arrives.
	TrimRejects(ctx context.Context, keep int) (int, error)

	// ListDevices returns the devices in scope ordered by gateway path,
	// then device id.
	ListDevices(ctx context.Context, scope string) ([]Device, error)
	// QuerySnapshots returns the snapshots q selects in Cursor order.
	QuerySnapshots(ctx context.Context, q SnapshotQuery) ([]SnapshotRecord, error)
	// LatestSnapshots returns the head snapshot of every device in scope,
	// ordered like ListDevices: the latest status of a fleet.
	LatestSnapshots(ctx context.Context, scope string) ([]SnapshotRecord, error)
	// SnapshotByHash returns the snapshot in scope with the hash, or an
	// error wrapping ErrNotFound. Pass the gateway path of a ledger leaf as
	// scope to find exactly the snapshot the leaf records (two gateways'
	// devices could, in principle, send byte-identical snapshots).
	SnapshotByHash(ctx context.Context, scope string, hash []byte) (SnapshotRecord, error)
	// IntegrityEvents returns the events of devices in scope with
	// from <= At < to (zero bounds are open), oldest first, at most
	// EffectiveLimit(limit).
	IntegrityEvents(ctx context.Context, scope string, from, to time.Time, limit int) ([]IntegrityEvent, error)
	// Rejects returns the rejects with from <= At < to (zero bounds are
	// open), oldest first, at most EffectiveLimit(limit); Count is at
	// least 1 and LastAt is set in what it returns. Rejects may not
	// name a gateway, so they have no scope: the API shows them to admins
	// only.
	Rejects(ctx context.Context, from, to time.Time, limit int) ([]Reject, error)
}

// ErrInvalidScope is wrapped by the error of a read given a malformed scope.
var ErrInvalidScope = errors.New("invalid scope")

// ScopeRange checks scope and returns the half-open range [lo, hi) of
// paths strictly below it: a gateway path g is in scope if scope == "" or
// g == scope or lo <= g < hi (byte order). hi is lo with its final '/'
// replaced by '0', the next byte, so ms-acc-1 matches ms-acc-1/x but not
// ms-acc-10/x. Implementations compare with byte-wise (C) collation.
func ScopeRange(scope string) (lo, hi string, err error) {
	if scope == "" {
		return "", "", nil
	}
	if _, err := ident.SplitPath(scope); err != nil {
		return "", "", fmt.Errorf("%w: %v", ErrInvalidScope, err)
	}
	return scope + "/", scope + "0", nil
}

// InScope reports whether gateway path g is in scope (which must be valid).
func InScope(scope, g string) bool {
	return scope == "" || g == scope || strings.HasPrefix(g, scope+"/")
}

// SafeText returns s as valid UTF-8 without NUL bytes, each invalid byte
// sequence and NUL replaced by U+FFFD, so that any text received can be
// stored (PostgreSQL text refuses both) and reads back the same everywhere.
func SafeText(s string) string {
	return strings.ReplaceAll(strings.ToValidUTF8(s, "\uFFFD"), "\x00", "\uFFFD")
}
