// Package interoptest locates the third-party test peers that live outside
// the repository (GlobalSign's EST client, the Eclipse Paho MQTT suites):
// they are run from the shared interop folder, never copied into the
// repository.
package interoptest

import (
	"os"
	"path/filepath"
	"testing"
)

// Dir is where the peers live: FIELDTRUST_INTEROP if set, else the first
// shared/interop folder found walking up from the working directory (the
// repository sits next to it on development and CI machines), else
// /work/shared/interop.
func Dir() string {
	if d := os.Getenv("FIELDTRUST_INTEROP"); d != "" {
		return d
	}
	if wd, err := os.Getwd(); err == nil {
		for d := wd; ; d = filepath.Dir(d) {
			cand := filepath.Join(d, "shared", "interop")
			if st, err := os.Stat(cand); err == nil && st.IsDir() {
				return cand
			}
			if filepath.Dir(d) == d {
				break
			}
		}
	}
	return "/work/shared/interop"
}

// Need returns the path of a peer under Dir; when it is missing the test
// is skipped, or fails in CI (CI must not silently test less).
func Need(t testing.TB, rel string) string {
	t.Helper()
	p := filepath.Join(Dir(), rel)
	if _, err := os.Stat(p); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("interop peer %s not found (set FIELDTRUST_INTEROP): %v", p, err)
		}
		t.Skipf("interop peer %s not found (set FIELDTRUST_INTEROP): %v", p, err)
	}
	return p
}
