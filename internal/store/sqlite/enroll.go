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
	// A revoked claim is replaced; a live one is a conflict (the INSERT's
	// unique constraint reports it).
	del, err := tx.PrepareContext(ctx, `DELETE FROM claims WHERE manufacturer_key_id = ? AND kind = ? AND value = ? AND revoked_at IS NOT NULL`)
	if err != nil {
		return fmt.Errorf("put claims: %w", err)
	}
	defer del.Close()
	ins, err := tx.PrepareContext(ctx, `INSERT INTO claims (manufacturer_key_id, manufacturer_subject, kind, value, path, created_at, consumed_at, consumed_by, consumed_by_cert, revoked_at)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`)
	if err != nil {
		return fmt.Errorf("put claims: %w", err)
	}
	defer ins.Close()
	for _, c := range claims {
		if _, err := del.ExecContext(ctx, c.ManufacturerKeyID, c.Kind, c.Value); err != nil {
			return fmt.Errorf("put claim %s %s: %w", c.Kind, c.Value, err)
		}
		if _, err := ins.ExecContext(ctx, c.ManufacturerKeyID, c.ManufacturerSubject, c.Kind, c.Value, c.Path, c.CreatedAt.Unix(),
			nullTime(c.ConsumedAt), c.ConsumedBy, c.ConsumedByCert, nullTime(c.RevokedAt)); err != nil {
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

const claimColumns = `manufacturer_key_id, manufacturer_subject, kind, value, path, created_at, consumed_at, consumed_by, consumed_by_cert, revoked_at`

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
func (s *Store) Claim(ctx context.Context, k store.ClaimKey) (store.Claim, error) {
	c, err := scanClaim(s.db.QueryRowContext(ctx, `SELECT `+claimColumns+` FROM claims WHERE manufacturer_key_id = ? AND kind = ? AND value = ?`, k.ManufacturerKeyID, k.Kind, k.Value))
	if errors.Is(err, sql.ErrNoRows) {
		return c, fmt.Errorf("claim %s %s: %w", k.Kind, k.Value, store.ErrNotFound)
	}
	if err != nil {
		return c, fmt.Errorf("claim %s %s: %w", k.Kind, k.Value, err)
	}
	return c, nil
}

// ConsumeClaim implements store.Enrollments. The conditional UPDATE is the
// atomic step: only one writer can turn consumed_at from NULL to a time,
// and none once the claim is revoked.
func (s *Store) ConsumeClaim(ctx context.Context, k store.ClaimKey, by store.Consumer, at time.Time) error {
	res, err := s.db.ExecContext(ctx, `UPDATE claims SET consumed_at = ?, consumed_by = ?, consumed_by_cert = ?
		WHERE manufacturer_key_id = ? AND kind = ? AND value = ? AND consumed_at IS NULL AND revoked_at IS NULL`,
		at.Unix(), by.Serial, by.Fingerprint, k.ManufacturerKeyID, k.Kind, k.Value)
	if err != nil {
		return fmt.Errorf("consume claim %s %s: %w", k.Kind, k.Value, err)
	}
	if n, err := res.RowsAffected(); err != nil {
		return fmt.Errorf("consume claim %s %s: %w", k.Kind, k.Value, err)
	} else if n == 1 {
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
	res, err := s.db.ExecContext(ctx, `UPDATE claims SET consumed_at = NULL, consumed_by = '', consumed_by_cert = ''
		WHERE manufacturer_key_id = ? AND kind = ? AND value = ?`, k.ManufacturerKeyID, k.Kind, k.Value)
	if err != nil {
		return fmt.Errorf("release claim %s %s: %w", k.Kind, k.Value, err)
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return fmt.Errorf("claim %s %s: %w", k.Kind, k.Value, store.ErrNotFound)
	}
	return nil
}

// AdoptLegacyClaims implements store.Enrollments.
func (s *Store) AdoptLegacyClaims(ctx context.Context, keyID, subject string) (int, error) {
	if keyID == "" {
		return 0, errors.New("adopt legacy claims: no manufacturer key ID")
	}
	res, err := s.db.ExecContext(ctx, `UPDATE claims SET manufacturer_key_id = ?, manufacturer_subject = ? WHERE manufacturer_key_id = ''`, keyID, subject)
	if err != nil {
		if isUnique(err) {
			return 0, fmt.Errorf("adopt legacy claims: a legacy claim names a device the manufacturer already has a claim for: %w", store.ErrExists)
		}
		return 0, fmt.Errorf("adopt legacy claims: %w", err)
	}
	n, err := res.RowsAffected()
	return int(n), err
}

func scanClaim(r scanner) (store.Claim, error) {
	var c store.Claim
	var created int64
	var consumed, revoked sql.NullInt64
	if err := r.Scan(&c.ManufacturerKeyID, &c.ManufacturerSubject, &c.Kind, &c.Value, &c.Path, &created, &consumed, &c.ConsumedBy, &c.ConsumedByCert, &revoked); err != nil {
		return c, err
	}
	c.CreatedAt = time.Unix(created, 0).UTC()
	if consumed.Valid {
		c.ConsumedAt = time.Unix(consumed.Int64, 0).UTC()
	}
	if revoked.Valid {
		c.RevokedAt = time.Unix(revoked.Int64, 0).UTC()
	}
	return c, nil
}

func isUnique(err error) bool {
	return strings.Contains(err.Error(), "UNIQUE constraint failed")
}
