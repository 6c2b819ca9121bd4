// Package datadir opens the platform's data directory: the database and the
// two trust domains, initialized on first use. 'fieldtrust up' and every
// offline operator command open it the same way, so they agree on layout.
//
//	DIR/fieldtrust.db     SQLite database (WAL), unless DIR/database.url names another
//	DIR/database.url      the database DSN chosen at first use (PostgreSQL), 0600
//	DIR/pki/transport/    transport PKI (see package pki)
//	DIR/pki/e2e/          end-to-end PKI
//	DIR/platform/         the running platform's own keys and certificates
//	DIR/up.lock           held by the one 'fieldtrust up' on this directory
package datadir

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"github.com/fieldtrust/fieldtrust/internal/pki"
	"github.com/fieldtrust/fieldtrust/internal/secretbox"
	"github.com/fieldtrust/fieldtrust/internal/store"
	"github.com/fieldtrust/fieldtrust/internal/store/postgres"
	"github.com/fieldtrust/fieldtrust/internal/store/sqlite"
	"github.com/fieldtrust/fieldtrust/internal/tacs"
)

// Dir is an open data directory.
type Dir struct {
	Path      string
	Store     store.Store
	Transport *pki.Authority
	E2E       *pki.Authority
}

// Open opens dir, creating and initializing it if needed. CA keys are
// encrypted with the passphrase in pki.PassphraseEnv if that is set. The
// database is the one the directory was first opened with (see OpenDB).
func Open(ctx context.Context, dir string, log *slog.Logger) (*Dir, error) {
	return OpenDB(ctx, dir, "", log)
}

// OpenDB is Open with a database: "" for the one the directory already
// uses (SQLite by default), or a postgres:// DSN. The choice is recorded
// in DIR/database.url at first use so that every later command, the
// offline operator tools included, reaches the same database; opening with
// a different one is refused rather than silently splitting the state.
func OpenDB(ctx context.Context, dir, db string, log *slog.Logger) (*Dir, error) {
	if dir == "" {
		return nil, errors.New("no data directory given (--data)")
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("data directory %s: %w", dir, err)
	}
	if st, err := os.Stat(dir); err != nil || !st.IsDir() {
		return nil, fmt.Errorf("data directory %s is not a directory", dir)
	}
	st, err := OpenStore(ctx, dir, db)
	if err != nil {
		return nil, err
	}
	pass := []byte(os.Getenv(pki.PassphraseEnv))
	opts := pki.Options{Passphrase: pass, Logger: log}
	if v, ok := st.(pki.KeyVault); ok {
		// A database other data directories may share (PostgreSQL: the
		// nodes of a cluster): master and account CAs are kept there,
		// sealed, for every node.
		box := secretbox.New(dir, pass)
		if err := box.Ensure(); err != nil {
			st.Close()
			return nil, fmt.Errorf("data directory %s: secrets key: %w", dir, err)
		}
		opts.Vault, opts.Sealer = v, box
	}
	d := &Dir{Path: dir, Store: st}
	if d.Transport, err = pki.Open(ctx, dir, pki.Transport, st, opts); err != nil {
		st.Close()
		return nil, err
	}
	if d.E2E, err = pki.Open(ctx, dir, pki.E2E, st, opts); err != nil {
		st.Close()
		return nil, err
	}
	return d, nil
}

// Initialized reports whether dir holds a platform database already: the
// directory of an 'up' or of an operator command.
func Initialized(dir string) bool {
	for _, f := range []string{"fieldtrust.db", "database.url"} {
		if _, err := os.Stat(filepath.Join(dir, f)); err == nil {
			return true
		}
	}
	return false
}

// OpenStore opens only the database of dir (db as for OpenDB), without
// the PKIs: for commands that keep their own tables in the platform's
// database, such as 'fieldtrust registry issuer' on the directory of the
// 'up' that serves the DCC registry.
func OpenStore(ctx context.Context, dir, db string) (store.Store, error) {
	dsn, err := chooseDB(dir, db)
	if err != nil {
		return nil, err
	}
	var st store.Store
	if dsn == "" {
		st, err = sqlite.Open(ctx, filepath.Join(dir, "fieldtrust.db"))
	} else {
		st, err = postgres.Open(ctx, dsn)
	}
	if err != nil {
		return nil, err
	}
	return st, nil
}

// chooseDB resolves the database of dir: "" for SQLite, else a DSN.
func chooseDB(dir, db string) (string, error) {
	file := filepath.Join(dir, "database.url")
	saved, err := os.ReadFile(file)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return "", err
	}
	prev := strings.TrimSpace(string(saved))
	if db == "sqlite" {
		db = ""
	}
	if db != "" && !strings.HasPrefix(db, "postgres://") && !strings.HasPrefix(db, "postgresql://") {
		return "", fmt.Errorf("--db %q: use a postgres:// URL, or leave it out for SQLite in the data directory", db)
	}
	_, sqliteErr := os.Stat(filepath.Join(dir, "fieldtrust.db"))
	switch {
	case db == "":
		return prev, nil
	case prev == db:
		return db, nil
	case prev != "":
		return "", fmt.Errorf("data directory %s uses another database (see %s); pass the same --db or none", dir, file)
	case sqliteErr == nil:
		return "", fmt.Errorf("data directory %s already keeps its state in SQLite (fieldtrust.db); use a new --data directory for PostgreSQL", dir)
	}
	return db, os.WriteFile(file, []byte(db+"\n"), 0o600)
}

// Authority returns the authority of a domain.
func (d *Dir) Authority(domain pki.Domain) *pki.Authority {
	if domain == pki.E2E {
		return d.E2E
	}
	return d.Transport
}

// Close closes the database.
func (d *Dir) Close() error { return d.Store.Close() }

// LockUp takes the lock that makes 'fieldtrust up' the only platform on the
// directory. It fails at once, naming the holder, if another one runs.
func LockUp(dir string) (unlock func(), err error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("data directory %s: %w", dir, err)
	}
	file := filepath.Join(dir, "up.lock")
	f, err := os.OpenFile(file, os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, fmt.Errorf("lock %s: %w", file, err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		holder, _ := os.ReadFile(file)
		f.Close()
		pid := strings.TrimSpace(string(holder))
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, fmt.Errorf("another 'fieldtrust up' (pid %s) is already running on %s; stop it first or use another --data directory", pid, dir)
		}
		return nil, fmt.Errorf("lock %s: %w", file, err)
	}
	f.Truncate(0)
	f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)
	return func() {
		syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
		f.Close()
	}, nil
}

// GrantsFile is the optional service grants file of a data directory
// (tacs.ParseGrants): roles beyond, or replacing, the built-in ones.
const GrantsFile = "grants.json"

// Grants returns the service grants of the data directory: from file, or
// from DIR/grants.json when file is empty and it exists, else the built-in
// roles.
func Grants(dir, file string) (tacs.Grants, error) {
	explicit := file != ""
	if !explicit {
		file = filepath.Join(dir, GrantsFile)
	}
	data, err := os.ReadFile(file)
	if errors.Is(err, fs.ErrNotExist) && !explicit {
		return tacs.DefaultGrants(), nil
	}
	if err != nil {
		return nil, fmt.Errorf("read grants: %w", err)
	}
	g, err := tacs.ParseGrants(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w (fix the file, or remove it for the built-in roles)", file, err)
	}
	return g, nil
}
