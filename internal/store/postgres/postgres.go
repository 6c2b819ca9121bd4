// Package postgres implements store.Store on PostgreSQL (12 or later)
// through pgx, for deployments that outgrow one SQLite file. It meets the
// same contract, checked by the same conformance suite (storetest).
//
// Migrations are embedded and numbered (migrations/NNNN_*.sql), applied
// once each in a transaction under an advisory lock, so several processes
// may open the same database at once. The schema follows the SQLite one
// except where PostgreSQL's storage differs (see 0004_snapshots.sql).
// Times are timestamptz; the store writes them with the precision SQLite
// keeps (seconds for certificates and enrollments, milliseconds for
// snapshots), so both implementations read back the same values.
package postgres

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

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/jackc/pgx/v5/stdlib"

	"github.com/fieldtrust/fieldtrust/internal/store"
	"github.com/fieldtrust/fieldtrust/internal/store/idcache"
	"github.com/fieldtrust/fieldtrust/internal/store/rulesql"
)

//go:embed migrations/*.sql
var migrations embed.FS

// Store is a store.Store backed by a PostgreSQL database.
type Store struct {
	pool  *pgxpool.Pool
	names *idcache.Cache[int32]
	// The rules store (store.Rules) is written once for both databases.
	*rulesql.Store
}

var _ store.Store = (*Store)(nil)

// migrationLock is the advisory lock key held while migrating ("ftmigr").
const migrationLock = 0x66746d69677200

// Open connects to the database named by dsn (a postgres:// URL or
// key=value string, see pgx) and applies pending migrations.
func Open(ctx context.Context, dsn string) (*Store, error) {
	cfg, err := pgxpool.ParseConfig(dsn)
	if err != nil {
		return nil, fmt.Errorf("postgres: %w", err)
	}
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("postgres %s: %w", cfg.ConnConfig.Host, err)
	}
	s := &Store{pool: pool, names: idcache.New[int32](), Store: &rulesql.Store{DB: rulesDB{pool: pool}}}
	if err := s.migrate(ctx); err != nil {
		pool.Close()
		return nil, fmt.Errorf("postgres %s/%s: %w", cfg.ConnConfig.Host, cfg.ConnConfig.Database, err)
	}
	return s, nil
}

// Close closes the connections.
// ConcurrentWrites reports that write transactions run concurrently (row
// locks, the ledger's advisory lock): ingest appends a batch's ledger
// leaves while the batch before it is inserted.
func (s *Store) ConcurrentWrites() bool { return true }

func (s *Store) Close() error {
	s.pool.Close()
	return nil
}

func (s *Store) migrate(ctx context.Context) error {
	conn, err := s.pool.Acquire(ctx)
	if err != nil {
		return fmt.Errorf("migrate: %w", err)
	}
	defer conn.Release()
	if _, err := conn.Exec(ctx, `SELECT pg_advisory_lock($1)`, int64(migrationLock)); err != nil {
		return fmt.Errorf("migrate: %w", err)
	}
	defer conn.Exec(context.WithoutCancel(ctx), `SELECT pg_advisory_unlock($1)`, int64(migrationLock))
	if _, err := conn.Exec(ctx, `CREATE TABLE IF NOT EXISTS schema_migrations (version integer PRIMARY KEY, applied_at timestamptz NOT NULL)`); err != nil {
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
		if err := apply(ctx, conn.Conn(), version, name); err != nil {
			return fmt.Errorf("migration %s: %w", base, err)
		}
	}
	return nil
}

func apply(ctx context.Context, conn *pgx.Conn, version int, name string) error {
	tx, err := conn.Begin(ctx)
	if err != nil {
		return err
	}
	defer tx.Rollback(ctx)
	var done bool
	if err := tx.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM schema_migrations WHERE version = $1)`, version).Scan(&done); err != nil {
		return err
	}
	if done {
		return nil
	}
	body, err := migrations.ReadFile(name)
	if err != nil {
		return err
	}
	// Without arguments pgx uses the simple protocol: several statements.
	if _, err := tx.Exec(ctx, string(body)); err != nil {
		return err
	}
	if _, err := tx.Exec(ctx, `INSERT INTO schema_migrations (version, applied_at) VALUES ($1, now())`, version); err != nil {
		return err
	}
	return tx.Commit(ctx)
}

// isUnique reports whether err is a unique constraint violation.
func isUnique(err error) bool {
	var pe *pgconn.PgError
	return errors.As(err, &pe) && pe.Code == "23505"
}

// seconds is t with the precision SQLite keeps for PKI times.
func seconds(t time.Time) time.Time { return time.Unix(t.Unix(), 0).UTC() }

// millis is t with the precision snapshots keep.
func millis(t time.Time) time.Time { return time.UnixMilli(t.UnixMilli()).UTC() }

func nullSeconds(t time.Time) *time.Time {
	if t.IsZero() {
		return nil
	}
	u := seconds(t)
	return &u
}

func fromNull(t *time.Time) time.Time {
	if t == nil {
		return time.Time{}
	}
	return t.UTC()
}

// PutCertificate implements store.Store.
func (s *Store) PutCertificate(ctx context.Context, c store.Certificate) error {
	_, err := s.pool.Exec(ctx, `INSERT INTO certificates
		(domain, serial, kind, name, issuer_serial, not_before, not_after, der, revoked_at, reason)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)`,
		c.Domain, c.Serial, c.Kind, c.Name, c.IssuerSerial, seconds(c.NotBefore), seconds(c.NotAfter), c.DER, nullSeconds(c.RevokedAt), c.Reason)
	if err != nil {
		if isUnique(err) {
			return fmt.Errorf("certificate %s/%s: %w", c.Domain, c.Serial, store.ErrExists)
		}
		return fmt.Errorf("put certificate %s/%s: %w", c.Domain, c.Serial, err)
	}
	return nil
}

const certColumns = `domain, serial, kind, name, issuer_serial, not_before, not_after, der, revoked_at, reason`

func scanCert(r pgx.Row) (store.Certificate, error) {
	var c store.Certificate
	var revoked *time.Time
	if err := r.Scan(&c.Domain, &c.Serial, &c.Kind, &c.Name, &c.IssuerSerial, &c.NotBefore, &c.NotAfter, &c.DER, &revoked, &c.Reason); err != nil {
		return c, err
	}
	c.NotBefore, c.NotAfter, c.RevokedAt = c.NotBefore.UTC(), c.NotAfter.UTC(), fromNull(revoked)
	return c, nil
}

// Certificate implements store.Store.
func (s *Store) Certificate(ctx context.Context, domain, serial string) (store.Certificate, error) {
	c, err := scanCert(s.pool.QueryRow(ctx, `SELECT `+certColumns+` FROM certificates WHERE domain = $1 AND serial = $2`, domain, serial))
	if errors.Is(err, pgx.ErrNoRows) {
		return c, fmt.Errorf("certificate %s/%s: %w", domain, serial, store.ErrNotFound)
	}
	if err != nil {
		return c, fmt.Errorf("certificate %s/%s: %w", domain, serial, err)
	}
	return c, nil
}

// ListCertificates implements store.Store.
func (s *Store) ListCertificates(ctx context.Context, f store.CertFilter) ([]store.Certificate, error) {
	q := `SELECT ` + certColumns + ` FROM certificates WHERE true`
	var args []any
	add := func(cond string, v any) {
		args = append(args, v)
		q += fmt.Sprintf(` AND %s = $%d`, cond, len(args))
	}
	if f.Domain != "" {
		add("domain", f.Domain)
	}
	if f.Name != "" {
		add("name", f.Name)
	}
	if f.IssuerSerial != "" {
		add("issuer_serial", f.IssuerSerial)
	}
	if f.RevokedOnly {
		q += ` AND revoked_at IS NOT NULL`
	}
	if len(f.Kinds) > 0 {
		args = append(args, f.Kinds)
		q += fmt.Sprintf(` AND kind = ANY($%d)`, len(args))
	}
	rows, err := s.pool.Query(ctx, q+` ORDER BY seq`, args...)
	if err != nil {
		return nil, fmt.Errorf("list certificates: %w", err)
	}
	defer rows.Close()
	var out []store.Certificate
	for rows.Next() {
		c, err := scanCert(rows)
		if err != nil {
			return nil, fmt.Errorf("list certificates: %w", err)
		}
		out = append(out, c)
	}
	return out, rows.Err()
}

// RevokeCertificate implements store.Store. The revocation and the bump of
// the domain's revocation version are one transaction.
func (s *Store) RevokeCertificate(ctx context.Context, domain, serial string, reason int, at time.Time) error {
	tx, err := s.pool.Begin(ctx)
	if err != nil {
		return fmt.Errorf("revoke %s/%s: %w", domain, serial, err)
	}
	defer tx.Rollback(ctx)
	tag, err := tx.Exec(ctx, `UPDATE certificates SET revoked_at = $1, reason = $2
		WHERE domain = $3 AND serial = $4 AND revoked_at IS NULL`, seconds(at), reason, domain, serial)
	if err != nil {
		return fmt.Errorf("revoke %s/%s: %w", domain, serial, err)
	}
	if tag.RowsAffected() == 0 {
		tx.Rollback(ctx)
		if _, err := s.Certificate(ctx, domain, serial); err != nil {
			return err
		}
		return nil
	}
	if err := bumpRevocationVersion(ctx, tx, domain); err != nil {
		return fmt.Errorf("revoke %s/%s: %w", domain, serial, err)
	}
	if err := tx.Commit(ctx); err != nil {
		return fmt.Errorf("revoke %s/%s: %w", domain, serial, err)
	}
	return nil
}

// NextCRLNumber implements store.Store.
func (s *Store) NextCRLNumber(ctx context.Context, domain, issuerSerial string) (int64, error) {
	var n int64
	err := s.pool.QueryRow(ctx, `INSERT INTO crl_numbers AS c (domain, issuer_serial, last) VALUES ($1, $2, 1)
		ON CONFLICT (domain, issuer_serial) DO UPDATE SET last = c.last + 1
		RETURNING last`, domain, issuerSerial).Scan(&n)
	if err != nil {
		return 0, fmt.Errorf("next CRL number for %s/%s: %w", domain, issuerSerial, err)
	}
	return n, nil
}

// SetServiceRole implements store.Store.
func (s *Store) SetServiceRole(ctx context.Context, service, role string) error {
	_, err := s.pool.Exec(ctx, `INSERT INTO service_roles (service, role) VALUES ($1, $2)
		ON CONFLICT (service) DO UPDATE SET role = excluded.role`, service, role)
	if err != nil {
		return fmt.Errorf("set role of service %s: %w", service, err)
	}
	return nil
}

// ServiceRoles implements store.Store.
func (s *Store) ServiceRoles(ctx context.Context) (map[string]string, error) {
	rows, err := s.pool.Query(ctx, `SELECT service, role FROM service_roles`)
	if err != nil {
		return nil, fmt.Errorf("service roles: %w", err)
	}
	defer rows.Close()
	out := map[string]string{}
	for rows.Next() {
		var svc, role string
		if err := rows.Scan(&svc, &role); err != nil {
			return nil, fmt.Errorf("service roles: %w", err)
		}
		out[svc] = role
	}
	return out, rows.Err()
}

// SQL returns a database/sql handle on the store's pool (with its schema
// settings), for stores of other services that keep their tables in the
// same database (package registrystore). Closing it does not close the
// pool.
func (s *Store) SQL() *sql.DB { return stdlib.OpenDBFromPool(s.pool) }
