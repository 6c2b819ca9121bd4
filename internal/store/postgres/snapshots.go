package postgres

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"math"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/fieldtrust/fieldtrust/internal/snapshot"
	"github.com/fieldtrust/fieldtrust/internal/store"
	"github.com/fieldtrust/fieldtrust/internal/store/idcache"
)

// The snapshot tables are described in migrations/0004_snapshots.sql.
//
// Names (device types, units, groups, channels, devices) map to ids that
// never change once committed, so the Store caches them (package idcache).
//
// A batch's new names are made before its snapshot transaction begins
// (makeNames), each in a statement of its own that commits at once, in one
// order every writer follows (table by table, names sorted). Made inside the
// transaction, a new name's index entry was held until the commit, so two
// concurrent inserts that met the same new names in opposite orders could
// each wait for the other (a deadlock, SQLSTATE 40P01). The snapshot
// transaction only reads ids, from the cache.

// nameTables are the name tables in the order makeNames fills them.
var nameTables = [...]string{idcache.DeviceTypes, "units", "channel_groups"}

// batchIDs are the ids of a batch's names, by record (and value).
type batchIDs struct {
	types, devs []int32
	chans       [][]int32
}

// cachedIDs looks the names of recs up in the cache; ok is false if one
// is not there (makeNames makes it).
func (s *Store) cachedIDs(recs []store.SnapshotRecord) (ids batchIDs, ok bool) {
	ids = batchIDs{types: make([]int32, len(recs)), devs: make([]int32, len(recs)), chans: make([][]int32, len(recs))}
	for i, r := range recs {
		if ids.types[i], ok = s.names.Name(idcache.Name{Table: idcache.DeviceTypes, Name: r.DeviceType}); !ok {
			return ids, false
		}
		if ids.devs[i], ok = s.names.Device(idcache.Device{Gateway: r.Gateway, Device: r.Device}); !ok {
			return ids, false
		}
		ch := make([]int32, len(r.Values))
		for j, v := range r.Values {
			if ch[j], ok = s.names.Channel(idcache.Channel{Name: v.Channel, Unit: v.Unit, Group: v.Group}); !ok {
				return ids, false
			}
		}
		ids.chans[i] = ch
	}
	return ids, true
}

// makeNames makes the names of recs that are not cached yet and caches
// them. A made name stays even if the batch is not stored: names are only
// names, and every one of them came with a verified snapshot.
func (s *Store) makeNames(ctx context.Context, recs []store.SnapshotRecord) error {
	var names []idcache.Name
	var chans []idcache.Channel
	var devs []idcache.Device
	seen := map[idcache.Name]bool{}
	newName := func(k idcache.Name) {
		if _, ok := s.names.Name(k); !ok && !seen[k] {
			seen[k] = true
			names = append(names, k)
		}
	}
	seenChan := map[idcache.Channel]bool{}
	seenDev := map[idcache.Device]bool{}
	for _, r := range recs {
		newName(idcache.Name{Table: idcache.DeviceTypes, Name: r.DeviceType})
		if k := (idcache.Device{Gateway: r.Gateway, Device: r.Device}); !seenDev[k] {
			if _, ok := s.names.Device(k); !ok {
				seenDev[k] = true
				devs = append(devs, k)
			}
		}
		for _, v := range r.Values {
			k := idcache.Channel{Name: v.Channel, Unit: v.Unit, Group: v.Group}
			if _, ok := s.names.Channel(k); ok || seenChan[k] {
				continue
			}
			seenChan[k] = true
			chans = append(chans, k)
			newName(idcache.Name{Table: "units", Name: v.Unit})
			newName(idcache.Name{Table: "channel_groups", Name: v.Group})
		}
	}
	if len(names)+len(chans)+len(devs) == 0 {
		return nil
	}
	tableOrder := func(t string) int { return slices.Index(nameTables[:], t) }
	slices.SortFunc(names, func(a, b idcache.Name) int {
		return cmp.Or(cmp.Compare(tableOrder(a.Table), tableOrder(b.Table)), strings.Compare(a.Name, b.Name))
	})
	slices.SortFunc(chans, func(a, b idcache.Channel) int {
		return cmp.Or(strings.Compare(a.Name, b.Name), strings.Compare(a.Unit, b.Unit), strings.Compare(a.Group, b.Group))
	})
	slices.SortFunc(devs, func(a, b idcache.Device) int {
		return cmp.Or(strings.Compare(a.Gateway, b.Gateway), strings.Compare(a.Device, b.Device))
	})
	made := idcache.NewStaged[int32]()
	defer s.names.Merge(made) // what was made is committed, even after an error
	for _, k := range names {
		// k.Table is one of nameTables, never input.
		id, err := s.makeName(ctx, `INSERT INTO `+k.Table+` (name) VALUES ($1) ON CONFLICT (name) DO NOTHING RETURNING id`,
			`SELECT id FROM `+k.Table+` WHERE name = $1`, 1, k.Name)
		if err != nil {
			return fmt.Errorf("%s %q: %w", k.Table, k.Name, err)
		}
		made.Names[k] = id
	}
	nameID := func(table, name string) (int32, error) {
		k := idcache.Name{Table: table, Name: name}
		if id, ok := made.Names[k]; ok {
			return id, nil
		}
		if id, ok := s.names.Name(k); ok {
			return id, nil
		}
		return 0, fmt.Errorf("%s %q: neither cached nor made", table, name) // cannot happen: collected above
	}
	for _, k := range chans {
		unit, err := nameID("units", k.Unit)
		if err != nil {
			return err
		}
		group, err := nameID("channel_groups", k.Group)
		if err != nil {
			return err
		}
		id, err := s.makeName(ctx, `INSERT INTO channels (name, unit_id, group_id) VALUES ($1, $2, $3)
			ON CONFLICT (name, unit_id, group_id) DO NOTHING RETURNING id`,
			`SELECT id FROM channels WHERE name = $1 AND unit_id = $2 AND group_id = $3`, 3, k.Name, unit, group)
		if err != nil {
			return fmt.Errorf("channel %q: %w", k.Name, err)
		}
		made.Channels[k] = id
	}
	types := map[idcache.Device]string{}
	for _, r := range recs {
		k := idcache.Device{Gateway: r.Gateway, Device: r.Device}
		if _, ok := types[k]; !ok {
			types[k] = r.DeviceType // the first snapshot's; the insert sets the head's
		}
	}
	for _, k := range devs {
		typeID, err := nameID(idcache.DeviceTypes, types[k])
		if err != nil {
			return err
		}
		id, err := s.makeName(ctx, `INSERT INTO devices (gateway, device, type_id) VALUES ($1, $2, $3)
			ON CONFLICT (gateway, device) DO NOTHING RETURNING id`,
			`SELECT id FROM devices WHERE gateway = $1 AND device = $2`, 2, k.Gateway, k.Device, typeID)
		if err != nil {
			return fmt.Errorf("device %s/%s: %w", k.Gateway, k.Device, err)
		}
		made.Devices[k] = id
	}
	return nil
}

// makeName runs insert, a statement of its own that commits at once, and
// returns the id it made, or the id reread finds if the row was there (or
// was committed by another writer the insert waited for). The reread is a
// statement of its own: the insert's snapshot predates that writer's commit.
// The reread takes the first n of args.
func (s *Store) makeName(ctx context.Context, insert, reread string, n int, args ...any) (int32, error) {
	var id int32
	err := s.pool.QueryRow(ctx, insert, args...).Scan(&id)
	if errors.Is(err, pgx.ErrNoRows) {
		err = s.pool.QueryRow(ctx, reread, args[:n]...).Scan(&id)
	}
	return id, err
}

type headUpdate struct {
	count    int64
	seq      uint64
	hash     []byte
	time     time.Time
	typeID   int32
	snapshot int64
}

// InsertSnapshots implements store.Snapshots. Names are resolved first
// (from the cache, almost always; new ones are made before the transaction:
// makeNames); then every snapshot row, values included, goes to the server
// in one pipelined batch.
func (s *Store) InsertSnapshots(ctx context.Context, recs []store.SnapshotRecord) ([]bool, error) {
	inserted := make([]bool, len(recs))
	if len(recs) == 0 {
		return inserted, nil
	}
	for _, r := range recs {
		if r.Seq == 0 || r.Seq > math.MaxInt64 || r.LedgerIndex > math.MaxInt64 {
			return nil, fmt.Errorf("snapshot %s seq %d: seq or ledger index out of range", r.Path(), r.Seq)
		}
	}
	nid, ok := s.cachedIDs(recs)
	if !ok {
		if err := s.makeNames(ctx, recs); err != nil {
			return nil, fmt.Errorf("insert snapshots: names: %w", err)
		}
		if nid, ok = s.cachedIDs(recs); !ok {
			return nil, errors.New("insert snapshots: a name was made but is not cached") // cannot happen
		}
	}
	tx, err := s.pool.Begin(ctx)
	if err != nil {
		return nil, fmt.Errorf("insert snapshots: %w", err)
	}
	defer tx.Rollback(ctx)
	devIDs, typeIDs := nid.devs, nid.types
	var b pgx.Batch
	for i, r := range recs {
		vals := make([]float64, len(r.Values))
		for j, v := range r.Values {
			vals[j] = v.Value
		}
		b.Queue(`INSERT INTO snapshots (device_id, seq, time, type_id, hash, prev, signer, signed_at, received_at, ledger_index, channel_ids, vals)
			VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) ON CONFLICT (device_id, seq) DO NOTHING RETURNING id`,
			devIDs[i], int64(r.Seq), millis(r.Time), typeIDs[i], r.Hash, nullBytes(r.Prev), r.Signer,
			millis(r.SignedAt), millis(r.ReceivedAt), int64(r.LedgerIndex), nid.chans[i], vals)
	}
	ids := make([]int64, len(recs))
	br := tx.SendBatch(ctx, &b)
	for i, r := range recs {
		err := br.QueryRow().Scan(&ids[i])
		if errors.Is(err, pgx.ErrNoRows) {
			continue // checked below
		}
		if err != nil {
			br.Close()
			return nil, fmt.Errorf("insert snapshot %s seq %d: %w", r.Path(), r.Seq, err)
		}
		inserted[i] = true
	}
	if err := br.Close(); err != nil {
		return nil, fmt.Errorf("insert snapshots: %w", err)
	}
	heads := map[int32]*headUpdate{}
	for i, r := range recs {
		if !inserted[i] {
			var hash []byte
			if err := tx.QueryRow(ctx, `SELECT hash FROM snapshots WHERE device_id = $1 AND seq = $2`, devIDs[i], int64(r.Seq)).Scan(&hash); err != nil {
				return nil, fmt.Errorf("insert snapshot %s seq %d: %w", r.Path(), r.Seq, err)
			}
			if string(hash) != string(r.Hash) {
				return nil, fmt.Errorf("snapshot %s seq %d with hash %x: another hash (%x) is stored: %w", r.Path(), r.Seq, r.Hash, hash, store.ErrExists)
			}
			continue // a redelivery
		}
		h := heads[devIDs[i]]
		if h == nil {
			h = &headUpdate{}
			heads[devIDs[i]] = h
		}
		h.count++
		if r.Seq > h.seq {
			h.seq, h.hash, h.time, h.typeID, h.snapshot = r.Seq, r.Hash, millis(r.Time), typeIDs[i], ids[i]
		}
	}
	devs := make([]int32, 0, len(heads))
	for id := range heads {
		devs = append(devs, id)
	}
	slices.Sort(devs) // a fixed lock order between concurrent writers
	// One statement for all the batch's devices (a batch of ingest touches
	// about as many devices as it has snapshots; a statement each was a
	// tenth of the server's work). The rows are locked first in id order,
	// the order concurrent writers agree on, which the plan of a joined
	// UPDATE does not promise.
	if _, err := tx.Exec(ctx, `SELECT 1 FROM devices WHERE id = ANY($1) ORDER BY id FOR NO KEY UPDATE`, devs); err != nil {
		return nil, fmt.Errorf("insert snapshots: lock device heads: %w", err)
	}
	n := len(devs)
	counts, seqs, types, times, snaps := make([]int64, n), make([]int64, n), make([]int32, n), make([]time.Time, n), make([]int64, n)
	hashes := make([][]byte, n)
	for i, id := range devs {
		h := heads[id]
		counts[i], seqs[i], types[i], hashes[i], times[i], snaps[i] = h.count, int64(h.seq), h.typeID, h.hash, h.time, h.snapshot
	}
	if _, err := tx.Exec(ctx, `UPDATE devices SET snapshot_count = snapshot_count + u.n,
		type_id          = CASE WHEN u.seq > head_seq THEN u.type ELSE type_id END,
		head_hash        = CASE WHEN u.seq > head_seq THEN u.hash ELSE head_hash END,
		head_time        = CASE WHEN u.seq > head_seq THEN u.time ELSE head_time END,
		head_snapshot_id = CASE WHEN u.seq > head_seq THEN u.snap ELSE head_snapshot_id END,
		head_seq         = greatest(head_seq, u.seq)
		FROM unnest($1::integer[], $2::bigint[], $3::bigint[], $4::integer[], $5::bytea[], $6::timestamptz[], $7::bigint[]) AS u (dev, n, seq, type, hash, time, snap)
		WHERE devices.id = u.dev`, devs, counts, seqs, types, hashes, times, snaps); err != nil {
		return nil, fmt.Errorf("insert snapshots: update device heads: %w", err)
	}
	if err := tx.Commit(ctx); err != nil {
		return nil, fmt.Errorf("insert snapshots: %w", err)
	}
	return inserted, nil
}

func nullBytes(b []byte) []byte {
	if len(b) == 0 {
		return nil
	}
	return b
}

// DeviceHead implements store.Snapshots.
func (s *Store) DeviceHead(ctx context.Context, gateway, device string) (uint64, []byte, error) {
	var seq int64
	var hash []byte
	err := s.pool.QueryRow(ctx, `SELECT head_seq, head_hash FROM devices WHERE gateway = $1 AND device = $2 AND head_seq > 0`, gateway, device).Scan(&seq, &hash)
	if errors.Is(err, pgx.ErrNoRows) {
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
	_, err := s.pool.Exec(ctx, `INSERT INTO integrity_events (gateway, device, kind, seq, expected_seq, hash, detail, at)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8)`, store.SafeText(e.Gateway), store.SafeText(e.Device), store.SafeText(e.Kind),
		int64(e.Seq), int64(e.ExpectedSeq), nullBytes(e.Hash), store.SafeText(e.Detail), millis(e.At))
	if err != nil {
		return fmt.Errorf("record %s event of %s/%s: %w", e.Kind, e.Gateway, e.Device, err)
	}
	return nil
}

// RecordReject implements store.Snapshots.
func (s *Store) RecordReject(ctx context.Context, r store.Reject) error {
	topic, gateway, reason := store.SafeText(r.Topic), store.SafeText(r.Gateway), store.SafeText(r.Reason)
	tx, err := s.pool.Begin(ctx)
	if err != nil {
		return fmt.Errorf("record reject on %s: %w", topic, err)
	}
	defer tx.Rollback(ctx)
	// The latest record with the same key takes the repeat (a summary's
	// key has no hash: "raw_hash IS NULL", which the index serves too).
	var id int64
	if r.RawHash == nil {
		err = tx.QueryRow(ctx, `SELECT id FROM rejects WHERE topic = $1 AND reason = $2 AND raw_hash IS NULL ORDER BY id DESC LIMIT 1`, topic, reason).Scan(&id)
	} else {
		err = tx.QueryRow(ctx, `SELECT id FROM rejects WHERE topic = $1 AND reason = $2 AND raw_hash = $3 ORDER BY id DESC LIMIT 1`, topic, reason, r.RawHash).Scan(&id)
	}
	switch {
	case err == nil:
		size := int64(0)
		if r.RawHash == nil {
			size = int64(r.Size)
		}
		_, err = tx.Exec(ctx, `UPDATE rejects SET count = count + $1, size = size + $2, last_at = greatest(coalesce(last_at, at), $3) WHERE id = $4`,
			int64(r.N()), size, millis(r.Last()), id)
	case errors.Is(err, pgx.ErrNoRows):
		_, err = tx.Exec(ctx, `INSERT INTO rejects (topic, gateway, reason, raw_hash, size, at, count, last_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)`,
			topic, gateway, reason, nullBytes(r.RawHash), int64(r.Size), millis(r.At), int64(r.N()), millis(r.Last()))
	}
	if err == nil {
		err = tx.Commit(ctx)
	}
	if err != nil {
		return fmt.Errorf("record reject on %s: %w", topic, err)
	}
	return nil
}

// TrimRejects implements store.Snapshots.
func (s *Store) TrimRejects(ctx context.Context, keep int) (int, error) {
	tag, err := s.pool.Exec(ctx, `DELETE FROM rejects WHERE id <= (SELECT id FROM rejects ORDER BY id DESC LIMIT 1 OFFSET $1)`, int64(max(keep, 0)))
	if err != nil {
		return 0, fmt.Errorf("trim rejects to %d: %w", keep, err)
	}
	return int(tag.RowsAffected()), nil
}

// query builds a statement with numbered parameters.
type query struct {
	b    strings.Builder
	args []any
}

// arg adds a parameter and returns its placeholder.
func (q *query) arg(v any) string {
	q.args = append(q.args, v)
	return fmt.Sprintf("$%d", len(q.args))
}

func (q *query) add(s ...string) {
	for _, x := range s {
		q.b.WriteString(x)
	}
}

// scope adds the condition limiting column col to scope.
func (q *query) scope(col, scope string) error {
	lo, hi, err := store.ScopeRange(scope)
	if err != nil {
		return err
	}
	if scope == "" {
		q.add("true")
		return nil
	}
	q.add("(", col, " = ", q.arg(scope), " OR (", col, " >= ", q.arg(lo), " AND ", col, " < ", q.arg(hi), "))")
	return nil
}

// timeRange adds from <= col < to (zero bounds open).
func (q *query) timeRange(col string, from, to time.Time) {
	if !from.IsZero() {
		q.add(" AND ", col, " >= ", q.arg(millis(from)))
	}
	if !to.IsZero() {
		q.add(" AND ", col, " < ", q.arg(millis(to)))
	}
}

// ListDevices implements store.Snapshots.
func (s *Store) ListDevices(ctx context.Context, scope string) ([]store.Device, error) {
	var q query
	q.add(`SELECT d.gateway, d.device, t.name, d.head_seq, d.head_hash, d.head_time, d.snapshot_count
		FROM devices d JOIN device_types t ON t.id = d.type_id WHERE `)
	if err := q.scope("d.gateway", scope); err != nil {
		return nil, err
	}
	q.add(` AND d.head_seq > 0 ORDER BY d.gateway, d.device`)
	rows, err := s.pool.Query(ctx, q.b.String(), q.args...)
	if err != nil {
		return nil, fmt.Errorf("list devices: %w", err)
	}
	defer rows.Close()
	var out []store.Device
	for rows.Next() {
		var d store.Device
		var seq, n int64
		if err := rows.Scan(&d.Gateway, &d.Device, &d.DeviceType, &seq, &d.LastHash, &d.LastTime, &n); err != nil {
			return nil, fmt.Errorf("list devices: %w", err)
		}
		d.LastSeq, d.LastTime, d.Snapshots = uint64(seq), d.LastTime.UTC(), uint64(n)
		out = append(out, d)
	}
	return out, rows.Err()
}

const snapshotColumns = `d.gateway, d.device, s.type_id, s.seq, s.time, s.hash, s.prev, s.signer, s.signed_at, s.received_at, s.ledger_index, s.channel_ids, s.vals`

// readSnapshots runs q and turns its rows (snapshotColumns) into records,
// keeping only the values of channels in keep (all if keep is nil).
func (s *Store) readSnapshots(ctx context.Context, q *query, keep map[int32]bool) ([]store.SnapshotRecord, error) {
	rows, err := s.pool.Query(ctx, q.b.String(), q.args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var recs []store.SnapshotRecord
	var typeIDs []int32
	var chIDs [][]int32
	var vals [][]float64
	for rows.Next() {
		var r store.SnapshotRecord
		var typeID int32
		var seq, ledger int64
		var ch []int32
		var vs []float64
		if err := rows.Scan(&r.Gateway, &r.Device, &typeID, &seq, &r.Time, &r.Hash, &r.Prev, &r.Signer, &r.SignedAt, &r.ReceivedAt, &ledger, &ch, &vs); err != nil {
			return nil, err
		}
		if len(ch) != len(vs) {
			return nil, fmt.Errorf("snapshot %s/%s seq %d: %d channels, %d values", r.Gateway, r.Device, seq, len(ch), len(vs))
		}
		r.Seq, r.LedgerIndex = uint64(seq), uint64(ledger)
		r.Time, r.SignedAt, r.ReceivedAt = r.Time.UTC(), r.SignedAt.UTC(), r.ReceivedAt.UTC()
		recs = append(recs, r)
		typeIDs = append(typeIDs, typeID)
		chIDs = append(chIDs, ch)
		vals = append(vals, vs)
	}
	if err := rows.Err(); err != nil {
		return nil, err
	}
	for attempt := 0; ; attempt++ {
		missing := false
		s.names.Read(func(r idcache.Reader[int32]) {
			for i := range recs {
				typ, ok := r.TypeName(typeIDs[i])
				recs[i].DeviceType = typ
				missing = missing || !ok
				values := make([]snapshot.Value, 0, len(chIDs[i]))
				for j, c := range chIDs[i] {
					if keep != nil && !keep[c] {
						continue
					}
					v, ok := r.Value(c, vals[i][j])
					missing = missing || !ok
					values = append(values, v)
				}
				recs[i].Values = values
			}
		})
		if !missing {
			return recs, nil
		}
		if attempt > 0 {
			return nil, fmt.Errorf("snapshot values: unknown channel or device type id")
		}
		if err := s.reloadNames(ctx); err != nil { // added by another process
			return nil, fmt.Errorf("snapshot names: %w", err)
		}
	}
}

// reloadNames reads the channel and device type tables into the cache.
func (s *Store) reloadNames(ctx context.Context) error {
	st := idcache.NewStaged[int32]()
	rows, err := s.pool.Query(ctx, `SELECT id, name FROM device_types`)
	if err != nil {
		return err
	}
	for rows.Next() {
		var id int32
		var name string
		if err := rows.Scan(&id, &name); err != nil {
			rows.Close()
			return err
		}
		st.Names[idcache.Name{Table: idcache.DeviceTypes, Name: name}] = id
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return err
	}
	rows, err = s.pool.Query(ctx, `SELECT c.id, c.name, u.name, g.name FROM channels c
		JOIN units u ON u.id = c.unit_id JOIN channel_groups g ON g.id = c.group_id`)
	if err != nil {
		return err
	}
	defer rows.Close()
	for rows.Next() {
		var id int32
		var k idcache.Channel
		if err := rows.Scan(&id, &k.Name, &k.Unit, &k.Group); err != nil {
			return err
		}
		st.Channels[k] = id
	}
	if err := rows.Err(); err != nil {
		return err
	}
	s.names.Merge(st)
	return nil
}

// channelIDs returns the ids of every channel with one of the names (a
// name may have several units or groups).
func (s *Store) channelIDs(ctx context.Context, names []string) ([]int32, error) {
	want := map[string]bool{}
	for _, name := range names {
		want[name] = true
	}
	ids, complete := s.names.ChannelsNamed(want)
	if !complete { // another process may have added channels
		if err := s.reloadNames(ctx); err != nil {
			return nil, err
		}
		ids, _ = s.names.ChannelsNamed(want)
	}
	slices.Sort(ids)
	return ids, nil
}

// QuerySnapshots implements store.Snapshots.
func (s *Store) QuerySnapshots(ctx context.Context, sq store.SnapshotQuery) ([]store.SnapshotRecord, error) {
	if sq.Device != "" && sq.Gateway == "" {
		return nil, fmt.Errorf("query snapshots: a device needs its gateway")
	}
	var q query
	q.add(`SELECT `, snapshotColumns, ` FROM snapshots s JOIN devices d ON d.id = s.device_id WHERE `)
	if err := q.scope("d.gateway", sq.Scope); err != nil {
		return nil, err
	}
	var keep map[int32]bool
	var chIDs []int32
	if len(sq.Channels) > 0 {
		var err error
		if chIDs, err = s.channelIDs(ctx, sq.Channels); err != nil {
			return nil, fmt.Errorf("query snapshots: %w", err)
		}
		if len(chIDs) == 0 {
			return nil, nil
		}
		keep = map[int32]bool{}
		for _, c := range chIDs {
			keep[c] = true
		}
	}
	order := ` ORDER BY s.time, d.gateway, d.device, s.seq`
	if sq.Device != "" {
		// One device: find it first, so the (device_id, time, seq) index
		// gives the order without sorting.
		var devID int32
		err := s.pool.QueryRow(ctx, `SELECT id FROM devices WHERE gateway = $1 AND device = $2`, sq.Gateway, sq.Device).Scan(&devID)
		if errors.Is(err, pgx.ErrNoRows) {
			return nil, nil
		}
		if err != nil {
			return nil, fmt.Errorf("query snapshots: %w", err)
		}
		q.add(` AND s.device_id = `, q.arg(devID))
		order = ` ORDER BY s.time, s.seq`
	} else if sq.Gateway != "" {
		q.add(` AND d.gateway = `, q.arg(sq.Gateway))
	}
	q.timeRange("s.time", sq.From, sq.To)
	if a := sq.After; a != nil {
		t, seq := millis(a.Time), int64(min(a.Seq, math.MaxInt64))
		switch {
		case sq.Device == "":
			q.add(` AND (s.time, d.gateway, d.device, s.seq) > (`, q.arg(t), `, `, q.arg(a.Gateway), `, `, q.arg(a.Device), `, `, q.arg(seq), `)`)
		case a.Gateway == sq.Gateway && a.Device == sq.Device:
			q.add(` AND (s.time, s.seq) > (`, q.arg(t), `, `, q.arg(seq), `)`)
		case a.Gateway < sq.Gateway || a.Gateway == sq.Gateway && a.Device < sq.Device:
			q.add(` AND s.time >= `, q.arg(t)) // the cursor's device sorts first
		default:
			q.add(` AND s.time > `, q.arg(t))
		}
	}
	if chIDs != nil {
		q.add(` AND s.channel_ids && `, q.arg(chIDs))
	}
	q.add(order, ` LIMIT `, q.arg(store.EffectiveLimit(sq.Limit)))
	recs, err := s.readSnapshots(ctx, &q, keep)
	if err != nil {
		return nil, fmt.Errorf("query snapshots: %w", err)
	}
	return recs, nil
}

// LatestSnapshots implements store.Snapshots.
func (s *Store) LatestSnapshots(ctx context.Context, scope string) ([]store.SnapshotRecord, error) {
	var q query
	q.add(`SELECT `, snapshotColumns, ` FROM devices d JOIN snapshots s ON s.id = d.head_snapshot_id WHERE `)
	if err := q.scope("d.gateway", scope); err != nil {
		return nil, err
	}
	q.add(` ORDER BY d.gateway, d.device`)
	recs, err := s.readSnapshots(ctx, &q, nil)
	if err != nil {
		return nil, fmt.Errorf("latest snapshots: %w", err)
	}
	return recs, nil
}

// SnapshotByHash implements store.Snapshots.
func (s *Store) SnapshotByHash(ctx context.Context, scope string, hash []byte) (store.SnapshotRecord, error) {
	var q query
	q.add(`SELECT `, snapshotColumns, ` FROM snapshots s JOIN devices d ON d.id = s.device_id WHERE s.hash = `, q.arg(hash), ` AND `)
	if err := q.scope("d.gateway", scope); err != nil {
		return store.SnapshotRecord{}, err
	}
	q.add(` ORDER BY s.id LIMIT 1`)
	recs, err := s.readSnapshots(ctx, &q, nil)
	if err != nil {
		return store.SnapshotRecord{}, fmt.Errorf("snapshot %x: %w", hash, err)
	}
	if len(recs) == 0 {
		return store.SnapshotRecord{}, fmt.Errorf("snapshot %x: %w", hash, store.ErrNotFound)
	}
	return recs[0], nil
}

// IntegrityEvents implements store.Snapshots.
func (s *Store) IntegrityEvents(ctx context.Context, scope string, from, to time.Time, limit int) ([]store.IntegrityEvent, error) {
	var q query
	q.add(`SELECT gateway, device, kind, seq, expected_seq, hash, detail, at FROM integrity_events WHERE `)
	if err := q.scope("gateway", scope); err != nil {
		return nil, err
	}
	q.timeRange("at", from, to)
	q.add(` ORDER BY at, id LIMIT `, q.arg(store.EffectiveLimit(limit)))
	rows, err := s.pool.Query(ctx, q.b.String(), q.args...)
	if err != nil {
		return nil, fmt.Errorf("integrity events: %w", err)
	}
	defer rows.Close()
	var out []store.IntegrityEvent
	for rows.Next() {
		var e store.IntegrityEvent
		var seq, exp int64
		if err := rows.Scan(&e.Gateway, &e.Device, &e.Kind, &seq, &exp, &e.Hash, &e.Detail, &e.At); err != nil {
			return nil, fmt.Errorf("integrity events: %w", err)
		}
		e.Seq, e.ExpectedSeq, e.At = uint64(seq), uint64(exp), e.At.UTC()
		out = append(out, e)
	}
	return out, rows.Err()
}

// Rejects implements store.Snapshots.
func (s *Store) Rejects(ctx context.Context, from, to time.Time, limit int) ([]store.Reject, error) {
	var q query
	q.add(`SELECT topic, gateway, reason, raw_hash, size, at, count, coalesce(last_at, at) FROM rejects WHERE true`)
	q.timeRange("at", from, to)
	q.add(` ORDER BY at, id LIMIT `, q.arg(store.EffectiveLimit(limit)))
	rows, err := s.pool.Query(ctx, q.b.String(), q.args...)
	if err != nil {
		return nil, fmt.Errorf("rejects: %w", err)
	}
	defer rows.Close()
	var out []store.Reject
	for rows.Next() {
		var r store.Reject
		var size, count int64
		if err := rows.Scan(&r.Topic, &r.Gateway, &r.Reason, &r.RawHash, &size, &r.At, &count, &r.LastAt); err != nil {
			return nil, fmt.Errorf("rejects: %w", err)
		}
		r.Size, r.Count, r.At, r.LastAt = int(size), int(count), r.At.UTC(), r.LastAt.UTC()
		out = append(out, r)
	}
	return out, rows.Err()
}
