package pki

import (
	"testing"

	"github.com/fieldtrust/fieldtrust/internal/store"
	"github.com/fieldtrust/fieldtrust/internal/store/sqlite"
)

func storeFilter(name string) store.CertFilter { return store.CertFilter{Name: name} }

func sqliteOpen(tb testing.TB, dir string) (*sqlite.Store, error) {
	s, err := sqlite.Open(tb.Context(), dir+"/db")
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { s.Close() })
	return s, nil
}

// chainBuildWaiters returns how many callers wait for a chain build.
func (v *Verifier) chainBuildWaiters() int {
	v.mu.Lock()
	defer v.mu.Unlock()
	n := 0
	for _, b := range v.building {
		n += b.waiters
	}
	return n
}
