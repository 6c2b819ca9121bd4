// Package secretbox keeps small secrets (webhook signing keys) encrypted at
// rest, like the CA keys: with the passphrase of pki.PassphraseEnv when it
// is set (scrypt N=2^14, r=8, the CA keys' cost, then AES-256-GCM), else
// with a random key in the data directory (DIR/platform/secrets.key,
// 0600), so a copy of the database alone (a PostgreSQL dump, a backup)
// does not reveal them. A sealed secret is bound to its name (GCM's
// additional data): moved to another record it does not open.
package secretbox

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"golang.org/x/crypto/scrypt"
)

// ErrOpen is returned (wrapped) when a sealed secret does not open: a
// wrong or missing passphrase or key file, or a damaged record.
var ErrOpen = errors.New("secret does not open")

const (
	magic      = "ftsb1"
	modeKey    = 0
	modePhrase = 1
	saltSize   = 16
)

// Box seals and opens secrets.
type Box struct {
	passphrase []byte
	keyFile    string
}

// New returns the box of a data directory: the passphrase if not empty,
// else the key file DIR/platform/secrets.key (created on first Seal).
func New(dataDir string, passphrase []byte) *Box {
	return &Box{passphrase: passphrase, keyFile: filepath.Join(dataDir, "platform", "secrets.key")}
}

func (b *Box) key(mode byte, salt []byte, create bool) ([]byte, error) {
	if mode == modePhrase {
		if len(b.passphrase) == 0 {
			return nil, fmt.Errorf("%w: it was sealed with a passphrase; set FIELDTRUST_CA_PASSPHRASE", ErrOpen)
		}
		return scrypt.Key(b.passphrase, salt, 1<<14, 8, 1, 32)
	}
	k, err := os.ReadFile(b.keyFile)
	if errors.Is(err, os.ErrNotExist) && create {
		k = make([]byte, 32)
		rand.Read(k)
		if err := os.MkdirAll(filepath.Dir(b.keyFile), 0o700); err != nil {
			return nil, err
		}
		f, err := os.OpenFile(b.keyFile, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
		if errors.Is(err, os.ErrExist) {
			return b.key(mode, salt, false) // another process made it first
		}
		if err != nil {
			return nil, err
		}
		if _, err := f.Write(k); err != nil {
			f.Close()
			return nil, err
		}
		if err := f.Sync(); err != nil {
			f.Close()
			return nil, err
		}
		return k, f.Close()
	}
	if err != nil {
		return nil, fmt.Errorf("%w: key file: %v", ErrOpen, err)
	}
	if len(k) != 32 {
		return nil, fmt.Errorf("%w: key file %s is damaged (not 32 bytes)", ErrOpen, b.keyFile)
	}
	return k, nil
}

func aead(key []byte) (cipher.AEAD, error) {
	c, err := aes.NewCipher(key)
	if err != nil {
		return nil, err
	}
	return cipher.NewGCM(c)
}

// Ensure makes the data directory's key file now, unless a passphrase is
// set, so that the directories copied from this one (the nodes of a
// cluster, 'fieldtrust cluster add-node') share it before anything is
// sealed.
func (b *Box) Ensure() error {
	if len(b.passphrase) > 0 {
		return nil
	}
	_, err := b.key(modeKey, nil, true)
	return err
}

// Seal encrypts secret, bound to name.
func (b *Box) Seal(name string, secret []byte) ([]byte, error) {
	mode := byte(modeKey)
	if len(b.passphrase) > 0 {
		mode = modePhrase
	}
	salt := make([]byte, saltSize)
	rand.Read(salt)
	k, err := b.key(mode, salt, true)
	if err != nil {
		return nil, fmt.Errorf("seal secret %s: %w", name, err)
	}
	g, err := aead(k)
	if err != nil {
		return nil, err
	}
	nonce := make([]byte, g.NonceSize())
	rand.Read(nonce)
	out := append([]byte(magic), mode)
	out = append(out, salt...)
	out = append(out, nonce...)
	return g.Seal(out, nonce, secret, []byte(name)), nil
}

// Open decrypts a sealed secret of name.
func (b *Box) Open(name string, sealed []byte) ([]byte, error) {
	head := len(magic) + 1 + saltSize + 12
	if len(sealed) < head+16 || !bytes.HasPrefix(sealed, []byte(magic)) {
		return nil, fmt.Errorf("open secret %s: %w: not a sealed secret", name, ErrOpen)
	}
	mode, salt, nonce := sealed[len(magic)], sealed[len(magic)+1:len(magic)+1+saltSize], sealed[head-12:head]
	k, err := b.key(mode, salt, false)
	if err != nil {
		return nil, fmt.Errorf("open secret %s: %w", name, err)
	}
	g, err := aead(k)
	if err != nil {
		return nil, err
	}
	pt, err := g.Open(nil, nonce, sealed[head:], []byte(name))
	if err != nil {
		return nil, fmt.Errorf("open secret %s: %w", name, ErrOpen)
	}
	return pt, nil
}
