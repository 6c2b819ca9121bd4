package postgres

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"

	"github.com/fieldtrust/fieldtrust/internal/store"
)

// PutCAKey stores a CA's certificate and sealed key unless the domain holds
// one of that name already, and returns the one stored then (migration
// 0032; pki.KeyVault).
func (s *Store) PutCAKey(ctx context.Context, domain, name string, certDER, sealedKey []byte) ([]byte, []byte, error) {
	if _, err := s.pool.Exec(ctx, `INSERT INTO ca_keys (domain, name, cert, sealed_key) VALUES ($1, $2, $3, $4)
		ON CONFLICT (domain, name) DO NOTHING`, domain, name, certDER, sealedKey); err != nil {
		return nil, nil, fmt.Errorf("store %s CA %s: %w", domain, name, err)
	}
	return s.CAKey(ctx, domain, name)
}

// CAKey returns a stored CA's certificate and sealed key, or
// store.ErrNotFound.
func (s *Store) CAKey(ctx context.Context, domain, name string) ([]byte, []byte, error) {
	var der, sealed []byte
	err := s.pool.QueryRow(ctx, `SELECT cert, sealed_key FROM ca_keys WHERE domain = $1 AND name = $2`, domain, name).Scan(&der, &sealed)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, nil, fmt.Errorf("%s CA %s: %w", domain, name, store.ErrNotFound)
	}
	if err != nil {
		return nil, nil, fmt.Errorf("read %s CA %s: %w", domain, name, err)
	}
	return der, sealed, nil
}
