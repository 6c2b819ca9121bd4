package datadir

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
)

// nodeLocal are the entries of a data directory that belong to one node
// of a cluster and are not copied to another: the lock of its 'up', the
// embedded broker's and the cluster engine's state, a SQLite database.
var nodeLocal = []string{"up.lock", "broker", "cluster", "fieldtrust.db", "fieldtrust.db-wal", "fieldtrust.db-shm"}

// CopyForNode makes dst the data directory of another node of src's
// multi-node cluster: the same database (DIR/database.url, PostgreSQL),
// the same CA keys, service keys and platform secrets (signed firmware
// URLs, webhook secrets, the registry's key), none of src's node-local
// state. The new node issues its own node certificate (node-NAME) and
// reissues the platform's server certificate for its own addresses at
// its first 'up'. dst must not exist or be empty; src must use
// PostgreSQL.
func CopyForNode(src, dst string) error {
	if _, err := os.Stat(filepath.Join(src, "database.url")); err != nil {
		return fmt.Errorf("%s has no database.url: a multi-node cluster shares one PostgreSQL database (start the first node with --db postgres://...); SQLite stays single-node", src)
	}
	if entries, err := os.ReadDir(dst); err == nil && len(entries) > 0 {
		return fmt.Errorf("%s exists and is not empty: give a new directory for the node", dst)
	} else if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	return filepath.WalkDir(src, func(path string, e fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(src, path)
		if err != nil {
			return err
		}
		if slices.Contains(nodeLocal, rel) {
			if e.IsDir() {
				return filepath.SkipDir
			}
			return nil
		}
		info, err := e.Info()
		if err != nil {
			return err
		}
		to := filepath.Join(dst, rel)
		switch {
		case e.IsDir():
			return os.MkdirAll(to, info.Mode().Perm()|0o700)
		case info.Mode().IsRegular():
			return copyFile(path, to, info.Mode().Perm())
		default:
			return fmt.Errorf("%s: not a regular file or directory; copy it by hand if the node needs it", path)
		}
	})
}

func copyFile(from, to string, mode fs.FileMode) error {
	in, err := os.Open(from)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(to, os.O_WRONLY|os.O_CREATE|os.O_EXCL, mode)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return fmt.Errorf("copy %s: %w", from, err)
	}
	return out.Close()
}
