package registry

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"os"
	"path/filepath"
	"time"
)

// LoadKey loads, or creates at first use, the registry's checkpoint key
// DIR/registry/checkpoint.key and its self-signed certificate
// DIR/registry/checkpoint.crt, which clients and mirrors pin. The
// standalone registry and 'fieldtrust up' keep them at the same place.
func LoadKey(dataDir string) (*ecdsa.PrivateKey, *x509.Certificate, error) {
	dir := filepath.Join(dataDir, "registry")
	kp, cp := filepath.Join(dir, "checkpoint.key"), filepath.Join(dir, "checkpoint.crt")
	kb, err := os.ReadFile(kp)
	if err == nil {
		return parseKeyPair(kp, kb, cp)
	}
	if !errors.Is(err, os.ErrNotExist) {
		return nil, nil, fmt.Errorf("registry checkpoint key: %w", err)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, nil, fmt.Errorf("registry key directory: %w", err)
	}
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	pub, err := x509.MarshalPKIXPublicKey(k.Public())
	if err != nil {
		return nil, nil, err
	}
	ski := sha256.Sum256(pub)
	now := time.Now()
	tmpl := &x509.Certificate{SerialNumber: new(big.Int).SetBytes(ski[:16]), Subject: pkix.Name{CommonName: "fieldtrust DCC registry checkpoints"},
		NotBefore: now.Add(-time.Minute), NotAfter: now.AddDate(20, 0, 0), KeyUsage: x509.KeyUsageDigitalSignature, SubjectKeyId: ski[:20]}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, k.Public(), k)
	if err != nil {
		return nil, nil, err
	}
	kd, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		return nil, nil, err
	}
	// The certificate first: a key without its certificate would be
	// unusable, a certificate without its key is rewritten next time.
	if err := writeFile(cp, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		return nil, nil, err
	}
	if err := writeFile(kp, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kd}), 0o600); err != nil {
		return nil, nil, err
	}
	c, err := x509.ParseCertificate(der)
	return k, c, err
}

func parseKeyPair(kp string, kb []byte, cp string) (*ecdsa.PrivateKey, *x509.Certificate, error) {
	p, _ := pem.Decode(kb)
	if p == nil {
		return nil, nil, fmt.Errorf("%s: no PEM key", kp)
	}
	k, err := x509.ParsePKCS8PrivateKey(p.Bytes)
	if err != nil {
		return nil, nil, fmt.Errorf("%s: %w", kp, err)
	}
	ek, ok := k.(*ecdsa.PrivateKey)
	if !ok {
		return nil, nil, fmt.Errorf("%s is not an ECDSA key", kp)
	}
	cb, err := os.ReadFile(cp)
	if err != nil {
		return nil, nil, fmt.Errorf("registry checkpoint certificate (restore %s from backup, or pin a new one): %w", cp, err)
	}
	cpem, _ := pem.Decode(cb)
	if cpem == nil {
		return nil, nil, fmt.Errorf("%s: no PEM certificate", cp)
	}
	c, err := x509.ParseCertificate(cpem.Bytes)
	if err != nil {
		return nil, nil, fmt.Errorf("%s: %w", cp, err)
	}
	if pub, ok := c.PublicKey.(*ecdsa.PublicKey); !ok || !pub.Equal(ek.Public()) {
		return nil, nil, fmt.Errorf("%s is not the certificate of %s", cp, kp)
	}
	return ek, c, nil
}

// writeFile writes through a synced temporary file and a rename.
func writeFile(path string, b []byte, mode os.FileMode) error {
	f, err := os.CreateTemp(filepath.Dir(path), ".tmp-*")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name())
	if _, err := f.Write(b); err != nil {
		f.Close()
		return err
	}
	if err := f.Chmod(mode); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(f.Name(), path)
}
