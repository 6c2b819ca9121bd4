package agent

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/fieldtrust/fieldtrust/internal/pki"
)

// KeyFile is the platform's agent key, DIR/platform/agents.key: the RSA
// key that signs initial access tokens and access tokens (its public half
// is served at /oauth/token_key), from which the key that seals shared
// secrets at rest is derived. PKCS#8 PEM, 0600, encrypted with
// pki.PassphraseEnv when that is set, like the CA keys.
const KeyFile = "platform/agents.key"

// tokenKeyBits is the token key's size: RSA 2048, what the MindConnect
// agents' token verification expects (RS256), at 1.3 ms a signature.
const tokenKeyBits = 2048

// Keys are the agent service's keys.
type Keys struct {
	token *rsa.PrivateKey
	kid   string // key id: hex SHA-256 of the public key's DER, shortened
	seal  cipher.AEAD
}

// LoadKeys reads DIR/platform/agents.key, creating it on first use. Two
// processes creating it at once agree on one key: the file is published
// with a hard link, which fails if the other was first.
func LoadKeys(dir string, passphrase []byte) (*Keys, error) {
	file := filepath.Join(dir, KeyFile)
	key, err := pki.ReadKeyFile(file, passphrase)
	if errors.Is(err, os.ErrNotExist) {
		key, err = createKey(file, passphrase)
	}
	if err != nil {
		return nil, fmt.Errorf("agent key: %w", err)
	}
	rk, ok := key.(*rsa.PrivateKey)
	if !ok || rk.N.BitLen() < tokenKeyBits {
		return nil, fmt.Errorf("agent key %s: not an RSA key of at least %d bits; move it away to create a new one (agents must onboard again)", file, tokenKeyBits)
	}
	return newKeys(rk)
}

func newKeys(rk *rsa.PrivateKey) (*Keys, error) {
	der, err := x509.MarshalPKCS8PrivateKey(rk)
	if err != nil {
		return nil, err
	}
	sealKey, err := hkdf.Key(sha256.New, der, nil, "fieldtrust agent secrets v1", 32)
	if err != nil {
		return nil, err
	}
	block, err := aes.NewCipher(sealKey)
	if err != nil {
		return nil, err
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return nil, err
	}
	pub, err := x509.MarshalPKIXPublicKey(&rk.PublicKey)
	if err != nil {
		return nil, err
	}
	sum := sha256.Sum256(pub)
	return &Keys{token: rk, kid: fmt.Sprintf("%x", sum[:8]), seal: aead}, nil
}

func createKey(file string, passphrase []byte) (*rsa.PrivateKey, error) {
	if err := os.MkdirAll(filepath.Dir(file), 0o700); err != nil {
		return nil, err
	}
	rk, err := rsa.GenerateKey(rand.Reader, tokenKeyBits)
	if err != nil {
		return nil, err
	}
	data, err := pki.MarshalKeyPEM(rk, passphrase)
	if err != nil {
		return nil, err
	}
	tmp, err := os.CreateTemp(filepath.Dir(file), ".tmp-agents-*")
	if err != nil {
		return nil, err
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return nil, err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return nil, err
	}
	if err := tmp.Close(); err != nil {
		return nil, err
	}
	if err := os.Link(tmp.Name(), file); errors.Is(err, os.ErrExist) {
		// Another process created it first: use that one.
		k, err := pki.ReadKeyFile(file, passphrase)
		if err != nil {
			return nil, err
		}
		if rk, ok := k.(*rsa.PrivateKey); ok {
			return rk, nil
		}
		return nil, fmt.Errorf("%s is not an RSA key", file)
	} else if err != nil {
		return nil, err
	}
	return rk, nil
}

// sealSecret encrypts a shared secret for storage, bound to the client id
// (a sealed secret copied to another agent's row does not open).
func (k *Keys) sealSecret(clientID, secret string) ([]byte, error) {
	nonce := make([]byte, k.seal.NonceSize())
	if _, err := rand.Read(nonce); err != nil {
		return nil, err
	}
	return k.seal.Seal(nonce, nonce, []byte(secret), []byte(clientID)), nil
}

// openSecret decrypts what sealSecret sealed.
func (k *Keys) openSecret(clientID string, sealed []byte) ([]byte, error) {
	n := k.seal.NonceSize()
	if len(sealed) < n {
		return nil, errors.New("sealed secret too short")
	}
	return k.seal.Open(nil, sealed[:n], sealed[n:], []byte(clientID))
}

// PublicPEM is the token key's public half as PEM on one line (header,
// base64 without line breaks, footer): the form the MindConnect Node.js
// SDK expects in /oauth/token_key's value before it re-inserts the line
// breaks after the header and before the footer.
func (k *Keys) PublicPEM() string {
	der, err := x509.MarshalPKIXPublicKey(&k.token.PublicKey)
	if err != nil {
		panic(err) // an RSA public key always marshals
	}
	b := pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der})
	return strings.ReplaceAll(strings.TrimSpace(string(b)), "\n", "")
}
