package postgres

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"

	"github.com/fieldtrust/fieldtrust/internal/store"
)

// bumpRevocationVersion increments domain's revocation version inside tx.
func bumpRevocationVersion(ctx context.Context, tx pgx.Tx, domain string) error {
	_, err := tx.Exec(ctx, `INSERT INTO revocation_versions AS v (domain, version) VALUES ($1, 1)
		ON CONFLICT (domain) DO UPDATE SET version = v.version + 1`, domain)
	return err
}

// RevokePath implements store.Store.
func (s *Store) RevokePath(ctx context.Context, r store.PathRevocation) error {
	tx, err := s.pool.Begin(ctx)
	if err != nil {
		return fmt.Errorf("revoke path %s/%s: %w", r.Domain, r.Path, err)
	}
	defer tx.Rollback(ctx)
	if _, err := tx.Exec(ctx, `INSERT INTO path_revocations AS p (domain, path, revoked_at, reason) VALUES ($1, $2, $3, $4)
		ON CONFLICT (domain, path) DO UPDATE SET revoked_at = greatest(p.revoked_at, excluded.revoked_at), reason = excluded.reason`,
		r.Domain, r.Path, seconds(r.RevokedAt), r.Reason); err != nil {
		return fmt.Errorf("revoke path %s/%s: %w", r.Domain, r.Path, err)
	}
	if r.RevokeClaims {
		if _, err := tx.Exec(ctx, `UPDATE claims SET revoked_at = $1 WHERE path = $2 AND revoked_at IS NULL`, seconds(r.RevokedAt), r.Path); err != nil {
			return fmt.Errorf("revoke claims of %s: %w", r.Path, err)
		}
	}
	if err := bumpRevocationVersion(ctx, tx, r.Domain); err != nil {
		return fmt.Errorf("revoke path %s/%s: %w", r.Domain, r.Path, err)
	}
	if err := tx.Commit(ctx); err != nil {
		return fmt.Errorf("revoke path %s/%s: %w", r.Domain, r.Path, err)
	}
	return nil
}

// PathRevocation implements store.Store.
func (s *Store) PathRevocation(ctx context.Context, domain, path string) (store.PathRevocation, error) {
	r := store.PathRevocation{Domain: domain, Path: path}
	err := s.pool.QueryRow(ctx, `SELECT revoked_at, reason FROM path_revocations WHERE domain = $1 AND path = $2`, domain, path).Scan(&r.RevokedAt, &r.Reason)
	if errors.Is(err, pgx.ErrNoRows) {
		return r, fmt.Errorf("path revocation %s/%s: %w", domain, path, store.ErrNotFound)
	}
	if err != nil {
		return r, fmt.Errorf("path revocation %s/%s: %w", domain, path, err)
	}
	r.RevokedAt = r.RevokedAt.UTC()
	return r, nil
}

// PathRevocations implements store.Store.
func (s *Store) PathRevocations(ctx context.Context, domain string) ([]store.PathRevocation, error) {
	rows, err := s.pool.Query(ctx, `SELECT path, revoked_at, reason FROM path_revocations WHERE domain = $1 ORDER BY path`, domain)
	if err != nil {
		return nil, fmt.Errorf("path revocations of %s: %w", domain, err)
	}
	defer rows.Close()
	var out []store.PathRevocation
	for rows.Next() {
		r := store.PathRevocation{Domain: domain}
		if err := rows.Scan(&r.Path, &r.RevokedAt, &r.Reason); err != nil {
			return nil, fmt.Errorf("path revocations of %s: %w", domain, err)
		}
		r.RevokedAt = r.RevokedAt.UTC()
		out = append(out, r)
	}
	return out, rows.Err()
}

// RevocationVersion implements store.Store.
func (s *Store) RevocationVersion(ctx context.Context, domain string) (int64, error) {
	var v int64
	err := s.pool.QueryRow(ctx, `SELECT version FROM revocation_versions WHERE domain = $1`, domain).Scan(&v)
	if errors.Is(err, pgx.ErrNoRows) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("revocation version of %s: %w", domain, err)
	}
	return v, nil
}
