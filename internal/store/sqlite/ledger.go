package sqlite

import (
	"context"
	"crypto/sha256"
	"database/sql"
	"errors"
	"fmt"

	"github.com/fieldtrust/fieldtrust/internal/store"
)

// ledgerSizeQuery is the number of leaves. Leaves are contiguous from 0
// (AppendLedger checks it), so it is the last index + 1: a look at the end
// of the primary key, where count(*) read the whole table, on every append
// (TestLedgerSizeReadsNoTable).
const ledgerSizeQuery = `SELECT coalesce(max(idx) + 1, 0) FROM ledger_leaves`

// LedgerSize implements store.Ledger.
func (s *Store) LedgerSize(ctx context.Context) (uint64, error) {
	var n int64
	if err := s.db.QueryRowContext(ctx, ledgerSizeQuery).Scan(&n); err != nil {
		return 0, fmt.Errorf("ledger size: %w", err)
	}
	return uint64(n), nil
}

// AppendLedger implements store.Ledger.
func (s *Store) AppendLedger(ctx context.Context, start uint64, leafData [][]byte, nodes []store.LedgerNode) error {
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	var n int64
	if err := tx.QueryRowContext(ctx, ledgerSizeQuery).Scan(&n); err != nil {
		return err
	}
	if uint64(n) != start {
		return fmt.Errorf("append ledger at %d: the ledger has %d leaves: %w", start, n, store.ErrLedgerMoved)
	}
	leafStmt, err := tx.PrepareContext(ctx, `INSERT INTO ledger_leaves (idx, leaf_hash, data) VALUES (?, ?, ?)`)
	if err != nil {
		return err
	}
	defer leafStmt.Close()
	for i, d := range leafData {
		if _, err := leafStmt.ExecContext(ctx, int64(start)+int64(i), leafHash(d), d); err != nil {
			return fmt.Errorf("append ledger leaf %d: %w", start+uint64(i), err)
		}
	}
	nodeStmt, err := tx.PrepareContext(ctx, `INSERT INTO ledger_nodes (level, idx, hash) VALUES (?, ?, ?)`)
	if err != nil {
		return err
	}
	defer nodeStmt.Close()
	for _, nd := range nodes {
		if _, err := nodeStmt.ExecContext(ctx, nd.Level, int64(nd.Index), nd.Hash); err != nil {
			return fmt.Errorf("append ledger node %d/%d: %w", nd.Level, nd.Index, err)
		}
	}
	return tx.Commit()
}

// leafHash is the RFC 6962 leaf hash, SHA-256(0x00 || data), kept in the
// leaves table so a leaf can be found by hash.
func leafHash(data []byte) []byte {
	h := sha256.New()
	h.Write([]byte{0})
	h.Write(data)
	return h.Sum(nil)
}

// LedgerNodes implements store.Ledger.
func (s *Store) LedgerNodes(ctx context.Context, ids []store.LedgerNode) ([][]byte, error) {
	out := make([][]byte, len(ids))
	stmt, err := s.db.PrepareContext(ctx, `SELECT hash FROM ledger_nodes WHERE level = ? AND idx = ?`)
	if err != nil {
		return nil, err
	}
	defer stmt.Close()
	for i, id := range ids {
		err := stmt.QueryRowContext(ctx, id.Level, int64(id.Index)).Scan(&out[i])
		if errors.Is(err, sql.ErrNoRows) {
			return nil, fmt.Errorf("ledger node %d/%d: %w", id.Level, id.Index, store.ErrNotFound)
		}
		if err != nil {
			return nil, err
		}
	}
	return out, nil
}

// LedgerLeaf implements store.Ledger.
func (s *Store) LedgerLeaf(ctx context.Context, hash []byte) (uint64, []byte, error) {
	var idx int64
	var data []byte
	err := s.db.QueryRowContext(ctx, `SELECT idx, data FROM ledger_leaves WHERE leaf_hash = ? ORDER BY idx LIMIT 1`, hash).Scan(&idx, &data)
	if errors.Is(err, sql.ErrNoRows) {
		return 0, nil, fmt.Errorf("ledger leaf %x: %w", hash, store.ErrNotFound)
	}
	return uint64(idx), data, err
}

// LedgerLeafIndexes implements store.Ledger.
func (s *Store) LedgerLeafIndexes(ctx context.Context, hashes [][]byte) (map[string]uint64, error) {
	out := make(map[string]uint64, len(hashes))
	const chunk = 500 // well below SQLite's 32766 variables
	for start := 0; start < len(hashes); start += chunk {
		part := hashes[start:min(start+chunk, len(hashes))]
		args := make([]any, len(part))
		for i, h := range part {
			args[i] = h
		}
		rows, err := s.db.QueryContext(ctx, `SELECT leaf_hash, min(idx) FROM ledger_leaves WHERE leaf_hash IN (`+placeholders(len(part))+`) GROUP BY leaf_hash`, args...)
		if err != nil {
			return nil, fmt.Errorf("ledger leaves: %w", err)
		}
		for rows.Next() {
			var h []byte
			var idx int64
			if err := rows.Scan(&h, &idx); err != nil {
				rows.Close()
				return nil, fmt.Errorf("ledger leaves: %w", err)
			}
			out[string(h)] = uint64(idx)
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return nil, fmt.Errorf("ledger leaves: %w", err)
		}
	}
	return out, nil
}

// PutTreeHead implements store.Ledger.
func (s *Store) PutTreeHead(ctx context.Context, th store.TreeHead) error {
	_, err := s.db.ExecContext(ctx, `INSERT INTO tree_heads (size, root, checkpoint, signature, cert_chain) VALUES (?, ?, ?, ?, ?)
		ON CONFLICT (size) DO NOTHING`, int64(th.Size), th.Root, th.Checkpoint, th.Signature, th.CertChain)
	if err != nil {
		return fmt.Errorf("put tree head %d: %w", th.Size, err)
	}
	return nil
}

// LatestTreeHead implements store.Ledger.
func (s *Store) LatestTreeHead(ctx context.Context) (store.TreeHead, error) {
	var th store.TreeHead
	var size int64
	err := s.db.QueryRowContext(ctx, `SELECT size, root, checkpoint, signature, cert_chain FROM tree_heads ORDER BY size DESC LIMIT 1`).
		Scan(&size, &th.Root, &th.Checkpoint, &th.Signature, &th.CertChain)
	if errors.Is(err, sql.ErrNoRows) {
		return th, fmt.Errorf("tree head: %w", store.ErrNotFound)
	}
	th.Size = uint64(size)
	return th, err
}
