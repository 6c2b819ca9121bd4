package postgres

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/fieldtrust/fieldtrust/internal/store"
)

// RequestDrain asks node to drain (again, if it drained before).
func (s *Store) RequestDrain(ctx context.Context, node string) error {
	if _, err := s.pool.Exec(ctx, `INSERT INTO cluster_drains (node, requested_at) VALUES ($1, now())
		ON CONFLICT (node) DO UPDATE SET requested_at = now(), drained_at = NULL`, node); err != nil {
		return fmt.Errorf("request drain of node %s: %w", node, err)
	}
	return nil
}

// DrainRequest reads node's drain request (the zero value if none).
func (s *Store) DrainRequest(ctx context.Context, node string) (store.DrainRequest, error) {
	d := store.DrainRequest{Node: node}
	var drained *time.Time
	err := s.pool.QueryRow(ctx, `SELECT requested_at, drained_at FROM cluster_drains WHERE node = $1`, node).Scan(&d.RequestedAt, &drained)
	if errors.Is(err, pgx.ErrNoRows) {
		return store.DrainRequest{Node: node}, nil
	}
	if err != nil {
		return store.DrainRequest{}, fmt.Errorf("read drain request of node %s: %w", node, err)
	}
	if drained != nil {
		d.DrainedAt = *drained
	}
	return d, nil
}

// MarkDrained records that node has drained.
func (s *Store) MarkDrained(ctx context.Context, node string) error {
	if _, err := s.pool.Exec(ctx, `UPDATE cluster_drains SET drained_at = now() WHERE node = $1`, node); err != nil {
		return fmt.Errorf("record node %s drained: %w", node, err)
	}
	return nil
}

// ClearDrain forgets node's drain request (the node started again).
func (s *Store) ClearDrain(ctx context.Context, node string) error {
	if _, err := s.pool.Exec(ctx, `DELETE FROM cluster_drains WHERE node = $1`, node); err != nil {
		return fmt.Errorf("clear drain request of node %s: %w", node, err)
	}
	return nil
}
