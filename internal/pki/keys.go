package pki

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/youmark/pkcs8"
)

// PassphraseEnv names the environment variable that, when set, holds the
// passphrase CA private keys are encrypted with at rest.
const PassphraseEnv = "FIELDTRUST_CA_PASSPHRASE"

// ErrPassphrase is returned when a CA key is encrypted and no or the wrong
// passphrase was given.
var ErrPassphrase = errors.New("CA key passphrase missing or wrong")

// keyEncryption is scrypt (N=2^14, r=8: 16 MiB, the scrypt paper's
// interactive setting) with AES-256-CBC in PBES2. N=2^15 would exceed
// OpenSSL's default 32 MiB scrypt memory cap, and operators must be able to
// read their keys with 'openssl pkey' rather than be locked into our tools.
var keyEncryption = &pkcs8.Opts{
	Cipher: pkcs8.AES256CBC,
	KDFOpts: pkcs8.ScryptOpts{
		SaltSize: 16, CostParameter: 1 << 14, BlockSize: 8, ParallelizationParameter: 1,
	},
}

// GenerateKey returns a new ECDSA key on curve.
func GenerateKey(curve elliptic.Curve) (*ecdsa.PrivateKey, error) {
	k, err := ecdsa.GenerateKey(curve, rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generate key: %w", err)
	}
	return k, nil
}

// MarshalKeyPEM encodes key as PKCS#8 PEM, encrypted if passphrase is set.
func MarshalKeyPEM(key crypto.PrivateKey, passphrase []byte) ([]byte, error) {
	if len(passphrase) > 0 {
		der, err := pkcs8.MarshalPrivateKey(key, passphrase, keyEncryption)
		if err != nil {
			return nil, fmt.Errorf("encrypt key: %w", err)
		}
		return pem.EncodeToMemory(&pem.Block{Type: "ENCRYPTED PRIVATE KEY", Bytes: der}), nil
	}
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("marshal key: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}

// ParseKeyPEM decodes a PKCS#8 (plain or encrypted) or SEC 1 EC key.
func ParseKeyPEM(data, passphrase []byte) (crypto.Signer, error) {
	block, _ := pem.Decode(data)
	if block == nil {
		return nil, errors.New("no PEM block found")
	}
	var key any
	var err error
	switch block.Type {
	case "PRIVATE KEY":
		key, err = x509.ParsePKCS8PrivateKey(block.Bytes)
	case "EC PRIVATE KEY":
		key, err = x509.ParseECPrivateKey(block.Bytes)
	case "ENCRYPTED PRIVATE KEY":
		if len(passphrase) == 0 {
			return nil, fmt.Errorf("%w: the key is encrypted; set %s", ErrPassphrase, PassphraseEnv)
		}
		key, err = pkcs8.ParsePKCS8PrivateKey(block.Bytes, passphrase)
		if err != nil {
			return nil, fmt.Errorf("%w: %v", ErrPassphrase, err)
		}
	default:
		return nil, fmt.Errorf("unexpected PEM block %q", block.Type)
	}
	if err != nil {
		return nil, err
	}
	s, ok := key.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("key of type %T cannot sign", key)
	}
	return s, nil
}

// WriteKeyFile writes key to file with mode 0600, refusing to overwrite.
func WriteKeyFile(file string, key crypto.PrivateKey, passphrase []byte) error {
	data, err := MarshalKeyPEM(key, passphrase)
	if err != nil {
		return err
	}
	return writeNew(file, data, 0o600)
}

// ReadKeyFile reads a private key written by WriteKeyFile or by OpenSSL.
func ReadKeyFile(file string, passphrase []byte) (crypto.Signer, error) {
	data, err := os.ReadFile(file)
	if err != nil {
		return nil, err
	}
	k, err := ParseKeyPEM(data, passphrase)
	if err != nil {
		return nil, fmt.Errorf("key %s: %w", file, err)
	}
	return k, nil
}

// EncodeCertsPEM encodes certificates as consecutive PEM blocks.
func EncodeCertsPEM(certs ...*x509.Certificate) []byte {
	var out []byte
	for _, c := range certs {
		out = append(out, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})...)
	}
	return out
}

// ParseCertsPEM decodes every CERTIFICATE block in data, in order.
func ParseCertsPEM(data []byte) ([]*x509.Certificate, error) {
	var certs []*x509.Certificate
	for {
		var block *pem.Block
		block, data = pem.Decode(data)
		if block == nil {
			break
		}
		if block.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("certificate %d: %w", len(certs)+1, err)
		}
		certs = append(certs, c)
	}
	if len(certs) == 0 {
		return nil, errors.New("no PEM certificate found")
	}
	return certs, nil
}

// ReadCertsFile reads a PEM file of one or more certificates.
func ReadCertsFile(file string) ([]*x509.Certificate, error) {
	data, err := os.ReadFile(file)
	if err != nil {
		return nil, err
	}
	certs, err := ParseCertsPEM(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", file, err)
	}
	return certs, nil
}

// writeNew writes data to a new file atomically: a temporary file in the
// same directory is renamed into place, so a crash never leaves half a key.
// It fails if file already exists.
func writeNew(file string, data []byte, mode os.FileMode) error {
	if _, err := os.Lstat(file); err == nil {
		return fmt.Errorf("%s: %w", file, os.ErrExist)
	}
	return writeAtomic(file, data, mode)
}

// writeAtomic replaces file with data via a synced temporary file.
func writeAtomic(file string, data []byte, mode os.FileMode) error {
	tmp, err := os.CreateTemp(filepath.Dir(file), ".tmp-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if err := tmp.Chmod(mode); err != nil {
		tmp.Close()
		return err
	}
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), file)
}

// subjectKeyID computes a key identifier as RFC 7093 §2 method 1: the
// leftmost 160 bits of the SHA-256 hash of the subjectPublicKey BIT STRING.
func subjectKeyID(pub crypto.PublicKey) ([]byte, error) {
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return nil, err
	}
	var spki struct {
		Algorithm pkix.AlgorithmIdentifier
		PublicKey asn1.BitString
	}
	if _, err := asn1.Unmarshal(der, &spki); err != nil {
		return nil, err
	}
	sum := sha256.Sum256(spki.PublicKey.Bytes)
	return sum[:20], nil
}

// ErrKeyNotAccepted is returned (wrapped) for a public key of a type or
// size the domain does not accept.
var ErrKeyNotAccepted = errors.New("key not accepted")

// MinRSABits is the smallest RSA modulus accepted anywhere: 112-bit
// security (NIST SP 800-57), what EST has always required.
const MinRSABits = 2048

// CheckKey enforces the key types and sizes of a domain. It is the one
// rule for CSRs (EST), for issuing (Issue) and for every certificate
// presented to the platform (Verifier.Identify, and so the HTTPS guard, the
// broker and envelope signers): a key that EST would refuse cannot enter
// through a CA key, an old certificate or another listener either.
//
// Transport accepts ECDSA P-256/P-384/P-521, Ed25519 and RSA of at least
// MinRSABits; e2e only ECDSA P-256 and P-384, since payloads are sealed
// with ECDH (package envelope).
func CheckKey(pub crypto.PublicKey, domain Domain) error {
	switch k := pub.(type) {
	case *ecdsa.PublicKey:
		switch k.Curve {
		case elliptic.P256(), elliptic.P384():
			return nil
		case elliptic.P521():
			if domain == Transport {
				return nil
			}
		}
		return fmt.Errorf("%w: a key on curve %s is not accepted for %s; use P-256 or P-384", ErrKeyNotAccepted, k.Curve.Params().Name, domain)
	case *rsa.PublicKey:
		if domain == Transport && k.N.BitLen() >= MinRSABits {
			return nil
		}
		if domain == Transport {
			return fmt.Errorf("%w: an RSA-%d key is not accepted; use ECDSA P-256/P-384/P-521, Ed25519 or RSA of at least %d bits", ErrKeyNotAccepted, k.N.BitLen(), MinRSABits)
		}
	case ed25519.PublicKey:
		if domain == Transport {
			return nil
		}
	}
	if domain == E2E {
		return fmt.Errorf("%w: a %s key is not accepted for e2e: use ECDSA P-256 or P-384 (payloads are sealed with ECDH)", ErrKeyNotAccepted, keyType(pub))
	}
	return fmt.Errorf("%w: a %s key is not accepted: use ECDSA P-256/P-384/P-521, Ed25519 or RSA of at least %d bits", ErrKeyNotAccepted, keyType(pub), MinRSABits)
}

func keyType(pub crypto.PublicKey) string {
	switch pub.(type) {
	case *ecdsa.PublicKey:
		return "ECDSA"
	case *rsa.PublicKey:
		return "RSA"
	case ed25519.PublicKey:
		return "Ed25519"
	}
	return fmt.Sprintf("%T", pub)
}

// KeyID identifies a CA by its public key: the SHA-256 of its DER
// SubjectPublicKeyInfo, lowercase hex. Unlike a subject or a
// subjectKeyIdentifier extension, which any CA can copy, it cannot be
// claimed by a CA that lacks the key: a certificate verifies under a CA
// only if that key signed it. Claims name manufacturer CAs by it.
func KeyID(c *x509.Certificate) string {
	sum := sha256.Sum256(c.RawSubjectPublicKeyInfo)
	return hex.EncodeToString(sum[:])
}

// Fingerprint is the SHA-256 of a certificate's DER, lowercase hex, as
// 'openssl x509 -fingerprint -sha256' prints it without colons.
func Fingerprint(c *x509.Certificate) string {
	sum := sha256.Sum256(c.Raw)
	return hex.EncodeToString(sum[:])
}
