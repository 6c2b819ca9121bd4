package sqlite

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/fieldtrust/fieldtrust/internal/store"
)

// AddManufacturer implements store.Enrollments.
func (s *Store) AddManufacturer(ctx context.Context, m store.Manufacturer) error {
	_, err := s.db.ExecContext(ctx, `INSERT INTO manufacturers (fingerprint, subject, not_after, der, added_at)
		VALUES (?, ?, ?, ?, ?)`,
		m.Fingerprint, m.Subject, m.NotAfter.Unix(), m.DER, m.AddedAt.Unix())
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
	rows, err := s.db.QueryContext(ctx, `SELECT fingerprint, subject, not_after, der, added_at FROM manufacturers ORDER BY seq`)
	if err != nil {
		return nil, fmt.Errorf("list manufacturers: %w", err)
	}
	defer rows.Close()
	var out []store.Manufacturer
	for rows.Next() {
		var m store.Manufacturer
		var na, added int64
		if err := rows.Scan(&m.Fingerprint, &m.Subject, &na, &m.DER, &added); err != nil {
			return nil, err
		}
		m.NotAfter, m.AddedAt = time.Unix(na, 0).UTC(), time.Unix(added, 0).UTC()
		out = append(out, m)
	}
	return out, rows.Err()
}

// PutClaims implements store.Enrollments. One transaction: all or nothing.
func (s *Store) PutClaims(ctx context.Context, claims []store.Claim) error {
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("put claims: %w", err)
	}
	defer tx.Rollback()
	stmt, err := tx.PrepareContext(ctx, `INSERT INTO claims (kind, value, path, created_at, consumed_at, consumed_by) VALUES (?, ?, ?, ?, ?, ?)`)
	if err != nil {
		return fmt.Errorf("put claims: %w", err)
	}
	defer stmt.Close()
	for _, c := range claims {
		if _, err := stmt.ExecContext(ctx, c.Kind, c.Value, c.Path, c.CreatedAt.Unix(), nullTime(c.ConsumedAt), c.ConsumedBy); err != nil {
			if isUnique(err) {
				return fmt.Errorf("claim %s %s: %w", c.Kind, c.Value, store.ErrExists)
			}
			return fmt.Errorf("put claim %s %s: %w", c.Kind, c.Value, err)
		}
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("put claims: %w", err)
	}
	return nil
}

const claimColumns = `kind, value, path, created_at, consumed_at, consumed_by`

// Claims implements store.Enrollments.
func (s *Store) Claims(ctx context.Context) ([]store.Claim, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT `+claimColumns+` FROM claims ORDER BY seq`)
	if err != nil {
		return nil, fmt.Errorf("list claims: %w", err)
	}
	defer rows.Close()
	var out []store.Claim
	for rows.Next() {
		c, err := scanClaim(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, c)
	}
	return out, rows.Err()
}

// Claim implements store.Enrollments.
func (s *Store) Claim(ctx context.Context, kind, value string) (store.Claim, error) {
	c, err := scanClaim(s.db.QueryRowContext(ctx, `SELECT `+claimColumns+` FROM claims WHERE kind = ? AND value = ?`, kind, value))
	if errors.Is(err, sql.ErrNoRows) {
		return c, fmt.Errorf("claim %s %s: %w", kind, value, store.ErrNotFound)
	}
	if err != nil {
		return c, fmt.Errorf("claim %s %s: %w", kind, value, err)
	}
	return c, nil
}

// ConsumeClaim implements store.Enrollments. The conditional UPDATE is the
// atomic step: only one writer can turn consumed_at from NULL to a time.
func (s *Store) ConsumeClaim(ctx context.Context, kind, value, by string, at time.Time) error {
	res, err := s.db.ExecContext(ctx, `UPDATE claims SET consumed_at = ?, consumed_by = ?
		WHERE kind = ? AND value = ? AND consumed_at IS NULL`, at.Unix(), by, kind, value)
	if err != nil {
		return fmt.Errorf("consume claim %s %s: %w", kind, value, err)
	}
	if n, err := res.RowsAffected(); err != nil {
		return fmt.Errorf("consume claim %s %s: %w", kind, value, err)
	} else if n == 1 {
		return nil
	}
	if _, err := s.Claim(ctx, kind, value); err != nil {
		return err
	}
	return fmt.Errorf("claim %s %s: %w", kind, value, store.ErrConsumed)
}

// ReleaseClaim implements store.Enrollments.
func (s *Store) ReleaseClaim(ctx context.Context, kind, value string) error {
	res, err := s.db.ExecContext(ctx, `UPDATE claims SET consumed_at = NULL, consumed_by = '' WHERE kind = ? AND value = ?`, kind, value)
	if err != nil {
		return fmt.Errorf("release claim %s %s: %w", kind, value, err)
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return fmt.Errorf("claim %s %s: %w", kind, value, store.ErrNotFound)
	}
	return nil
}

func scanClaim(r scanner) (store.Claim, error) {
	var c store.Claim
	var created int64
	var consumed sql.NullInt64
	if err := r.Scan(&c.Kind, &c.Value, &c.Path, &created, &consumed, &c.ConsumedBy); err != nil {
		return c, err
	}
	c.CreatedAt = time.Unix(created, 0).UTC()
	if consumed.Valid {
		c.ConsumedAt = time.Unix(consumed.Int64, 0).UTC()
	}
	return c, nil
}

func isUnique(err error) bool {
	return strings.Contains(err.Error(), "UNIQUE constraint failed")
}
