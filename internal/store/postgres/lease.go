package postgres

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5"
)

// LeaseConn opens a connection of its own to the store's database (same
// server, credentials and search path as the pool), outside the pool: what
// package lease holds its advisory locks on, so that they live exactly as
// long as that one connection. application names the connection in
// pg_stat_activity (it is how the nodes learn who holds which lock).
func (s *Store) LeaseConn(ctx context.Context, application string) (*pgx.Conn, error) {
	cfg := s.pool.Config().ConnConfig.Copy()
	cfg.RuntimeParams["application_name"] = application
	c, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("lease connection to %s: %w", cfg.Host, err)
	}
	return c, nil
}
