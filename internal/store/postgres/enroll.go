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
		// A revoked claim is replaced; a live one is a conflict.
		if _, err := tx.Exec(ctx, `DELETE FROM claims WHERE manufacturer_key_id = $1 AND kind = $2 AND value = $3 AND revoked_at IS NOT NULL`,
			c.ManufacturerKeyID, c.Kind, c.Value); err != nil {
			return fmt.Errorf("put claim %s %s: %w", c.Kind, c.Value, err)
		}
		_, err := tx.Exec(ctx, `INSERT INTO claims (manufacturer_key_id, manufacturer_subject, kind, value, path, created_at, consumed_at, consumed_by, consumed_by_cert, revoked_at)
			VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)`,
			c.ManufacturerKeyID, c.ManufacturerSubject, c.Kind, c.Value, c.Path, seconds(c.CreatedAt), nullSeconds(c.ConsumedAt), c.ConsumedBy, c.ConsumedByCert, nullSeconds(c.RevokedAt))
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

const claimColumns = `manufacturer_key_id, manufacturer_subject, kind, value, path, created_at, consumed_at, consumed_by, consumed_by_cert, revoked_at`

func scanClaim(r pgx.Row) (store.Claim, error) {
	var c store.Claim
	var consumed, revoked *time.Time
	if err := r.Scan(&c.ManufacturerKeyID, &c.ManufacturerSubject, &c.Kind, &c.Value, &c.Path, &c.CreatedAt, &consumed, &c.ConsumedBy, &c.ConsumedByCert, &revoked); err != nil {
		return c, err
	}
	c.CreatedAt, c.ConsumedAt, c.RevokedAt = c.CreatedAt.UTC(), fromNull(consumed), fromNull(revoked)
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
func (s *Store) Claim(ctx context.Context, k store.ClaimKey) (store.Claim, error) {
	c, err := scanClaim(s.pool.QueryRow(ctx, `SELECT `+claimColumns+` FROM claims WHERE manufacturer_key_id = $1 AND kind = $2 AND value = $3`, k.ManufacturerKeyID, k.Kind, k.Value))
	if errors.Is(err, pgx.ErrNoRows) {
		return c, fmt.Errorf("claim %s %s: %w", k.Kind, k.Value, store.ErrNotFound)
	}
	if err != nil {
		return c, fmt.Errorf("claim %s %s: %w", k.Kind, k.Value, err)
	}
	return c, nil
}

// ConsumeClaim implements store.Enrollments. The conditional UPDATE is the
// atomic step: a concurrent UPDATE waits for the row lock and then
// re-checks consumed_at IS NULL, so only one writer wins, and none once the
// claim is revoked.
func (s *Store) ConsumeClaim(ctx context.Context, k store.ClaimKey, by store.Consumer, at time.Time) error {
	tag, err := s.pool.Exec(ctx, `UPDATE claims SET consumed_at = $1, consumed_by = $2, consumed_by_cert = $3
		WHERE manufacturer_key_id = $4 AND kind = $5 AND value = $6 AND consumed_at IS NULL AND revoked_at IS NULL`,
		seconds(at), by.Serial, by.Fingerprint, k.ManufacturerKeyID, k.Kind, k.Value)
	if err != nil {
		return fmt.Errorf("consume claim %s %s: %w", k.Kind, k.Value, err)
	}
	if tag.RowsAffected() == 1 {
		return nil
	}
	c, err := s.Claim(ctx, k)
	if err != nil {
		return err
	}
	if c.Revoked() {
		return fmt.Errorf("claim %s %s: %w", k.Kind, k.Value, store.ErrClaimRevoked)
	}
	return fmt.Errorf("claim %s %s: %w", k.Kind, k.Value, store.ErrConsumed)
}

// ReleaseClaim implements store.Enrollments.
func (s *Store) ReleaseClaim(ctx context.Context, k store.ClaimKey) error {
	tag, err := s.pool.Exec(ctx, `UPDATE claims SET consumed_at = NULL, consumed_by = '', consumed_by_cert = ''
		WHERE manufacturer_key_id = $1 AND kind = $2 AND value = $3`, k.ManufacturerKeyID, k.Kind, k.Value)
	if err != nil {
		return fmt.Errorf("release claim %s %s: %w", k.Kind, k.Value, err)
	}
	if tag.RowsAffected() == 0 {
		return fmt.Errorf("claim %s %s: %w", k.Kind, k.Value, store.ErrNotFound)
	}
	return nil
}

// AdoptLegacyClaims implements store.Enrollments.
func (s *Store) AdoptLegacyClaims(ctx context.Context, keyID, subject string) (int, error) {
	if keyID == "" {
		return 0, errors.New("adopt legacy claims: no manufacturer key ID")
	}
	tag, err := s.pool.Exec(ctx, `UPDATE claims SET manufacturer_key_id = $1, manufacturer_subject = $2 WHERE manufacturer_key_id = ''`, keyID, subject)
	if err != nil {
		if isUnique(err) {
			return 0, fmt.Errorf("adopt legacy claims: a legacy claim names a device the manufacturer already has a claim for: %w", store.ErrExists)
		}
		return 0, fmt.Errorf("adopt legacy claims: %w", err)
	}
	return int(tag.RowsAffected()), nil
}
