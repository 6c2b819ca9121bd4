package sqlite

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
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
	// valueStmts[i] inserts valueChunks[i] rows.
	valueStmts [len(valueChunks)]*sql.Stmt
	args       []any
}

// valueChunks are the row counts of the multi-row INSERTs that write a
// snapshot's values: 340 values take 2×128 + 2×32 + 2×8 + 4×1 statements.
var valueChunks = [...]int{128, 32, 8, 1}

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

// sqlValue is how a value is written: integral values within ±2^53 as
// INTEGER (compact, exact), everything else, including -0.0, as REAL.
func sqlValue(v float64) any {
	if v == math.Trunc(v) && math.Abs(v) <= 1<<53 && !(v == 0 && math.Signbit(v)) {
		return int64(v)
	}
	return v
}

// floatValue reverses sqlValue.
func floatValue(x any) (float64, error) {
	switch x := x.(type) {
	case int64:
		return float64(x), nil
	case float64:
		return x, nil
	}
	return 0, fmt.Errorf("snapshot value of type %T", x)
}

func (in *inserter) insertValues(snapshotID int64, chIDs []int64, values []snapshot.Value) error {
	for i := 0; i < len(values); {
		c := 0
		for len(values)-i < valueChunks[c] {
			c++
		}
		n := valueChunks[c]
		if in.valueStmts[c] == nil {
			q := `INSERT INTO snapshot_values (snapshot_id, channel_id, ord, value) VALUES ` +
				strings.TrimSuffix(strings.Repeat("(?, ?, ?, ?), ", n), ", ")
			stmt, err := in.tx.PrepareContext(in.ctx, q)
			if err != nil {
				return err
			}
			in.valueStmts[c] = stmt
		}
		args := in.args[:0]
		for j := i; j < i+n; j++ {
			args = append(args, snapshotID, chIDs[j], j, sqlValue(values[j].Value))
		}
		in.args = args
		if _, err := in.valueStmts[c].ExecContext(in.ctx, args...); err != nil {
			return err
		}
		i += n
	}
	return nil
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
	defer func() {
		for _, st := range in.valueStmts {
			if st != nil {
				st.Close()
			}
		}
	}()
	snapStmt, err := tx.PrepareContext(ctx, `INSERT INTO snapshots
		(device_id, seq, time, type_id, hash, prev, signer, signed_at, received_at, ledger_index)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (device_id, seq) DO NOTHING RETURNING id`)
	if err != nil {
		return nil, fmt.Errorf("insert snapshots: %w", err)
	}
	defer snapStmt.Close()
	heads := map[int64]*headUpdate{}
	var chIDs []int64
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
		var id int64
		err = snapStmt.QueryRowContext(ctx, devID, int64(r.Seq), r.Time.UnixMilli(), typeID, r.Hash, nullBytes(r.Prev),
			r.Signer, r.SignedAt.UnixMilli(), r.ReceivedAt.UnixMilli(), int64(r.LedgerIndex)).Scan(&id)
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
		chIDs = chIDs[:0]
		for _, v := range r.Values {
			c, err := in.channelID(v)
			if err != nil {
				return nil, fmt.Errorf("insert snapshot %s seq %d: %w", r.Path(), r.Seq, err)
			}
			chIDs = append(chIDs, c)
		}
		if err := in.insertValues(id, chIDs, r.Values); err != nil {
			return nil, fmt.Errorf("insert values of snapshot %s seq %d: %w", r.Path(), r.Seq, err)
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
	devIDs := make([]int64, 0, len(heads))
	for id := range heads {
		devIDs = append(devIDs, id)
	}
	slices.Sort(devIDs)
	for _, id := range devIDs {
		h := heads[id]
		if _, err := tx.ExecContext(ctx, `UPDATE devices SET snapshot_count = snapshot_count + ?1,
			type_id          = CASE WHEN ?2 > head_seq THEN ?3 ELSE type_id END,
			head_hash        = CASE WHEN ?2 > head_seq THEN ?4 ELSE head_hash END,
			head_time        = CASE WHEN ?2 > head_seq THEN ?5 ELSE head_time END,
			head_snapshot_id = CASE WHEN ?2 > head_seq THEN ?6 ELSE head_snapshot_id END,
			head_seq         = max(head_seq, ?2)
			WHERE id = ?7`, h.count, int64(h.seq), h.typeID, h.hash, h.time, h.snapshot, id); err != nil {
			return nil, fmt.Errorf("insert snapshots: update device head: %w", err)
		}
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

const snapshotColumns = `s.id, d.gateway, d.device, s.type_id, s.seq, s.time, s.hash, s.prev, s.signer, s.signed_at, s.received_at, s.ledger_index`

// scanSnapshots reads rows of snapshotColumns; ids are the snapshot ids.
func (s *Store) scanSnapshots(rows *sql.Rows) (recs []store.SnapshotRecord, ids []int64, typeIDs []int64, err error) {
	defer rows.Close()
	for rows.Next() {
		var r store.SnapshotRecord
		var id, typeID, seq, t, signed, received, ledger int64
		if err := rows.Scan(&id, &r.Gateway, &r.Device, &typeID, &seq, &t, &r.Hash, &r.Prev, &r.Signer, &signed, &received, &ledger); err != nil {
			return nil, nil, nil, err
		}
		r.Seq, r.Time, r.LedgerIndex = uint64(seq), time.UnixMilli(t).UTC(), uint64(ledger)
		r.SignedAt, r.ReceivedAt = time.UnixMilli(signed).UTC(), time.UnixMilli(received).UTC()
		recs = append(recs, r)
		ids = append(ids, id)
		typeIDs = append(typeIDs, typeID)
	}
	return recs, ids, typeIDs, rows.Err()
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

// fillValues reads the values (of channels chIDs, or all if nil) of the
// snapshots ids into recs, in received order, and sets each device type.
func (s *Store) fillValues(ctx context.Context, recs []store.SnapshotRecord, ids, typeIDs, chIDs []int64) error {
	if len(recs) == 0 {
		return nil
	}
	pos := make(map[int64]int, len(ids))
	for i, id := range ids {
		pos[id] = i
	}
	type ordValue struct {
		ord int64
		ch  int64
		v   float64
	}
	vals := make([][]ordValue, len(recs))
	var chFilter string
	var chArgs []any
	if chIDs != nil {
		chFilter = ` AND channel_id IN (` + placeholders(len(chIDs)) + `)`
		for _, c := range chIDs {
			chArgs = append(chArgs, c)
		}
	}
	const chunk = 500
	for start := 0; start < len(ids); start += chunk {
		part := ids[start:min(start+chunk, len(ids))]
		args := make([]any, 0, len(part)+len(chArgs))
		for _, id := range part {
			args = append(args, id)
		}
		args = append(args, chArgs...)
		rows, err := s.db.QueryContext(ctx, `SELECT snapshot_id, channel_id, ord, value FROM snapshot_values
			WHERE snapshot_id IN (`+placeholders(len(part))+`)`+chFilter, args...)
		if err != nil {
			return fmt.Errorf("snapshot values: %w", err)
		}
		for rows.Next() {
			var id int64
			var ov ordValue
			var raw any
			if err := rows.Scan(&id, &ov.ch, &ov.ord, &raw); err != nil {
				rows.Close()
				return fmt.Errorf("snapshot values: %w", err)
			}
			if ov.v, err = floatValue(raw); err != nil {
				rows.Close()
				return err
			}
			vals[pos[id]] = append(vals[pos[id]], ov)
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return fmt.Errorf("snapshot values: %w", err)
		}
	}
	for attempt := 0; ; attempt++ {
		missing := false
		s.nameCache.Read(func(r idcache.Reader[int64]) {
			for i := range recs {
				typ, ok := r.TypeName(typeIDs[i])
				recs[i].DeviceType = typ
				missing = missing || !ok
				vs := vals[i]
				slices.SortFunc(vs, func(a, b ordValue) int { return int(a.ord - b.ord) })
				recs[i].Values = make([]snapshot.Value, len(vs))
				for j, ov := range vs {
					v, ok := r.Value(ov.ch, ov.v)
					missing = missing || !ok
					recs[i].Values[j] = v
				}
			}
		})
		if !missing {
			return nil
		}
		if attempt > 0 {
			return fmt.Errorf("snapshot values: unknown channel or device type id")
		}
		if err := s.reloadNames(ctx); err != nil { // added by another process
			return fmt.Errorf("snapshot names: %w", err)
		}
	}
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

// QuerySnapshots implements store.Snapshots.
func (s *Store) QuerySnapshots(ctx context.Context, q store.SnapshotQuery) ([]store.SnapshotRecord, error) {
	where, args, err := scopeWhere("d.gateway", q.Scope)
	if err != nil {
		return nil, err
	}
	if q.Device != "" && q.Gateway == "" {
		return nil, fmt.Errorf("query snapshots: a device needs its gateway")
	}
	var chIDs []int64
	if len(q.Channels) > 0 {
		if chIDs, err = s.channelIDs(ctx, q.Channels); err != nil {
			return nil, fmt.Errorf("query snapshots: %w", err)
		}
		if len(chIDs) == 0 {
			return nil, nil
		}
	}
	var b strings.Builder
	b.WriteString(`SELECT ` + snapshotColumns + ` FROM snapshots s JOIN devices d ON d.id = s.device_id WHERE ` + where)
	order := ` ORDER BY s.time, d.gateway, d.device, s.seq`
	if q.Device != "" {
		// One device: find it first, so the (device_id, time, seq) index
		// gives the order without sorting.
		var devID int64
		err := s.db.QueryRowContext(ctx, `SELECT id FROM devices WHERE gateway = ? AND device = ?`, q.Gateway, q.Device).Scan(&devID)
		if errors.Is(err, sql.ErrNoRows) {
			return nil, nil
		}
		if err != nil {
			return nil, fmt.Errorf("query snapshots: %w", err)
		}
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
	if chIDs != nil {
		b.WriteString(` AND EXISTS (SELECT 1 FROM snapshot_values v WHERE v.snapshot_id = s.id AND v.channel_id IN (` + placeholders(len(chIDs)) + `))`)
		for _, c := range chIDs {
			args = append(args, c)
		}
	}
	b.WriteString(order + ` LIMIT ?`)
	args = append(args, store.EffectiveLimit(q.Limit))
	rows, err := s.db.QueryContext(ctx, b.String(), args...)
	if err != nil {
		return nil, fmt.Errorf("query snapshots: %w", err)
	}
	recs, ids, typeIDs, err := s.scanSnapshots(rows)
	if err != nil {
		return nil, fmt.Errorf("query snapshots: %w", err)
	}
	if err := s.fillValues(ctx, recs, ids, typeIDs, chIDs); err != nil {
		return nil, fmt.Errorf("query snapshots: %w", err)
	}
	return recs, nil
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
	recs, ids, typeIDs, err := s.scanSnapshots(rows)
	if err != nil {
		return nil, fmt.Errorf("latest snapshots: %w", err)
	}
	if err := s.fillValues(ctx, recs, ids, typeIDs, nil); err != nil {
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
	recs, ids, typeIDs, err := s.scanSnapshots(rows)
	if err != nil {
		return store.SnapshotRecord{}, fmt.Errorf("snapshot %x: %w", hash, err)
	}
	if len(recs) == 0 {
		return store.SnapshotRecord{}, fmt.Errorf("snapshot %x: %w", hash, store.ErrNotFound)
	}
	if err := s.fillValues(ctx, recs, ids, typeIDs, nil); err != nil {
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
