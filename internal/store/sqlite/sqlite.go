// Package sqlite implements store.Store on SQLite through the pure-Go
// modernc.org/sqlite driver, so the platform runs from one static binary.
//
// The database runs in WAL mode with a busy timeout, so the operator CLI can
// write while 'fieldtrust up' runs on the same data directory. Write
// transactions start IMMEDIATE to avoid the reader-to-writer upgrade
// deadlock that otherwise surfaces as SQLITE_BUSY.
package sqlite

import (
	"context"
	"database/sql"
	"embed"
	"errors"
	"fmt"
	"io/fs"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/fieldtrust/fieldtrust/internal/store"
	"github.com/fieldtrust/fieldtrust/internal/store/idcache"
	"github.com/fieldtrust/fieldtrust/internal/store/rulesql"
	_ "modernc.org/sqlite" // registers the "sqlite" driver
)

//go:embed migrations/*.sql
var migrations embed.FS

// Store is a store.Store backed by one SQLite file.
type Store struct {
	db *sql.DB
	// nameCache maps device types, units, groups, channels and devices
	// to their small ids, so inserts skip the lookups; non-nil after Open.
	nameCache *idcache.Cache[int64]
	// The rules store (store.Rules) is written once for both databases.
	*rulesql.Store
}

var _ store.Store = (*Store)(nil)

// Open opens (creating if needed) the database at file and applies pending
// migrations.
//
// Each connection may cache up to 64 MiB of pages (SQLite's default is
// 2 MiB): a batch of ingest dirties about 1 MB of pages, and the indexes an
// insert touches at random (snapshot and ledger hashes) outgrow 2 MiB
// early, so with the default every batch re-read a few pages per snapshot
// through pread (57,000 reads fewer in 10,000 snapshots of the load test).
// The WAL is checkpointed every 10,000 pages (40 MB) instead of 1,000: the
// index pages every batch dirties at random (the hashes) are copied to the
// database once per checkpoint, however often they changed, so fewer
// checkpoints write less (20,000 snapshots of the load test: 6 % fewer
// writes, 14 % fewer reads, 17 fsyncs instead of 101).
func Open(ctx context.Context, file string) (*Store, error) {
	dsn := "file:" + file + "?_pragma=journal_mode(WAL)&_pragma=busy_timeout(10000)&_pragma=foreign_keys(1)&_pragma=synchronous(NORMAL)&_pragma=cache_size(-65536)&_pragma=wal_autocheckpoint(10000)&_txlock=immediate"
	db, err := sql.Open("sqlite", dsn)
	if err != nil {
		return nil, fmt.Errorf("open database %s: %w", file, err)
	}
	// Keep connections open between requests: database/sql keeps 2 idle
	// by default, and every new one pays the open and the pragmas (an
	// agent's token request, a handful of reads, paid it each time).
	db.SetMaxIdleConns(16)
	s := &Store{db: db, nameCache: idcache.New[int64](), Store: &rulesql.Store{DB: rulesDB{db: db}}}
	if err := s.migrate(ctx); err != nil {
		db.Close()
		return nil, fmt.Errorf("database %s: %w (if the file is damaged, restore it from a backup)", file, err)
	}
	return s, nil
}

// Close closes the database.
func (s *Store) Close() error { return s.db.Close() }

// migrate applies the embedded migrations in order, each in its own
// transaction, and records the version reached.
func (s *Store) migrate(ctx context.Context) error { return s.migrateTo(ctx, 0) }

// goSteps are migrations' steps in Go, run after the SQL file of the same
// version, in its transaction.
var goSteps = map[int]func(context.Context, *sql.Tx) error{8: packLegacyValues}

// migrateTo applies the migrations up to version upTo (0: all).
func (s *Store) migrateTo(ctx context.Context, upTo int) error {
	if _, err := s.db.ExecContext(ctx, `CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, applied_at INTEGER NOT NULL)`); err != nil {
		return fmt.Errorf("migrate: %w", err)
	}
	names, err := fs.Glob(migrations, "migrations/*.sql")
	if err != nil {
		return err
	}
	sort.Strings(names)
	for _, name := range names {
		base := strings.TrimPrefix(name, "migrations/")
		version, err := strconv.Atoi(strings.SplitN(base, "_", 2)[0])
		if err != nil {
			return fmt.Errorf("migration %s: name must start with a number", base)
		}
		if upTo > 0 && version > upTo {
			break
		}
		if err := s.apply(ctx, version, name); err != nil {
			return fmt.Errorf("migration %s: %w", base, err)
		}
	}
	return nil
}

func (s *Store) apply(ctx context.Context, version int, name string) error {
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	var n int
	if err := tx.QueryRowContext(ctx, `SELECT count(*) FROM schema_migrations WHERE version = ?`, version).Scan(&n); err != nil {
		return err
	}
	if n > 0 {
		return nil
	}
	body, err := migrations.ReadFile(name)
	if err != nil {
		return err
	}
	if _, err := tx.ExecContext(ctx, string(body)); err != nil {
		return err
	}
	if step := goSteps[version]; step != nil {
		if err := step(ctx, tx); err != nil {
			return err
		}
	}
	if _, err := tx.ExecContext(ctx, `INSERT INTO schema_migrations (version, applied_at) VALUES (?, ?)`, version, time.Now().Unix()); err != nil {
		return err
	}
	return tx.Commit()
}

// PutCertificate implements store.Store.
func (s *Store) PutCertificate(ctx context.Context, c store.Certificate) error {
	_, err := s.db.ExecContext(ctx, `INSERT INTO certificates
		(domain, serial, kind, name, issuer_serial, not_before, not_after, der, revoked_at, reason)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
		c.Domain, c.Serial, c.Kind, c.Name, c.IssuerSerial, c.NotBefore.Unix(), c.NotAfter.Unix(), c.DER, nullTime(c.RevokedAt), c.Reason)
	if err != nil {
		if strings.Contains(err.Error(), "UNIQUE constraint failed") {
			return fmt.Errorf("certificate %s/%s: %w", c.Domain, c.Serial, store.ErrExists)
		}
		return fmt.Errorf("put certificate %s/%s: %w", c.Domain, c.Serial, err)
	}
	return nil
}

const certColumns = `domain, serial, kind, name, issuer_serial, not_before, not_after, der, revoked_at, reason`

// Certificate implements store.Store.
func (s *Store) Certificate(ctx context.Context, domain, serial string) (store.Certificate, error) {
	row := s.db.QueryRowContext(ctx, `SELECT `+certColumns+` FROM certificates WHERE domain = ? AND serial = ?`, domain, serial)
	c, err := scanCert(row)
	if errors.Is(err, sql.ErrNoRows) {
		return c, fmt.Errorf("certificate %s/%s: %w", domain, serial, store.ErrNotFound)
	}
	return c, err
}

// ListCertificates implements store.Store.
func (s *Store) ListCertificates(ctx context.Context, f store.CertFilter) ([]store.Certificate, error) {
	q := `SELECT ` + certColumns + ` FROM certificates WHERE 1=1`
	var args []any
	if f.Domain != "" {
		q += ` AND domain = ?`
		args = append(args, f.Domain)
	}
	if f.Name != "" {
		q += ` AND name = ?`
		args = append(args, f.Name)
	}
	if f.IssuerSerial != "" {
		q += ` AND issuer_serial = ?`
		args = append(args, f.IssuerSerial)
	}
	if f.RevokedOnly {
		q += ` AND revoked_at IS NOT NULL`
	}
	if len(f.Kinds) > 0 {
		q += ` AND kind IN (?` + strings.Repeat(`, ?`, len(f.Kinds)-1) + `)`
		for _, k := range f.Kinds {
			args = append(args, k)
		}
	}
	q += ` ORDER BY seq`
	rows, err := s.db.QueryContext(ctx, q, args...)
	if err != nil {
		return nil, fmt.Errorf("list certificates: %w", err)
	}
	defer rows.Close()
	var out []store.Certificate
	for rows.Next() {
		c, err := scanCert(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, c)
	}
	return out, rows.Err()
}

// RevokeCertificate implements store.Store. The revocation and the bump of
// the domain's revocation version are one transaction.
func (s *Store) RevokeCertificate(ctx context.Context, domain, serial string, reason int, at time.Time) error {
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("revoke %s/%s: %w", domain, serial, err)
	}
	defer tx.Rollback()
	res, err := tx.ExecContext(ctx, `UPDATE certificates SET revoked_at = ?, reason = ?
		WHERE domain = ? AND serial = ? AND revoked_at IS NULL`, at.Unix(), reason, domain, serial)
	if err != nil {
		return fmt.Errorf("revoke %s/%s: %w", domain, serial, err)
	}
	if n, _ := res.RowsAffected(); n == 0 {
		tx.Rollback()
		if _, err := s.Certificate(ctx, domain, serial); err != nil {
			return err
		}
		return nil
	}
	if err := bumpRevocationVersion(ctx, tx, domain); err != nil {
		return fmt.Errorf("revoke %s/%s: %w", domain, serial, err)
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("revoke %s/%s: %w", domain, serial, err)
	}
	return nil
}

// NextCRLNumber implements store.Store.
func (s *Store) NextCRLNumber(ctx context.Context, domain, issuerSerial string) (int64, error) {
	var n int64
	err := s.db.QueryRowContext(ctx, `INSERT INTO crl_numbers (domain, issuer_serial, last) VALUES (?, ?, 1)
		ON CONFLICT (domain, issuer_serial) DO UPDATE SET last = last + 1
		RETURNING last`, domain, issuerSerial).Scan(&n)
	if err != nil {
		return 0, fmt.Errorf("next CRL number for %s/%s: %w", domain, issuerSerial, err)
	}
	return n, nil
}

// SetServiceRole implements store.Store.
func (s *Store) SetServiceRole(ctx context.Context, service, role string) error {
	_, err := s.db.ExecContext(ctx, `INSERT INTO service_roles (service, role) VALUES (?, ?)
		ON CONFLICT (service) DO UPDATE SET role = excluded.role`, service, role)
	if err != nil {
		return fmt.Errorf("set role of service %s: %w", service, err)
	}
	return nil
}

// ServiceRoles implements store.Store.
func (s *Store) ServiceRoles(ctx context.Context) (map[string]string, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT service, role FROM service_roles`)
	if err != nil {
		return nil, fmt.Errorf("service roles: %w", err)
	}
	defer rows.Close()
	out := map[string]string{}
	for rows.Next() {
		var svc, role string
		if err := rows.Scan(&svc, &role); err != nil {
			return nil, err
		}
		out[svc] = role
	}
	return out, rows.Err()
}

type scanner interface{ Scan(...any) error }

func scanCert(r scanner) (store.Certificate, error) {
	var c store.Certificate
	var nb, na int64
	var revoked sql.NullInt64
	if err := r.Scan(&c.Domain, &c.Serial, &c.Kind, &c.Name, &c.IssuerSerial, &nb, &na, &c.DER, &revoked, &c.Reason); err != nil {
		return c, err
	}
	c.NotBefore, c.NotAfter = time.Unix(nb, 0).UTC(), time.Unix(na, 0).UTC()
	if revoked.Valid {
		c.RevokedAt = time.Unix(revoked.Int64, 0).UTC()
	}
	return c, nil
}

func nullTime(t time.Time) sql.NullInt64 {
	if t.IsZero() {
		return sql.NullInt64{}
	}
	return sql.NullInt64{Int64: t.Unix(), Valid: true}
}

// SQL returns the database handle, for stores of other services that keep
// their tables in the same database (package registrystore).
func (s *Store) SQL() *sql.DB { return s.db }
