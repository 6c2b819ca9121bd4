package pki

import (
	"crypto"
	"crypto/x509"
	"errors"
	"fmt"

	pkcs12 "software.sslmate.com/src/go-pkcs12"
)

// EncodePKCS12 packs a key and its certificate chain (leaf first, then
// intermediates) into a password-protected PKCS#12 file that browsers and
// OpenSSL import: AES-256-CBC with PBKDF2-HMAC-SHA-256 (PBES2) for the key
// and certificates, HMAC-SHA-256 for the integrity MAC. An empty password
// is refused: the file holds a private key.
func EncodePKCS12(key crypto.PrivateKey, chain []*x509.Certificate, password string) ([]byte, error) {
	if password == "" {
		return nil, errors.New("pkcs12: an empty password would leave the private key unprotected")
	}
	if len(chain) == 0 {
		return nil, errors.New("pkcs12: no certificate")
	}
	b, err := pkcs12.Modern.Encode(key, chain[0], chain[1:], password)
	if err != nil {
		return nil, fmt.Errorf("pkcs12: %w", err)
	}
	return b, nil
}
