package secretbox

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"testing"
)

// TestSealOpen: secrets round-trip with a key file and with a passphrase;
// the wrong name, passphrase or a flipped bit do not open; nothing of the
// plaintext is in the sealed form.
func TestSealOpen(t *testing.T) {
	dir := t.TempDir()
	secret := []byte("whsec-very-secret-bytes-0123456789")
	for _, phrase := range [][]byte{nil, []byte("correct horse")} {
		b := New(dir, phrase)
		sealed, err := b.Seal("ops", secret)
		if err != nil {
			t.Fatal(err)
		}
		if bytes.Contains(sealed, secret[:8]) {
			t.Fatal("the sealed form holds the plaintext")
		}
		got, err := b.Open("ops", sealed)
		if err != nil || !bytes.Equal(got, secret) {
			t.Fatalf("Open = %q, %v", got, err)
		}
		if _, err := b.Open("other", sealed); !errors.Is(err, ErrOpen) {
			t.Errorf("opened under another name: %v", err)
		}
		bad := bytes.Clone(sealed)
		bad[len(bad)-1] ^= 1
		if _, err := b.Open("ops", bad); !errors.Is(err, ErrOpen) {
			t.Errorf("a flipped bit opened: %v", err)
		}
		if phrase != nil {
			if _, err := New(dir, []byte("wrong")).Open("ops", sealed); !errors.Is(err, ErrOpen) {
				t.Errorf("the wrong passphrase opened: %v", err)
			}
			if _, err := New(dir, nil).Open("ops", sealed); !errors.Is(err, ErrOpen) {
				t.Errorf("no passphrase opened: %v", err)
			}
		}
	}
	fi, err := os.Stat(filepath.Join(dir, "platform", "secrets.key"))
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("key file: %v %v", fi, err)
	}
	if _, err := New(t.TempDir(), nil).Open("ops", []byte("short")); !errors.Is(err, ErrOpen) {
		t.Errorf("garbage opened: %v", err)
	}
}
