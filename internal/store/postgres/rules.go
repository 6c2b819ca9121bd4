package postgres

import (
	"context"
	"fmt"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/fieldtrust/fieldtrust/internal/store"
	"github.com/fieldtrust/fieldtrust/internal/store/rulesql"
)

// rulesDB adapts pgx to rulesql.DB, turning its ? placeholders into $n.
type rulesDB struct {
	pool *pgxpool.Pool
	tx   pgx.Tx // set inside a transaction
}

type querier interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
}

func (r rulesDB) q() querier {
	if r.tx != nil {
		return r.tx
	}
	return r.pool
}

// dollars numbers the ? placeholders of q (the rules SQL has no ? in
// string literals).
func dollars(q string) string {
	var b strings.Builder
	n := 0
	for _, c := range q {
		if c == '?' {
			n++
			b.WriteString("$" + strconv.Itoa(n))
			continue
		}
		b.WriteRune(c)
	}
	return b.String()
}

func (r rulesDB) Exec(ctx context.Context, q string, args ...any) (int64, error) {
	tag, err := r.q().Exec(ctx, dollars(q), args...)
	if err != nil {
		return 0, err
	}
	return tag.RowsAffected(), nil
}

func (r rulesDB) Query(ctx context.Context, q string, args ...any) (rulesql.Rows, error) {
	rows, err := r.q().Query(ctx, dollars(q), args...)
	if err != nil {
		return nil, err
	}
	return rows, nil
}

func (r rulesDB) Tx(ctx context.Context, fn func(rulesql.DB) error) error {
	if r.tx != nil {
		return fn(r)
	}
	tx, err := r.pool.Begin(ctx)
	if err != nil {
		return err
	}
	defer tx.Rollback(ctx)
	if err := fn(rulesDB{pool: r.pool, tx: tx}); err != nil {
		return err
	}
	return tx.Commit(ctx)
}

// SnapshotsFromLedger implements store.Rules.
func (s *Store) SnapshotsFromLedger(ctx context.Context, from uint64, limit int) ([]store.SnapshotRecord, error) {
	var q query
	q.add(`SELECT `, snapshotColumns, ` FROM snapshots s JOIN devices d ON d.id = s.device_id WHERE s.ledger_index >= `, q.arg(int64(from)),
		` ORDER BY s.ledger_index LIMIT `, q.arg(store.EffectiveLimit(limit)))
	recs, err := s.readSnapshots(ctx, &q, nil)
	if err != nil {
		return nil, fmt.Errorf("snapshots from ledger index %d: %w", from, err)
	}
	return recs, nil
}
