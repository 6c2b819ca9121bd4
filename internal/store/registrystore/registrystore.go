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

	mu    sync.Mutex
	stmts map[string]*sql.Stmt // SQLite: prepared once per query text; guarded by mu
	texts map[string]string    // PostgreSQL: the rewritten texts; guarded by mu
}

// New wraps a database handle; postgres selects $n placeholders.
func New(db *sql.DB, postgres bool) *Store {
	return &Store{db: db, postgres: postgres, stmts: map[string]*sql.Stmt{}, texts: map[string]string{}}
}

// statement returns how to run one of this file's constant queries (?
// placeholders) that lookups run thousands of times a second: on SQLite a
// statement prepared once (the driver would parse the text anew each
// time); on PostgreSQL the rewritten text, which pgx prepares and caches
// per connection itself — a database/sql statement there was prepared
// again and deallocated whenever database/sql's pool dropped an idle
// connection (it keeps 2), two more round trips in many lookups. The
// texts are a handful, so the maps stay small.
func (s *Store) statement(ctx context.Context, query string) (*sql.Stmt, string, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.postgres {
		t, ok := s.texts[query]
		if !ok {
			t = s.q(query)
			s.texts[query] = t
		}
		return nil, t, nil
	}
	if st := s.stmts[query]; st != nil {
		return st, "", nil
	}
	st, err := s.db.PrepareContext(ctx, query)
	if err != nil {
		return nil, "", err
	}
	s.stmts[query] = st
	return st, "", nil
}

// query runs a lookup query (statement).
func (s *Store) query(ctx context.Context, query string, args ...any) (*sql.Rows, error) {
	st, text, err := s.statement(ctx, query)
	if err != nil {
		return nil, err
	}
	if st != nil {
		return st.QueryContext(ctx, args...)
	}
	return s.db.QueryContext(ctx, text, args...)
}

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

	// Read by lookups (Lookup, ByEquipment) in the same query as the row,
	// which leave Content and Equipment empty (the metadata names the
	// equipment): what a record's proofs need.
	HasContent  bool
	Entry       []byte // the registration's log entry (leaf data)
	RevokeEntry []byte // the revocation's, nil unless revoked
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
	d.HasContent = d.Content != nil
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

// lookupCols are a lookup's columns: the row without its content, and the
// data of its registration and revocation log entries (joined, so a
// record and what its proofs prove are one query).
const lookupCols = `d.dcc_id, d.lab, d.performed, d.registered_at, d.leaf_index, d.metadata, d.content IS NOT NULL, coalesce(d.revoked_at, 0), coalesce(d.revoke_reason, ''), coalesce(d.revoke_leaf, 0), l.data, r.data`

const lookupJoins = ` JOIN registry_log_leaves l ON l.idx = d.leaf_index LEFT JOIN registry_log_leaves r ON r.idx = d.revoke_leaf AND d.revoked_at IS NOT NULL`

func scanLookup(sc interface{ Scan(...any) error }, more ...any) (DCC, error) {
	var d DCC
	var leaf, rleaf int64
	err := sc.Scan(append([]any{&d.ID, &d.Lab, &d.Performed, &d.RegisteredAt, &leaf, &d.Metadata, &d.HasContent, &d.RevokedAt, &d.RevokeReason, &rleaf, &d.Entry, &d.RevokeEntry}, more...)...)
	d.LeafIndex, d.RevokeLeaf = uint64(leaf), uint64(rleaf)
	if err == nil && (d.Entry == nil || (d.RevokedAt != 0 && d.RevokeEntry == nil)) {
		err = fmt.Errorf("dcc %s: its log entry is missing from the registry's log", d.ID)
	}
	return d, err
}

// lookupQuery reads a DCC for a lookup, with the DCC that supersedes it:
// the first later (performance date, then registration), unrevoked DCC
// naming one of its equipment identifications (in issuer, value order).
const lookupQuery = `SELECT ` + lookupCols + `, coalesce((SELECT d2.dcc_id FROM registry_equipment e1
	JOIN registry_equipment e2 ON e2.issuer = e1.issuer AND e2.value = e1.value
	JOIN registry_dccs d2 ON d2.dcc_id = e2.dcc_id
	WHERE e1.dcc_id = d.dcc_id AND d2.dcc_id <> d.dcc_id AND d2.revoked_at IS NULL
	  AND (d2.performed > d.performed OR (d2.performed = d.performed AND d2.registered_at > d.registered_at))
	ORDER BY e1.issuer, e1.value, d2.performed, d2.registered_at, d2.dcc_id LIMIT 1), '')
	FROM registry_dccs d` + lookupJoins + ` WHERE d.dcc_id = ?`

// Lookup returns a DCC as a lookup answers it (with Entry and
// RevokeEntry, without Content and Equipment) and the id of the DCC that
// supersedes it ("" if none), in one query; store.ErrNotFound if unknown.
func (s *Store) Lookup(ctx context.Context, id string) (DCC, string, error) {
	rows, err := s.query(ctx, lookupQuery, id)
	if err != nil {
		return DCC{}, "", fmt.Errorf("dcc %s: %w", id, err)
	}
	defer rows.Close()
	if !rows.Next() {
		if err := rows.Err(); err != nil {
			return DCC{}, "", fmt.Errorf("dcc %s: %w", id, err)
		}
		return DCC{}, "", fmt.Errorf("dcc %s: %w", id, store.ErrNotFound)
	}
	var by string
	d, err := scanLookup(rows, &by)
	if err != nil {
		return d, "", fmt.Errorf("dcc %s: %w", id, err)
	}
	return d, by, rows.Close()
}

const byEquipment = `SELECT ` + lookupCols + ` FROM registry_equipment e JOIN registry_dccs d ON d.dcc_id = e.dcc_id` + lookupJoins + ` WHERE e.value = ?`
const byEquipmentOrder = ` ORDER BY d.performed, d.registered_at, d.dcc_id LIMIT ?`

// ByEquipment returns the DCCs naming an equipment identification, in
// calibration order (performance date, then registration), as Lookup
// reads them, in one query. An empty issuer matches any issuer. At most
// limit rows.
func (s *Store) ByEquipment(ctx context.Context, issuer, value string, limit int) ([]DCC, error) {
	query, args := byEquipment+byEquipmentOrder, []any{value, limit}
	if issuer != "" {
		query, args = byEquipment+` AND e.issuer = ?`+byEquipmentOrder, []any{value, issuer, limit}
	}
	rows, err := s.query(ctx, query, args...)
	if err != nil {
		return nil, fmt.Errorf("dccs of equipment %s/%s: %w", issuer, value, err)
	}
	defer rows.Close()
	var out []DCC
	seen := map[string]bool{}
	for rows.Next() {
		d, err := scanLookup(rows)
		if err != nil {
			return nil, err
		}
		if !seen[d.ID] { // one DCC naming the value under two issuers
			seen[d.ID] = true
			out = append(out, d)
		}
	}
	return out, rows.Err()
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

// LedgerNodes implements ledger.Storage: one query for the whole set, of
// one text whatever its size (a proof needs about log2(size) nodes, an
// equipment history's proofs together a few times that; one round trip
// each made a lookup on PostgreSQL cost tens of them, and a text built per
// call made SQLite parse a new statement every lookup). PostgreSQL takes
// the ids as two arrays, SQLite as one JSON array of integers.
func (s *Store) LedgerNodes(ctx context.Context, ids []store.LedgerNode) ([][]byte, error) {
	out := make([][]byte, len(ids))
	for start := 0; start < len(ids); start += nodesPerQuery {
		if err := s.ledgerNodes(ctx, ids[start:min(len(ids), start+nodesPerQuery)], out[start:]); err != nil {
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

// nodesPerQuery bounds one query's ids (an equipment history of 1000 DCCs
// at 10^6 leaves asks for about 40,000 nodes: a few queries).
const nodesPerQuery = 10000

const (
	nodesQueryPostgres = `SELECT q.ord, n.hash FROM unnest(?::integer[], ?::bigint[]) WITH ORDINALITY AS q (level, idx, ord)
	JOIN registry_log_nodes n ON n.level = q.level AND n.idx = q.idx`
	// Each id is one integer, level·2^56 + idx (idx < 2^56: a log of
	// 7·10^16 leaves), so SQLite reads each with integer arithmetic
	// instead of a JSON path per row (a third of a lookup's time).
	nodesQuerySQLite = `SELECT q.key + 1, n.hash FROM json_each(?) AS q
	JOIN registry_log_nodes n ON n.level = (q.value >> 56) AND n.idx = (q.value & 72057594037927935)`
)

func (s *Store) ledgerNodes(ctx context.Context, ids []store.LedgerNode, out [][]byte) error {
	query, args := nodesQueryPostgres, []any(nil)
	if s.postgres {
		levels, idxs := make([]int32, len(ids)), make([]int64, len(ids))
		for i, id := range ids {
			levels[i], idxs[i] = int32(id.Level), int64(id.Index)
		}
		args = []any{levels, idxs}
	} else {
		b := make([]byte, 0, 20*len(ids)+2)
		b = append(b, '[')
		for i, id := range ids {
			if id.Level > 127 || id.Index >= 1<<56 {
				return fmt.Errorf("registry log node %d/%d: beyond the log's bounds", id.Level, id.Index)
			}
			if i > 0 {
				b = append(b, ',')
			}
			b = strconv.AppendUint(b, uint64(id.Level)<<56|id.Index, 10)
		}
		b = append(b, ']')
		query, args = nodesQuerySQLite, []any{string(b)}
	}
	rows, err := s.query(ctx, query, args...)
	if err != nil {
		return fmt.Errorf("registry log nodes: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var ord int64
		var h []byte
		if err := rows.Scan(&ord, &h); err != nil {
			return fmt.Errorf("registry log nodes: %w", err)
		}
		if ord < 1 || ord > int64(len(ids)) {
			return fmt.Errorf("registry log nodes: position %d of %d", ord, len(ids))
		}
		out[ord-1] = h
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("registry log nodes: %w", err)
	}
	return nil
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
