package sqlite

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"

	"github.com/fieldtrust/fieldtrust/internal/store"
)

// bumpRevocationVersion increments domain's revocation version inside tx.
func bumpRevocationVersion(ctx context.Context, tx *sql.Tx, domain string) error {
	_, err := tx.ExecContext(ctx, `INSERT INTO revocation_versions (domain, version) VALUES (?, 1)
		ON CONFLICT (domain) DO UPDATE SET version = version + 1`, domain)
	return err
}

// RevokePath implements store.Store.
func (s *Store) RevokePath(ctx context.Context, r store.PathRevocation) error {
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("revoke path %s/%s: %w", r.Domain, r.Path, err)
	}
	defer tx.Rollback()
	if _, err := tx.ExecContext(ctx, `INSERT INTO path_revocations (domain, path, revoked_at, reason) VALUES (?, ?, ?, ?)
		ON CONFLICT (domain, path) DO UPDATE SET revoked_at = max(revoked_at, excluded.revoked_at), reason = excluded.reason`,
		r.Domain, r.Path, r.RevokedAt.Unix(), r.Reason); err != nil {
		return fmt.Errorf("revoke path %s/%s: %w", r.Domain, r.Path, err)
	}
	if r.RevokeClaims {
		if _, err := tx.ExecContext(ctx, `UPDATE claims SET revoked_at = ? WHERE path = ? AND revoked_at IS NULL`, r.RevokedAt.Unix(), r.Path); err != nil {
			return fmt.Errorf("revoke claims of %s: %w", r.Path, err)
		}
	}
	if err := bumpRevocationVersion(ctx, tx, r.Domain); err != nil {
		return fmt.Errorf("revoke path %s/%s: %w", r.Domain, r.Path, err)
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("revoke path %s/%s: %w", r.Domain, r.Path, err)
	}
	return nil
}

// PathRevocation implements store.Store.
func (s *Store) PathRevocation(ctx context.Context, domain, path string) (store.PathRevocation, error) {
	r := store.PathRevocation{Domain: domain, Path: path}
	var at int64
	err := s.db.QueryRowContext(ctx, `SELECT revoked_at, reason FROM path_revocations WHERE domain = ? AND path = ?`, domain, path).Scan(&at, &r.Reason)
	if errors.Is(err, sql.ErrNoRows) {
		return r, fmt.Errorf("path revocation %s/%s: %w", domain, path, store.ErrNotFound)
	}
	if err != nil {
		return r, fmt.Errorf("path revocation %s/%s: %w", domain, path, err)
	}
	r.RevokedAt = time.Unix(at, 0).UTC()
	return r, nil
}

// PathRevocations implements store.Store.
func (s *Store) PathRevocations(ctx context.Context, domain string) ([]store.PathRevocation, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT path, revoked_at, reason FROM path_revocations WHERE domain = ? ORDER BY path`, domain)
	if err != nil {
		return nil, fmt.Errorf("path revocations of %s: %w", domain, err)
	}
	defer rows.Close()
	var out []store.PathRevocation
	for rows.Next() {
		r := store.PathRevocation{Domain: domain}
		var at int64
		if err := rows.Scan(&r.Path, &at, &r.Reason); err != nil {
			return nil, fmt.Errorf("path revocations of %s: %w", domain, err)
		}
		r.RevokedAt = time.Unix(at, 0).UTC()
		out = append(out, r)
	}
	return out, rows.Err()
}

// RevocationVersion implements store.Store.
func (s *Store) RevocationVersion(ctx context.Context, domain string) (int64, error) {
	var v int64
	err := s.db.QueryRowContext(ctx, `SELECT version FROM revocation_versions WHERE domain = ?`, domain).Scan(&v)
	if errors.Is(err, sql.ErrNoRows) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("revocation version of %s: %w", domain, err)
	}
	return v, nil
}
