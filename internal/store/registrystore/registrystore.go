// Package registrystore keeps the DCC tables of store/sqlite and
// store/postgres on either database through database/sql: the V&V
// registry's (migration 0018: issuers, registered DCCs and their equipment,
// and the registry's Merkle log, a ledger.Storage of its own tables, so
// its tree is separate from the snapshot ledger's) and the fleet link's
// device bindings (0021).
package registrystore

import (
	"context"
	"crypto/sha256"
	"database/sql"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"

	"github.com/fieldtrust/fieldtrust/internal/store"
	"github.com/fieldtrust/fieldtrust/internal/store/postgres"
	"github.com/fieldtrust/fieldtrust/internal/store/sqlite"
)

// Store is the registry's storage.
type Store struct {
	db       *sql.DB
	postgres bool

	nodesOnce sync.Once
	nodesStmt *sql.Stmt // LedgerNodes' query, prepared once
	nodesErr  error
}

// New wraps a database handle; postgres selects $n placeholders.
func New(db *sql.DB, postgres bool) *Store { return &Store{db: db, postgres: postgres} }

// q rewrites ? placeholders for PostgreSQL.
func (s *Store) q(query string) string {
	if !s.postgres {
		return query
	}
	var b strings.Builder
	n := 0
	for _, c := range query {
		if c == '?' {
			n++
			b.WriteString("$" + strconv.Itoa(n))
			continue
		}
		b.WriteRune(c)
	}
	return b.String()
}

// Issuer is a lab and the roots its chains must verify to.
type Issuer struct {
	Lab       string
	RootsPEM  []byte
	CreatedAt int64
}

// PutIssuer registers or updates a lab's roots.
func (s *Store) PutIssuer(ctx context.Context, is Issuer) error {
	_, err := s.db.ExecContext(ctx, s.q(`INSERT INTO registry_issuers (lab, roots, created_at) VALUES (?, ?, ?)
		ON CONFLICT (lab) DO UPDATE SET roots = excluded.roots`), is.Lab, is.RootsPEM, is.CreatedAt)
	if err != nil {
		return fmt.Errorf("put issuer %s: %w", is.Lab, err)
	}
	return nil
}

// Issuers lists the registered labs.
func (s *Store) Issuers(ctx context.Context) ([]Issuer, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT lab, roots, created_at FROM registry_issuers ORDER BY lab`)
	if err != nil {
		return nil, fmt.Errorf("issuers: %w", err)
	}
	defer rows.Close()
	var out []Issuer
	for rows.Next() {
		var is Issuer
		if err := rows.Scan(&is.Lab, &is.RootsPEM, &is.CreatedAt); err != nil {
			return nil, err
		}
		out = append(out, is)
	}
	return out, rows.Err()
}

// DCC is a registered DCC's row.
type DCC struct {
	ID           string
	Lab          string
	Performed    string
	RegisteredAt int64
	LeafIndex    uint64
	Metadata     []byte // JSON
	Content      []byte // nil when only metadata was registered
	RevokedAt    int64  // 0 unless revoked
	RevokeReason string
	RevokeLeaf   uint64
	Equipment    [][2]string // issuer, value
}

// PutDCC inserts a DCC and its equipment in one transaction; an existing
// id is store.ErrExists.
func (s *Store) PutDCC(ctx context.Context, d DCC) error {
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	res, err := tx.ExecContext(ctx, s.q(`INSERT INTO registry_dccs (dcc_id, lab, performed, registered_at, leaf_index, metadata, content)
		VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (dcc_id) DO NOTHING`), d.ID, d.Lab, d.Performed, d.RegisteredAt, int64(d.LeafIndex), d.Metadata, d.Content)
	if err != nil {
		return fmt.Errorf("put dcc %s: %w", d.ID, err)
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return fmt.Errorf("dcc %s: %w", d.ID, store.ErrExists)
	}
	for _, e := range d.Equipment {
		if _, err := tx.ExecContext(ctx, s.q(`INSERT INTO registry_equipment (issuer, value, dcc_id) VALUES (?, ?, ?) ON CONFLICT DO NOTHING`), e[0], e[1], d.ID); err != nil {
			return fmt.Errorf("put dcc %s equipment: %w", d.ID, err)
		}
	}
	return tx.Commit()
}

// RevokeDCC marks a DCC revoked (first revocation wins).
func (s *Store) RevokeDCC(ctx context.Context, id string, at int64, reason string, leaf uint64) error {
	_, err := s.db.ExecContext(ctx, s.q(`UPDATE registry_dccs SET revoked_at = ?, revoke_reason = ?, revoke_leaf = ? WHERE dcc_id = ? AND revoked_at IS NULL`), at, reason, int64(leaf), id)
	if err != nil {
		return fmt.Errorf("revoke dcc %s: %w", id, err)
	}
	return nil
}

const dccCols = `dcc_id, lab, performed, registered_at, leaf_index, metadata, content, coalesce(revoked_at, 0), coalesce(revoke_reason, ''), coalesce(revoke_leaf, 0)`

func scanDCC(sc interface{ Scan(...any) error }) (DCC, error) {
	var d DCC
	var leaf, rleaf int64
	err := sc.Scan(&d.ID, &d.Lab, &d.Performed, &d.RegisteredAt, &leaf, &d.Metadata, &d.Content, &d.RevokedAt, &d.RevokeReason, &rleaf)
	d.LeafIndex, d.RevokeLeaf = uint64(leaf), uint64(rleaf)
	return d, err
}

// DCC returns one DCC (store.ErrNotFound if unknown).
func (s *Store) DCC(ctx context.Context, id string) (DCC, error) {
	d, err := scanDCC(s.db.QueryRowContext(ctx, s.q(`SELECT `+dccCols+` FROM registry_dccs WHERE dcc_id = ?`), id))
	if errors.Is(err, sql.ErrNoRows) {
		return d, fmt.Errorf("dcc %s: %w", id, store.ErrNotFound)
	}
	if err != nil {
		return d, fmt.Errorf("dcc %s: %w", id, err)
	}
	return d, s.equipment(ctx, &d)
}

func (s *Store) equipment(ctx context.Context, d *DCC) error {
	rows, err := s.db.QueryContext(ctx, s.q(`SELECT issuer, value FROM registry_equipment WHERE dcc_id = ? ORDER BY issuer, value`), d.ID)
	if err != nil {
		return err
	}
	defer rows.Close()
	for rows.Next() {
		var e [2]string
		if err := rows.Scan(&e[0], &e[1]); err != nil {
			return err
		}
		d.Equipment = append(d.Equipment, e)
	}
	return rows.Err()
}

// ByEquipment returns the DCCs naming an equipment identification, in
// calibration order (performance date, then registration). An empty issuer
// matches any issuer. At most limit rows.
func (s *Store) ByEquipment(ctx context.Context, issuer, value string, limit int) ([]DCC, error) {
	query := `SELECT d.dcc_id, d.lab, d.performed, d.registered_at, d.leaf_index, d.metadata, d.content, coalesce(d.revoked_at, 0), coalesce(d.revoke_reason, ''), coalesce(d.revoke_leaf, 0) FROM registry_equipment e JOIN registry_dccs d ON d.dcc_id = e.dcc_id WHERE e.value = ?`
	args := []any{value}
	if issuer != "" {
		query += ` AND e.issuer = ?`
		args = append(args, issuer)
	}
	query += ` ORDER BY d.performed, d.registered_at, d.dcc_id LIMIT ?`
	args = append(args, limit)
	rows, err := s.db.QueryContext(ctx, s.q(query), args...)
	if err != nil {
		return nil, fmt.Errorf("dccs of equipment %s/%s: %w", issuer, value, err)
	}
	var out []DCC
	seen := map[string]bool{}
	for rows.Next() {
		d, err := scanDCC(rows)
		if err != nil {
			rows.Close()
			return nil, err
		}
		if !seen[d.ID] {
			seen[d.ID] = true
			out = append(out, d)
		}
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, err
	}
	for i := range out {
		if err := s.equipment(ctx, &out[i]); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// Applied is how many log entries the tables reflect.
func (s *Store) Applied(ctx context.Context) (uint64, error) {
	var n int64
	err := s.db.QueryRowContext(ctx, `SELECT size FROM registry_applied WHERE id = 1`).Scan(&n)
	if errors.Is(err, sql.ErrNoRows) {
		return 0, nil
	}
	return uint64(n), err
}

// SetApplied records how many log entries the tables reflect.
func (s *Store) SetApplied(ctx context.Context, n uint64) error {
	_, err := s.db.ExecContext(ctx, s.q(`INSERT INTO registry_applied (id, size) VALUES (1, ?) ON CONFLICT (id) DO UPDATE SET size = excluded.size`), int64(n))
	return err
}

// PutHead stores a signed checkpoint.
func (s *Store) PutHead(ctx context.Context, size uint64, checkpoint, sig []byte) error {
	_, err := s.db.ExecContext(ctx, s.q(`INSERT INTO registry_heads (size, checkpoint, signature) VALUES (?, ?, ?) ON CONFLICT (size) DO NOTHING`), int64(size), checkpoint, sig)
	return err
}

// LatestHead returns the checkpoint of the largest signed size
// (store.ErrNotFound if none).
func (s *Store) LatestHead(ctx context.Context) (checkpoint, sig []byte, err error) {
	err = s.db.QueryRowContext(ctx, `SELECT checkpoint, signature FROM registry_heads ORDER BY size DESC LIMIT 1`).Scan(&checkpoint, &sig)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, nil, fmt.Errorf("registry head: %w", store.ErrNotFound)
	}
	return checkpoint, sig, err
}

// Entries returns the data of log leaves [start, end).
func (s *Store) Entries(ctx context.Context, start, end uint64) ([][]byte, error) {
	rows, err := s.db.QueryContext(ctx, s.q(`SELECT data FROM registry_log_leaves WHERE idx >= ? AND idx < ? ORDER BY idx`), int64(start), int64(end))
	if err != nil {
		return nil, fmt.Errorf("registry log entries: %w", err)
	}
	defer rows.Close()
	var out [][]byte
	for rows.Next() {
		var b []byte
		if err := rows.Scan(&b); err != nil {
			return nil, err
		}
		out = append(out, b)
	}
	return out, rows.Err()
}

// ErrConflict is wrapped by AppendLedger's error when another writer (an
// operator command on the same database) appended first: reload and retry.
var ErrConflict = errors.New("another writer appended to the registry log")

// Of returns the registry storage in a platform store's database (SQLite
// or PostgreSQL): 'fieldtrust up' keeps the registry's tables beside its
// own.
func Of(st store.Store) (*Store, error) {
	switch s := st.(type) {
	case *sqlite.Store:
		return New(s.SQL(), false), nil
	case *postgres.Store:
		return New(s.SQL(), true), nil
	}
	return nil, fmt.Errorf("the DCC registry needs the SQLite or PostgreSQL store, not %T", st)
}

// size is the number of leaves: leaves are numbered from 0 without gaps
// (AppendLedger checks), so the largest index plus one, read from the
// primary key instead of counting every row.
const sizeQuery = `SELECT coalesce(max(idx) + 1, 0) FROM registry_log_leaves`

// LedgerSize implements ledger.Storage.
func (s *Store) LedgerSize(ctx context.Context) (uint64, error) {
	var n int64
	if err := s.db.QueryRowContext(ctx, sizeQuery).Scan(&n); err != nil {
		return 0, fmt.Errorf("registry log size: %w", err)
	}
	return uint64(n), nil
}

// AppendLedger implements ledger.Storage.
func (s *Store) AppendLedger(ctx context.Context, start uint64, leafData [][]byte, nodes []store.LedgerNode) error {
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	var n int64
	if err := tx.QueryRowContext(ctx, sizeQuery).Scan(&n); err != nil {
		return err
	}
	if uint64(n) != start {
		return fmt.Errorf("append registry log at %d: the log has %d leaves: %w", start, n, ErrConflict)
	}
	for i, d := range leafData {
		h := sha256.Sum256(append([]byte{0}, d...))
		if _, err := tx.ExecContext(ctx, s.q(`INSERT INTO registry_log_leaves (idx, leaf_hash, data) VALUES (?, ?, ?)`), int64(start)+int64(i), h[:], d); err != nil {
			return fmt.Errorf("append registry log leaf: %w", err)
		}
	}
	for _, nd := range nodes {
		if _, err := tx.ExecContext(ctx, s.q(`INSERT INTO registry_log_nodes (level, idx, hash) VALUES (?, ?, ?)`), nd.Level, int64(nd.Index), nd.Hash); err != nil {
			return fmt.Errorf("append registry log node: %w", err)
		}
	}
	return tx.Commit()
}

// LedgerNodes implements ledger.Storage: one query for the whole set (a
// proof needs about 2·log2(size) nodes; one round trip each made a lookup
// on PostgreSQL cost tens of them).
func (s *Store) LedgerNodes(ctx context.Context, ids []store.LedgerNode) ([][]byte, error) {
	out := make([][]byte, len(ids))
	type key struct {
		level uint
		idx   uint64
	}
	want := make(map[key][]int, len(ids))
	var uniq []key
	for i, id := range ids {
		k := key{id.Level, id.Index}
		if want[k] == nil {
			uniq = append(uniq, k)
		}
		want[k] = append(want[k], i)
	}
	stmt, err := s.nodesQuery()
	if err != nil {
		return nil, err
	}
	for len(uniq) > 0 {
		page := uniq[:min(len(uniq), nodesPerQuery)]
		uniq = uniq[len(page):]
		args := make([]any, 0, 2*nodesPerQuery)
		for i := range nodesPerQuery {
			k := page[min(i, len(page)-1)] // padded with the last: one query text for every proof
			args = append(args, k.level, int64(k.idx))
		}
		rows, err := stmt.QueryContext(ctx, args...)
		if err != nil {
			return nil, fmt.Errorf("registry log nodes: %w", err)
		}
		for rows.Next() {
			var level, idx int64
			var h []byte
			if err := rows.Scan(&level, &idx, &h); err != nil {
				rows.Close()
				return nil, err
			}
			for _, i := range want[key{uint(level), uint64(idx)}] {
				out[i] = h
			}
		}
		err = rows.Err()
		rows.Close()
		if err != nil {
			return nil, err
		}
	}
	for i, h := range out {
		if h == nil {
			return nil, fmt.Errorf("registry log node %d/%d: %w", ids[i].Level, ids[i].Index, store.ErrNotFound)
		}
	}
	return out, nil
}

// nodesPerQuery is the (level, idx) pairs of LedgerNodes' one query: an
// inclusion proof in a log of 10^12 leaves has 40 nodes.
const nodesPerQuery = 64

// nodesQuery prepares LedgerNodes' query once: built per call with as many
// pairs as the proof had nodes, SQLite parsed a new statement for every
// lookup, which was most of a lookup's time.
func (s *Store) nodesQuery() (*sql.Stmt, error) {
	s.nodesOnce.Do(func() {
		var b strings.Builder
		b.WriteString(`SELECT level, idx, hash FROM registry_log_nodes WHERE `)
		for i := range nodesPerQuery {
			if i > 0 {
				b.WriteString(" OR ")
			}
			b.WriteString("(level = ? AND idx = ?)")
		}
		s.nodesStmt, s.nodesErr = s.db.PrepareContext(context.Background(), s.q(b.String()))
	})
	if s.nodesErr != nil {
		return nil, fmt.Errorf("registry log nodes: %w", s.nodesErr)
	}
	return s.nodesStmt, nil
}

// LedgerLeaf implements ledger.Storage.
func (s *Store) LedgerLeaf(ctx context.Context, hash []byte) (uint64, []byte, error) {
	var idx int64
	var data []byte
	err := s.db.QueryRowContext(ctx, s.q(`SELECT idx, data FROM registry_log_leaves WHERE leaf_hash = ? ORDER BY idx LIMIT 1`), hash).Scan(&idx, &data)
	if errors.Is(err, sql.ErrNoRows) {
		return 0, nil, fmt.Errorf("registry log leaf %x: %w", hash, store.ErrNotFound)
	}
	return uint64(idx), data, err
}

// LedgerLeafIndexes implements ledger.Storage.
func (s *Store) LedgerLeafIndexes(ctx context.Context, hashes [][]byte) (map[string]uint64, error) {
	out := map[string]uint64{}
	for _, h := range hashes {
		idx, _, err := s.LedgerLeaf(ctx, h)
		if errors.Is(err, store.ErrNotFound) {
			continue
		}
		if err != nil {
			return nil, err
		}
		out[string(h)] = idx
	}
	return out, nil
}
