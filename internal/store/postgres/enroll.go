package postgres

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/fieldtrust/fieldtrust/internal/store"
)

// AddManufacturer implements store.Enrollments.
func (s *Store) AddManufacturer(ctx context.Context, m store.Manufacturer) error {
	_, err := s.pool.Exec(ctx, `INSERT INTO manufacturers (fingerprint, subject, not_after, der, added_at)
		VALUES ($1, $2, $3, $4, $5)`, m.Fingerprint, m.Subject, seconds(m.NotAfter), m.DER, seconds(m.AddedAt))
	if err != nil {
		if isUnique(err) {
			return fmt.Errorf("manufacturer CA %s: %w", m.Fingerprint, store.ErrExists)
		}
		return fmt.Errorf("add manufacturer CA %s: %w", m.Fingerprint, err)
	}
	return nil
}

// Manufacturers implements store.Enrollments.
func (s *Store) Manufacturers(ctx context.Context) ([]store.Manufacturer, error) {
	rows, err := s.pool.Query(ctx, `SELECT fingerprint, subject, not_after, der, added_at FROM manufacturers ORDER BY seq`)
	if err != nil {
		return nil, fmt.Errorf("list manufacturers: %w", err)
	}
	defer rows.Close()
	var out []store.Manufacturer
	for rows.Next() {
		var m store.Manufacturer
		if err := rows.Scan(&m.Fingerprint, &m.Subject, &m.NotAfter, &m.DER, &m.AddedAt); err != nil {
			return nil, fmt.Errorf("list manufacturers: %w", err)
		}
		m.NotAfter, m.AddedAt = m.NotAfter.UTC(), m.AddedAt.UTC()
		out = append(out, m)
	}
	return out, rows.Err()
}

// PutClaims implements store.Enrollments. One transaction: all or nothing.
func (s *Store) PutClaims(ctx context.Context, claims []store.Claim) error {
	tx, err := s.pool.Begin(ctx)
	if err != nil {
		return fmt.Errorf("put claims: %w", err)
	}
	defer tx.Rollback(ctx)
	for _, c := range claims {
		_, err := tx.Exec(ctx, `INSERT INTO claims (kind, value, path, created_at, consumed_at, consumed_by) VALUES ($1, $2, $3, $4, $5, $6)`,
			c.Kind, c.Value, c.Path, seconds(c.CreatedAt), nullSeconds(c.ConsumedAt), c.ConsumedBy)
		if err != nil {
			if isUnique(err) {
				return fmt.Errorf("claim %s %s: %w", c.Kind, c.Value, store.ErrExists)
			}
			return fmt.Errorf("put claim %s %s: %w", c.Kind, c.Value, err)
		}
	}
	if err := tx.Commit(ctx); err != nil {
		return fmt.Errorf("put claims: %w", err)
	}
	return nil
}

const claimColumns = `kind, value, path, created_at, consumed_at, consumed_by`

func scanClaim(r pgx.Row) (store.Claim, error) {
	var c store.Claim
	var consumed *time.Time
	if err := r.Scan(&c.Kind, &c.Value, &c.Path, &c.CreatedAt, &consumed, &c.ConsumedBy); err != nil {
		return c, err
	}
	c.CreatedAt, c.ConsumedAt = c.CreatedAt.UTC(), fromNull(consumed)
	return c, nil
}

// Claims implements store.Enrollments.
func (s *Store) Claims(ctx context.Context) ([]store.Claim, error) {
	rows, err := s.pool.Query(ctx, `SELECT `+claimColumns+` FROM claims ORDER BY seq`)
	if err != nil {
		return nil, fmt.Errorf("list claims: %w", err)
	}
	defer rows.Close()
	var out []store.Claim
	for rows.Next() {
		c, err := scanClaim(rows)
		if err != nil {
			return nil, fmt.Errorf("list claims: %w", err)
		}
		out = append(out, c)
	}
	return out, rows.Err()
}

// Claim implements store.Enrollments.
func (s *Store) Claim(ctx context.Context, kind, value string) (store.Claim, error) {
	c, err := scanClaim(s.pool.QueryRow(ctx, `SELECT `+claimColumns+` FROM claims WHERE kind = $1 AND value = $2`, kind, value))
	if errors.Is(err, pgx.ErrNoRows) {
		return c, fmt.Errorf("claim %s %s: %w", kind, value, store.ErrNotFound)
	}
	if err != nil {
		return c, fmt.Errorf("claim %s %s: %w", kind, value, err)
	}
	return c, nil
}

// ConsumeClaim implements store.Enrollments. The conditional UPDATE is the
// atomic step: a concurrent UPDATE waits for the row lock and then
// re-checks consumed_at IS NULL, so only one writer wins.
func (s *Store) ConsumeClaim(ctx context.Context, kind, value, by string, at time.Time) error {
	tag, err := s.pool.Exec(ctx, `UPDATE claims SET consumed_at = $1, consumed_by = $2
		WHERE kind = $3 AND value = $4 AND consumed_at IS NULL`, seconds(at), by, kind, value)
	if err != nil {
		return fmt.Errorf("consume claim %s %s: %w", kind, value, err)
	}
	if tag.RowsAffected() == 1 {
		return nil
	}
	if _, err := s.Claim(ctx, kind, value); err != nil {
		return err
	}
	return fmt.Errorf("claim %s %s: %w", kind, value, store.ErrConsumed)
}

// ReleaseClaim implements store.Enrollments.
func (s *Store) ReleaseClaim(ctx context.Context, kind, value string) error {
	tag, err := s.pool.Exec(ctx, `UPDATE claims SET consumed_at = NULL, consumed_by = '' WHERE kind = $1 AND value = $2`, kind, value)
	if err != nil {
		return fmt.Errorf("release claim %s %s: %w", kind, value, err)
	}
	if tag.RowsAffected() == 0 {
		return fmt.Errorf("claim %s %s: %w", kind, value, store.ErrNotFound)
	}
	return nil
}
