package sqlite

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"maps"
	"math"
	"slices"
	"strings"
	"time"

	"github.com/fieldtrust/fieldtrust/internal/snapshot"
	"github.com/fieldtrust/fieldtrust/internal/store"
	"github.com/fieldtrust/fieldtrust/internal/store/idcache"
)

// The snapshot tables are described in migrations/0004_snapshots.sql.
//
// Names (device types, units, groups, channels, devices) map to ids that
// never change once committed, so each Store caches them (package idcache). Ids
// created inside a transaction enter the cache only after it commits: a
// rolled-back id may be reused for another name.

// inserter is the state of one InsertSnapshots transaction.
type inserter struct {
	ctx   context.Context
	tx    *sql.Tx
	names *idcache.Cache[int64]
	st    *idcache.Staged[int64]
}

func (in *inserter) nameID(table, name string) (int64, error) {
	k := idcache.Name{Table: table, Name: name}
	if id, ok := in.st.Names[k]; ok {
		return id, nil
	}
	id, ok := in.names.Name(k)
	if !ok {
		// table is one of three constants, never input.
		if _, err := in.tx.ExecContext(in.ctx, `INSERT INTO `+table+` (name) VALUES (?) ON CONFLICT (name) DO NOTHING`, name); err != nil {
			return 0, fmt.Errorf("%s %q: %w", table, name, err)
		}
		if err := in.tx.QueryRowContext(in.ctx, `SELECT id FROM `+table+` WHERE name = ?`, name).Scan(&id); err != nil {
			return 0, fmt.Errorf("%s %q: %w", table, name, err)
		}
	}
	in.st.Names[k] = id
	return id, nil
}

func (in *inserter) channelID(v snapshot.Value) (int64, error) {
	k := idcache.Channel{Name: v.Channel, Unit: v.Unit, Group: v.Group}
	if id, ok := in.st.Channels[k]; ok {
		return id, nil
	}
	id, ok := in.names.Channel(k)
	if !ok {
		unit, err := in.nameID("units", v.Unit)
		if err != nil {
			return 0, err
		}
		group, err := in.nameID("channel_groups", v.Group)
		if err != nil {
			return 0, err
		}
		if _, err := in.tx.ExecContext(in.ctx, `INSERT INTO channels (name, unit_id, group_id) VALUES (?, ?, ?)
			ON CONFLICT (name, unit_id, group_id) DO NOTHING`, v.Channel, unit, group); err != nil {
			return 0, fmt.Errorf("channel %q: %w", v.Channel, err)
		}
		if err := in.tx.QueryRowContext(in.ctx, `SELECT id FROM channels WHERE name = ? AND unit_id = ? AND group_id = ?`,
			v.Channel, unit, group).Scan(&id); err != nil {
			return 0, fmt.Errorf("channel %q: %w", v.Channel, err)
		}
	}
	in.st.Channels[k] = id
	return id, nil
}

func (in *inserter) deviceID(gateway, device string, typeID int64) (int64, error) {
	k := idcache.Device{Gateway: gateway, Device: device}
	if id, ok := in.st.Devices[k]; ok {
		return id, nil
	}
	id, ok := in.names.Device(k)
	if !ok {
		if _, err := in.tx.ExecContext(in.ctx, `INSERT INTO devices (gateway, device, type_id) VALUES (?, ?, ?)
			ON CONFLICT (gateway, device) DO NOTHING`, gateway, device, typeID); err != nil {
			return 0, fmt.Errorf("device %s/%s: %w", gateway, device, err)
		}
		if err := in.tx.QueryRowContext(in.ctx, `SELECT id FROM devices WHERE gateway = ? AND device = ?`, gateway, device).Scan(&id); err != nil {
			return 0, fmt.Errorf("device %s/%s: %w", gateway, device, err)
		}
	}
	in.st.Devices[k] = id
	return id, nil
}

// updateHeads moves the devices' heads and counts by what a batch stored,
// with one statement prepared for the batch (a batch of ingest touches
// about as many devices as it has snapshots; preparing the statement for
// each was a tenth of the insert). Devices are updated in id order.
func updateHeads(ctx context.Context, tx *sql.Tx, heads map[int64]*headUpdate) error {
	stmt, err := tx.PrepareContext(ctx, `UPDATE devices SET snapshot_count = snapshot_count + ?1,
		type_id          = CASE WHEN ?2 > head_seq THEN ?3 ELSE type_id END,
		head_hash        = CASE WHEN ?2 > head_seq THEN ?4 ELSE head_hash END,
		head_time        = CASE WHEN ?2 > head_seq THEN ?5 ELSE head_time END,
		head_snapshot_id = CASE WHEN ?2 > head_seq THEN ?6 ELSE head_snapshot_id END,
		head_seq         = max(head_seq, ?2)
		WHERE id = ?7`)
	if err != nil {
		return err
	}
	defer stmt.Close()
	for _, id := range slices.Sorted(maps.Keys(heads)) {
		h := heads[id]
		if _, err := stmt.ExecContext(ctx, h.count, int64(h.seq), h.typeID, h.hash, h.time, h.snapshot, id); err != nil {
			return err
		}
	}
	return nil
}

// sameChannel reports whether a and b name the same channel (the key of
// its id).
func sameChannel(a, b snapshot.Value) bool {
	return a.Channel == b.Channel && a.Unit == b.Unit && a.Group == b.Group
}

type headUpdate struct {
	count    int64
	seq      uint64
	hash     []byte
	time     int64
	typeID   int64
	snapshot int64
}

// InsertSnapshots implements store.Snapshots.
func (s *Store) InsertSnapshots(ctx context.Context, recs []store.SnapshotRecord) ([]bool, error) {
	inserted := make([]bool, len(recs))
	if len(recs) == 0 {
		return inserted, nil
	}
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return nil, fmt.Errorf("insert snapshots: %w", err)
	}
	defer tx.Rollback()
	in := &inserter{ctx: ctx, tx: tx, names: s.nameCache, st: idcache.NewStaged[int64]()}
	snapStmt, err := tx.PrepareContext(ctx, `INSERT INTO snapshots
		(device_id, seq, time, type_id, hash, prev, signer, signed_at, received_at, ledger_index, vals)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (device_id, seq) DO NOTHING RETURNING id`)
	if err != nil {
		return nil, fmt.Errorf("insert snapshots: %w", err)
	}
	defer snapStmt.Close()
	heads := map[int64]*headUpdate{}
	var chIDs, prevIDs []int64
	var vals []float64
	var blob []byte
	var prevVals []snapshot.Value // of the record before, whose ids chIDs holds
	for i, r := range recs {
		if r.Seq == 0 || r.Seq > math.MaxInt64 || r.LedgerIndex > math.MaxInt64 {
			return nil, fmt.Errorf("snapshot %s seq %d: seq or ledger index out of range", r.Path(), r.Seq)
		}
		typeID, err := in.nameID("device_types", r.DeviceType)
		if err != nil {
			return nil, fmt.Errorf("insert snapshot %s seq %d: %w", r.Path(), r.Seq, err)
		}
		devID, err := in.deviceID(r.Gateway, r.Device, typeID)
		if err != nil {
			return nil, fmt.Errorf("insert snapshot %s seq %d: %w", r.Path(), r.Seq, err)
		}
		// Snapshots of one batch mostly have the channels of the one
		// before, in the same order: their ids are reused without a lookup.
		prevIDs, chIDs = chIDs, prevIDs[:0]
		vals = vals[:0]
		for j, v := range r.Values {
			var c int64
			if j < len(prevIDs) && j < len(prevVals) && sameChannel(prevVals[j], v) {
				c = prevIDs[j]
			} else if c, err = in.channelID(v); err != nil {
				return nil, fmt.Errorf("insert snapshot %s seq %d: %w", r.Path(), r.Seq, err)
			}
			chIDs, vals = append(chIDs, c), append(vals, v.Value)
		}
		prevVals = r.Values
		blob = appendValues(blob[:0], chIDs, vals)
		var id int64
		err = snapStmt.QueryRowContext(ctx, devID, int64(r.Seq), r.Time.UnixMilli(), typeID, r.Hash, nullBytes(r.Prev),
			r.Signer, r.SignedAt.UnixMilli(), r.ReceivedAt.UnixMilli(), int64(r.LedgerIndex), blob).Scan(&id)
		if errors.Is(err, sql.ErrNoRows) {
			var hash []byte
			if err := tx.QueryRowContext(ctx, `SELECT hash FROM snapshots WHERE device_id = ? AND seq = ?`, devID, int64(r.Seq)).Scan(&hash); err != nil {
				return nil, fmt.Errorf("insert snapshot %s seq %d: %w", r.Path(), r.Seq, err)
			}
			if string(hash) != string(r.Hash) {
				return nil, fmt.Errorf("snapshot %s seq %d with hash %x: another hash (%x) is stored: %w", r.Path(), r.Seq, r.Hash, hash, store.ErrExists)
			}
			continue // a redelivery
		}
		if err != nil {
			return nil, fmt.Errorf("insert snapshot %s seq %d: %w", r.Path(), r.Seq, err)
		}
		inserted[i] = true
		h := heads[devID]
		if h == nil {
			h = &headUpdate{}
			heads[devID] = h
		}
		h.count++
		if r.Seq > h.seq {
			h.seq, h.hash, h.time, h.typeID, h.snapshot = r.Seq, r.Hash, r.Time.UnixMilli(), typeID, id
		}
	}
	if err := updateHeads(ctx, tx, heads); err != nil {
		return nil, fmt.Errorf("insert snapshots: update device heads: %w", err)
	}
	if err := tx.Commit(); err != nil {
		return nil, fmt.Errorf("insert snapshots: %w", err)
	}
	in.names.Merge(in.st)
	return inserted, nil
}

func nullBytes(b []byte) any {
	if len(b) == 0 {
		return nil
	}
	return b
}

// DeviceHead implements store.Snapshots.
func (s *Store) DeviceHead(ctx context.Context, gateway, device string) (uint64, []byte, error) {
	var seq int64
	var hash []byte
	err := s.db.QueryRowContext(ctx, `SELECT head_seq, head_hash FROM devices WHERE gateway = ? AND device = ? AND head_seq > 0`, gateway, device).Scan(&seq, &hash)
	if errors.Is(err, sql.ErrNoRows) {
		return 0, nil, fmt.Errorf("head of device %s/%s: %w", gateway, device, store.ErrNotFound)
	}
	if err != nil {
		return 0, nil, fmt.Errorf("head of device %s/%s: %w", gateway, device, err)
	}
	return uint64(seq), hash, nil
}

// RecordIntegrityEvent implements store.Snapshots.
func (s *Store) RecordIntegrityEvent(ctx context.Context, e store.IntegrityEvent) error {
	if e.Kind == "" || e.Gateway == "" {
		return fmt.Errorf("integrity event: kind and gateway are required")
	}
	_, err := s.db.ExecContext(ctx, `INSERT INTO integrity_events (gateway, device, kind, seq, expected_seq, hash, detail, at)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?)`, e.Gateway, e.Device, e.Kind, int64(e.Seq), int64(e.ExpectedSeq), nullBytes(e.Hash), store.SafeText(e.Detail), e.At.UnixMilli())
	if err != nil {
		return fmt.Errorf("record %s event of %s/%s: %w", e.Kind, e.Gateway, e.Device, err)
	}
	return nil
}

// RecordReject implements store.Snapshots.
func (s *Store) RecordReject(ctx context.Context, r store.Reject) error {
	topic, gateway, reason := store.SafeText(r.Topic), store.SafeText(r.Gateway), store.SafeText(r.Reason)
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("record reject on %s: %w", topic, err)
	}
	defer tx.Rollback()
	// The latest record with the same key takes the repeat. "IS" matches
	// NULL with NULL (a summary) and uses the index like "=".
	var id int64
	err = tx.QueryRowContext(ctx, `SELECT id FROM rejects WHERE topic = ? AND reason = ? AND raw_hash IS ? ORDER BY id DESC LIMIT 1`,
		topic, reason, nullBytes(r.RawHash)).Scan(&id)
	switch {
	case err == nil:
		size := 0
		if r.RawHash == nil {
			size = r.Size
		}
		_, err = tx.ExecContext(ctx, `UPDATE rejects SET count = count + ?, size = size + ?, last_at = max(coalesce(last_at, at), ?) WHERE id = ?`,
			r.N(), size, r.Last().UnixMilli(), id)
	case errors.Is(err, sql.ErrNoRows):
		_, err = tx.ExecContext(ctx, `INSERT INTO rejects (topic, gateway, reason, raw_hash, size, at, count, last_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)`,
			topic, gateway, reason, nullBytes(r.RawHash), r.Size, r.At.UnixMilli(), r.N(), r.Last().UnixMilli())
	}
	if err == nil {
		err = tx.Commit()
	}
	if err != nil {
		return fmt.Errorf("record reject on %s: %w", topic, err)
	}
	return nil
}

// TrimRejects implements store.Snapshots.
func (s *Store) TrimRejects(ctx context.Context, keep int) (int, error) {
	res, err := s.db.ExecContext(ctx, `DELETE FROM rejects WHERE id <= (SELECT id FROM rejects ORDER BY id DESC LIMIT 1 OFFSET ?)`, max(keep, 0))
	if err != nil {
		return 0, fmt.Errorf("trim rejects to %d: %w", keep, err)
	}
	n, err := res.RowsAffected()
	return int(n), err
}

// scopeWhere returns the SQL condition (on column col) and arguments that
// limit rows to scope.
func scopeWhere(col, scope string) (string, []any, error) {
	lo, hi, err := store.ScopeRange(scope)
	if err != nil {
		return "", nil, err
	}
	if scope == "" {
		return "1=1", nil, nil
	}
	return "(" + col + " = ? OR (" + col + " >= ? AND " + col + " < ?))", []any{scope, lo, hi}, nil
}

// ListDevices implements store.Snapshots.
func (s *Store) ListDevices(ctx context.Context, scope string) ([]store.Device, error) {
	where, args, err := scopeWhere("d.gateway", scope)
	if err != nil {
		return nil, err
	}
	rows, err := s.db.QueryContext(ctx, `SELECT d.gateway, d.device, t.name, d.head_seq, d.head_hash, d.head_time, d.snapshot_count
		FROM devices d JOIN device_types t ON t.id = d.type_id
		WHERE `+where+` AND d.head_seq > 0 ORDER BY d.gateway, d.device`, args...)
	if err != nil {
		return nil, fmt.Errorf("list devices: %w", err)
	}
	defer rows.Close()
	var out []store.Device
	for rows.Next() {
		var d store.Device
		var seq, t, n int64
		if err := rows.Scan(&d.Gateway, &d.Device, &d.DeviceType, &seq, &d.LastHash, &t, &n); err != nil {
			return nil, fmt.Errorf("list devices: %w", err)
		}
		d.LastSeq, d.LastTime, d.Snapshots = uint64(seq), time.UnixMilli(t).UTC(), uint64(n)
		out = append(out, d)
	}
	return out, rows.Err()
}

const snapshotColumns = `d.gateway, d.device, s.type_id, s.seq, s.time, s.hash, s.prev, s.signer, s.signed_at, s.received_at, s.ledger_index, s.vals`

// scanned is a snapshot row before its names are resolved.
type scanned struct {
	typeID int64
	vals   []byte
}

// scanSnapshots reads rows of snapshotColumns.
func (s *Store) scanSnapshots(rows *sql.Rows) (recs []store.SnapshotRecord, raw []scanned, err error) {
	defer rows.Close()
	for rows.Next() {
		var r store.SnapshotRecord
		var sc scanned
		var seq, t, signed, received, ledger int64
		if err := rows.Scan(&r.Gateway, &r.Device, &sc.typeID, &seq, &t, &r.Hash, &r.Prev, &r.Signer, &signed, &received, &ledger, &sc.vals); err != nil {
			return nil, nil, err
		}
		r.Seq, r.Time, r.LedgerIndex = uint64(seq), time.UnixMilli(t).UTC(), uint64(ledger)
		r.SignedAt, r.ReceivedAt = time.UnixMilli(signed).UTC(), time.UnixMilli(received).UTC()
		recs = append(recs, r)
		raw = append(raw, sc)
	}
	return recs, raw, rows.Err()
}

// reloadNames reads the channel and device type tables into the cache.
func (s *Store) reloadNames(ctx context.Context) error {
	st := idcache.NewStaged[int64]()
	rows, err := s.db.QueryContext(ctx, `SELECT id, name FROM device_types`)
	if err != nil {
		return err
	}
	for rows.Next() {
		var id int64
		var name string
		if err := rows.Scan(&id, &name); err != nil {
			rows.Close()
			return err
		}
		st.Names[idcache.Name{Table: idcache.DeviceTypes, Name: name}] = id
	}
	rows.Close()
	rows, err = s.db.QueryContext(ctx, `SELECT c.id, c.name, u.name, g.name FROM channels c
		JOIN units u ON u.id = c.unit_id JOIN channel_groups g ON g.id = c.group_id`)
	if err != nil {
		return err
	}
	defer rows.Close()
	for rows.Next() {
		var id int64
		var k idcache.Channel
		if err := rows.Scan(&id, &k.Name, &k.Unit, &k.Group); err != nil {
			return err
		}
		st.Channels[k] = id
	}
	if err := rows.Err(); err != nil {
		return err
	}
	s.nameCache.Merge(st)
	return nil
}

// fillValues decodes the values (of channels keep, or all if keep is nil)
// of the scanned rows into recs, in received order, and sets each device
// type; it drops the records left without values when keep is set.
func (s *Store) fillValues(ctx context.Context, recs []store.SnapshotRecord, raw []scanned, keep map[int64]bool) ([]store.SnapshotRecord, error) {
	type chValue struct {
		ch int64
		v  float64
	}
	vals := make([][]chValue, len(recs))
	for i := range raw {
		if err := decodeValues(raw[i].vals, func(ch int64, v float64) {
			if keep == nil || keep[ch] {
				vals[i] = append(vals[i], chValue{ch, v})
			}
		}); err != nil {
			return nil, fmt.Errorf("snapshot %s seq %d: %w", recs[i].Path(), recs[i].Seq, err)
		}
	}
	for attempt := 0; ; attempt++ {
		missing := false
		s.nameCache.Read(func(r idcache.Reader[int64]) {
			for i := range recs {
				typ, ok := r.TypeName(raw[i].typeID)
				recs[i].DeviceType = typ
				missing = missing || !ok
				recs[i].Values = make([]snapshot.Value, len(vals[i]))
				for j, cv := range vals[i] {
					v, ok := r.Value(cv.ch, cv.v)
					missing = missing || !ok
					recs[i].Values[j] = v
				}
			}
		})
		if !missing {
			break
		}
		if attempt > 0 {
			return nil, fmt.Errorf("snapshot values: unknown channel or device type id")
		}
		if err := s.reloadNames(ctx); err != nil { // added by another process
			return nil, fmt.Errorf("snapshot names: %w", err)
		}
	}
	if keep == nil {
		return recs, nil
	}
	return slices.DeleteFunc(recs, func(r store.SnapshotRecord) bool { return len(r.Values) == 0 }), nil
}

func placeholders(n int) string {
	return strings.TrimSuffix(strings.Repeat("?,", n), ",")
}

// channelIDs returns the ids of every channel with one of the names (a
// name may have several units or groups).
func (s *Store) channelIDs(ctx context.Context, names []string) ([]int64, error) {
	want := map[string]bool{}
	for _, name := range names {
		want[name] = true
	}
	ids, complete := s.nameCache.ChannelsNamed(want)
	if !complete { // another process may have added channels
		if err := s.reloadNames(ctx); err != nil {
			return nil, err
		}
		ids, _ = s.nameCache.ChannelsNamed(want)
	}
	slices.Sort(ids)
	return ids, nil
}

// QuerySnapshots implements store.Snapshots. A channel filter is applied
// to the decoded values (a snapshot's values are one blob): pages are read
// in cursor order until the limit is filled or the range is exhausted.
func (s *Store) QuerySnapshots(ctx context.Context, q store.SnapshotQuery) ([]store.SnapshotRecord, error) {
	if _, _, err := store.ScopeRange(q.Scope); err != nil {
		return nil, err
	}
	if q.Device != "" && q.Gateway == "" {
		return nil, fmt.Errorf("query snapshots: a device needs its gateway")
	}
	var keep map[int64]bool
	if len(q.Channels) > 0 {
		chIDs, err := s.channelIDs(ctx, q.Channels)
		if err != nil {
			return nil, fmt.Errorf("query snapshots: %w", err)
		}
		if len(chIDs) == 0 {
			return nil, nil
		}
		keep = map[int64]bool{}
		for _, c := range chIDs {
			keep[c] = true
		}
	}
	var devID int64
	if q.Device != "" {
		// One device: find it first, so the (device_id, time, seq) index
		// gives the order without sorting.
		err := s.db.QueryRowContext(ctx, `SELECT id FROM devices WHERE gateway = ? AND device = ?`, q.Gateway, q.Device).Scan(&devID)
		if errors.Is(err, sql.ErrNoRows) {
			return nil, nil
		}
		if err != nil {
			return nil, fmt.Errorf("query snapshots: %w", err)
		}
	}
	limit := store.EffectiveLimit(q.Limit)
	var out []store.SnapshotRecord
	for {
		recs, raw, err := s.snapshotPage(ctx, q, devID, limit)
		if err != nil {
			return nil, fmt.Errorf("query snapshots: %w", err)
		}
		full := len(recs) == limit
		var last *store.Cursor
		if full {
			last = recs[len(recs)-1].Cursor()
		}
		if recs, err = s.fillValues(ctx, recs, raw, keep); err != nil {
			return nil, fmt.Errorf("query snapshots: %w", err)
		}
		out = append(out, recs...)
		if len(out) >= limit || !full {
			return out[:min(len(out), limit)], nil
		}
		q.After = last
	}
}

// snapshotPage reads up to limit rows of q in cursor order (devID: q's
// device, if it names one).
func (s *Store) snapshotPage(ctx context.Context, q store.SnapshotQuery, devID int64, limit int) ([]store.SnapshotRecord, []scanned, error) {
	where, args, err := scopeWhere("d.gateway", q.Scope)
	if err != nil {
		return nil, nil, err
	}
	var b strings.Builder
	b.WriteString(`SELECT ` + snapshotColumns + ` FROM snapshots s JOIN devices d ON d.id = s.device_id WHERE ` + where)
	order := ` ORDER BY s.time, d.gateway, d.device, s.seq`
	if q.Device != "" {
		b.WriteString(` AND s.device_id = ?`)
		args = append(args, devID)
		order = ` ORDER BY s.time, s.seq`
	} else if q.Gateway != "" {
		b.WriteString(` AND d.gateway = ?`)
		args = append(args, q.Gateway)
	}
	if !q.From.IsZero() {
		b.WriteString(` AND s.time >= ?`)
		args = append(args, q.From.UnixMilli())
	}
	if !q.To.IsZero() {
		b.WriteString(` AND s.time < ?`)
		args = append(args, q.To.UnixMilli())
	}
	if a := q.After; a != nil {
		t, seq := a.Time.UnixMilli(), int64(min(a.Seq, math.MaxInt64))
		switch {
		case q.Device == "":
			b.WriteString(` AND (s.time, d.gateway, d.device, s.seq) > (?, ?, ?, ?)`)
			args = append(args, t, a.Gateway, a.Device, seq)
		case a.Gateway == q.Gateway && a.Device == q.Device:
			b.WriteString(` AND (s.time, s.seq) > (?, ?)`)
			args = append(args, t, seq)
		case a.Gateway < q.Gateway || a.Gateway == q.Gateway && a.Device < q.Device:
			b.WriteString(` AND s.time >= ?`) // the cursor's device sorts first
			args = append(args, t)
		default:
			b.WriteString(` AND s.time > ?`)
			args = append(args, t)
		}
	}
	b.WriteString(order + ` LIMIT ?`)
	args = append(args, limit)
	rows, err := s.db.QueryContext(ctx, b.String(), args...)
	if err != nil {
		return nil, nil, err
	}
	return s.scanSnapshots(rows)
}

// LatestSnapshots implements store.Snapshots.
func (s *Store) LatestSnapshots(ctx context.Context, scope string) ([]store.SnapshotRecord, error) {
	where, args, err := scopeWhere("d.gateway", scope)
	if err != nil {
		return nil, err
	}
	rows, err := s.db.QueryContext(ctx, `SELECT `+snapshotColumns+` FROM devices d JOIN snapshots s ON s.id = d.head_snapshot_id
		WHERE `+where+` ORDER BY d.gateway, d.device`, args...)
	if err != nil {
		return nil, fmt.Errorf("latest snapshots: %w", err)
	}
	recs, raw, err := s.scanSnapshots(rows)
	if err != nil {
		return nil, fmt.Errorf("latest snapshots: %w", err)
	}
	if recs, err = s.fillValues(ctx, recs, raw, nil); err != nil {
		return nil, fmt.Errorf("latest snapshots: %w", err)
	}
	return recs, nil
}

// SnapshotByHash implements store.Snapshots.
func (s *Store) SnapshotByHash(ctx context.Context, scope string, hash []byte) (store.SnapshotRecord, error) {
	where, args, err := scopeWhere("d.gateway", scope)
	if err != nil {
		return store.SnapshotRecord{}, err
	}
	rows, err := s.db.QueryContext(ctx, `SELECT `+snapshotColumns+` FROM snapshots s JOIN devices d ON d.id = s.device_id
		WHERE s.hash = ? AND `+where+` ORDER BY s.id LIMIT 1`, append([]any{hash}, args...)...)
	if err != nil {
		return store.SnapshotRecord{}, fmt.Errorf("snapshot %x: %w", hash, err)
	}
	recs, raw, err := s.scanSnapshots(rows)
	if err != nil {
		return store.SnapshotRecord{}, fmt.Errorf("snapshot %x: %w", hash, err)
	}
	if len(recs) == 0 {
		return store.SnapshotRecord{}, fmt.Errorf("snapshot %x: %w", hash, store.ErrNotFound)
	}
	if recs, err = s.fillValues(ctx, recs, raw, nil); err != nil {
		return store.SnapshotRecord{}, fmt.Errorf("snapshot %x: %w", hash, err)
	}
	return recs[0], nil
}

// timeRange appends the conditions from <= col < to (zero bounds open).
func timeRange(b *strings.Builder, args []any, col string, from, to time.Time) []any {
	if !from.IsZero() {
		b.WriteString(` AND ` + col + ` >= ?`)
		args = append(args, from.UnixMilli())
	}
	if !to.IsZero() {
		b.WriteString(` AND ` + col + ` < ?`)
		args = append(args, to.UnixMilli())
	}
	return args
}

// IntegrityEvents implements store.Snapshots.
func (s *Store) IntegrityEvents(ctx context.Context, scope string, from, to time.Time, limit int) ([]store.IntegrityEvent, error) {
	where, args, err := scopeWhere("gateway", scope)
	if err != nil {
		return nil, err
	}
	var b strings.Builder
	b.WriteString(`SELECT gateway, device, kind, seq, expected_seq, hash, detail, at FROM integrity_events WHERE ` + where)
	args = timeRange(&b, args, "at", from, to)
	b.WriteString(` ORDER BY at, id LIMIT ?`)
	args = append(args, store.EffectiveLimit(limit))
	rows, err := s.db.QueryContext(ctx, b.String(), args...)
	if err != nil {
		return nil, fmt.Errorf("integrity events: %w", err)
	}
	defer rows.Close()
	var out []store.IntegrityEvent
	for rows.Next() {
		var e store.IntegrityEvent
		var seq, exp, at int64
		if err := rows.Scan(&e.Gateway, &e.Device, &e.Kind, &seq, &exp, &e.Hash, &e.Detail, &at); err != nil {
			return nil, fmt.Errorf("integrity events: %w", err)
		}
		e.Seq, e.ExpectedSeq, e.At = uint64(seq), uint64(exp), time.UnixMilli(at).UTC()
		out = append(out, e)
	}
	return out, rows.Err()
}

// Rejects implements store.Snapshots.
func (s *Store) Rejects(ctx context.Context, from, to time.Time, limit int) ([]store.Reject, error) {
	var b strings.Builder
	b.WriteString(`SELECT topic, gateway, reason, raw_hash, size, at, count, coalesce(last_at, at) FROM rejects WHERE 1=1`)
	args := timeRange(&b, nil, "at", from, to)
	b.WriteString(` ORDER BY at, id LIMIT ?`)
	args = append(args, store.EffectiveLimit(limit))
	rows, err := s.db.QueryContext(ctx, b.String(), args...)
	if err != nil {
		return nil, fmt.Errorf("rejects: %w", err)
	}
	defer rows.Close()
	var out []store.Reject
	for rows.Next() {
		var r store.Reject
		var at, last int64
		if err := rows.Scan(&r.Topic, &r.Gateway, &r.Reason, &r.RawHash, &r.Size, &at, &r.Count, &last); err != nil {
			return nil, fmt.Errorf("rejects: %w", err)
		}
		r.At, r.LastAt = time.UnixMilli(at).UTC(), time.UnixMilli(last).UTC()
		out = append(out, r)
	}
	return out, rows.Err()
}
