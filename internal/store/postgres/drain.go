package postgres

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/fieldtrust/fieldtrust/internal/store"
)

// RequestDrain asks node to drain (again, if it drained before) if admit,
// given the other nodes whose drain is requested and not done yet, accepts.
// Requests are serialised (a transaction lock), so that two operators
// cannot both pass a check that counts the nodes left (drain.Request).
func (s *Store) RequestDrain(ctx context.Context, node string, admit func(pending []string) error) error {
	tx, err := s.pool.Begin(ctx)
	if err != nil {
		return fmt.Errorf("request drain of node %s: %w", node, err)
	}
	defer tx.Rollback(ctx)
	if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock(hashtextextended('fieldtrust cluster_drains/' || current_schema(), 0))`); err != nil {
		return fmt.Errorf("request drain of node %s: %w", node, err)
	}
	rows, err := tx.Query(ctx, `SELECT node FROM cluster_drains WHERE drained_at IS NULL AND node <> $1 ORDER BY node`, node)
	if err != nil {
		return fmt.Errorf("request drain of node %s: read pending drains: %w", node, err)
	}
	pending, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return fmt.Errorf("request drain of node %s: read pending drains: %w", node, err)
	}
	if err := admit(pending); err != nil {
		return err
	}
	if _, err := tx.Exec(ctx, `INSERT INTO cluster_drains (node, requested_at) VALUES ($1, now())
		ON CONFLICT (node) DO UPDATE SET requested_at = now(), drained_at = NULL`, node); err != nil {
		return fmt.Errorf("request drain of node %s: %w", node, err)
	}
	if err := tx.Commit(ctx); err != nil {
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
