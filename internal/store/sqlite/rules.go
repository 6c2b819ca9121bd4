package sqlite

import (
	"context"
	"database/sql"
	"fmt"

	"github.com/fieldtrust/fieldtrust/internal/store"
	"github.com/fieldtrust/fieldtrust/internal/store/rulesql"
)

// rulesDB adapts database/sql to rulesql.DB.
type rulesDB struct {
	db *sql.DB
	tx *sql.Tx // set inside a transaction
}

func (r rulesDB) Exec(ctx context.Context, q string, args ...any) (int64, error) {
	var res sql.Result
	var err error
	if r.tx != nil {
		res, err = r.tx.ExecContext(ctx, q, args...)
	} else {
		res, err = r.db.ExecContext(ctx, q, args...)
	}
	if err != nil {
		return 0, err
	}
	return res.RowsAffected()
}

type sqlRows struct{ *sql.Rows }

func (r sqlRows) Close() { r.Rows.Close() }

func (r rulesDB) Query(ctx context.Context, q string, args ...any) (rulesql.Rows, error) {
	var rows *sql.Rows
	var err error
	if r.tx != nil {
		rows, err = r.tx.QueryContext(ctx, q, args...)
	} else {
		rows, err = r.db.QueryContext(ctx, q, args...)
	}
	if err != nil {
		return nil, err
	}
	return sqlRows{rows}, nil
}

func (r rulesDB) Tx(ctx context.Context, fn func(rulesql.DB) error) error {
	if r.tx != nil {
		return fn(r)
	}
	tx, err := r.db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	if err := fn(rulesDB{db: r.db, tx: tx}); err != nil {
		return err
	}
	return tx.Commit()
}

// SnapshotsFromLedger implements store.Rules.
func (s *Store) SnapshotsFromLedger(ctx context.Context, from uint64, limit int) ([]store.SnapshotRecord, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT `+snapshotColumns+` FROM snapshots s JOIN devices d ON d.id = s.device_id
		WHERE s.ledger_index >= ? ORDER BY s.ledger_index LIMIT ?`, int64(from), store.EffectiveLimit(limit))
	if err != nil {
		return nil, fmt.Errorf("snapshots from ledger index %d: %w", from, err)
	}
	recs, raw, err := s.scanSnapshots(rows)
	if err != nil {
		return nil, fmt.Errorf("snapshots from ledger index %d: %w", from, err)
	}
	if recs, err = s.fillValues(ctx, recs, raw, nil); err != nil {
		return nil, fmt.Errorf("snapshots from ledger index %d: %w", from, err)
	}
	return recs, nil
}
