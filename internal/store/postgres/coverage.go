package postgres

import (
	"context"
	"fmt"
)

// CoverAccounts records that an ingest session has subscribed to the
// snapshots of these accounts (migration 0030): from now on the cluster's
// nodes admit the accounts' gateways.
func (s *Store) CoverAccounts(ctx context.Context, accounts []string) error {
	if len(accounts) == 0 {
		return nil
	}
	if _, err := s.pool.Exec(ctx, `INSERT INTO ingest_coverage (account, covered_at)
		SELECT a, now() FROM unnest($1::text[]) AS a ON CONFLICT (account) DO NOTHING`, accounts); err != nil {
		return fmt.Errorf("record ingest coverage of %d accounts: %w", len(accounts), err)
	}
	return nil
}

// AccountCovered reports whether an ingest session has subscribed to the
// account's snapshots.
func (s *Store) AccountCovered(ctx context.Context, account string) (bool, error) {
	var n int
	if err := s.pool.QueryRow(ctx, `SELECT count(*) FROM ingest_coverage WHERE account = $1`, account).Scan(&n); err != nil {
		return false, fmt.Errorf("look up ingest coverage of %s: %w", account, err)
	}
	return n > 0, nil
}
