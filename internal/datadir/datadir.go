// Package datadir opens the platform's data directory: the database and the
// two trust domains, initialized on first use. 'fieldtrust up' and every
// offline operator command open it the same way, so they agree on layout.
//
//	DIR/fieldtrust.db     SQLite database (WAL)
//	DIR/pki/transport/    transport PKI (see package pki)
//	DIR/pki/e2e/          end-to-end PKI
//	DIR/platform/         the running platform's own keys and certificates
//	DIR/up.lock           held by the one 'fieldtrust up' on this directory
package datadir

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"github.com/fieldtrust/fieldtrust/internal/pki"
	"github.com/fieldtrust/fieldtrust/internal/store/sqlite"
)

// Dir is an open data directory.
type Dir struct {
	Path      string
	Store     *sqlite.Store
	Transport *pki.Authority
	E2E       *pki.Authority
}

// Open opens dir, creating and initializing it if needed. CA keys are
// encrypted with the passphrase in pki.PassphraseEnv if that is set.
func Open(ctx context.Context, dir string, log *slog.Logger) (*Dir, error) {
	if dir == "" {
		return nil, errors.New("no data directory given (--data)")
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("data directory %s: %w", dir, err)
	}
	if st, err := os.Stat(dir); err != nil || !st.IsDir() {
		return nil, fmt.Errorf("data directory %s is not a directory", dir)
	}
	db, err := sqlite.Open(ctx, filepath.Join(dir, "fieldtrust.db"))
	if err != nil {
		return nil, err
	}
	opts := pki.Options{Passphrase: []byte(os.Getenv(pki.PassphraseEnv)), Logger: log}
	d := &Dir{Path: dir, Store: db}
	if d.Transport, err = pki.Open(ctx, dir, pki.Transport, db, opts); err != nil {
		db.Close()
		return nil, err
	}
	if d.E2E, err = pki.Open(ctx, dir, pki.E2E, db, opts); err != nil {
		db.Close()
		return nil, err
	}
	return d, nil
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
