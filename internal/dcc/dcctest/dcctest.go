// Package dcctest makes test PKIs for calibration labs and clients: real
// certificates and keys, written as PEM where tests hand them to the CLI,
// OpenSSL or xmlsec1.
package dcctest

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha1"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// Lab is a lab's PKI: Root → Sub CA → Leaf (the signing certificate).
type Lab struct {
	Name            string
	Root, Sub, Leaf *x509.Certificate
	RootKey, SubKey crypto.Signer
	Key             crypto.Signer
}

var serial atomic.Int64

func init() { serial.Store(time.Now().UnixNano()) }

func mk(t testing.TB, tmpl, parent *x509.Certificate, pub crypto.PublicKey, signer crypto.Signer) *x509.Certificate {
	t.Helper()
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, pub, signer)
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func ski(pub crypto.PublicKey) []byte {
	der, _ := x509.MarshalPKIXPublicKey(pub)
	h := sha1.Sum(der)
	return h[:]
}

// NewLab makes a lab PKI valid from an hour ago for a day; the signer key
// is ECDSA P-256, or RSA 2048 with rsaKey.
func NewLab(t testing.TB, name string, rsaKey bool) *Lab {
	t.Helper()
	now := time.Now()
	ca := func(cn string) *x509.Certificate {
		return &x509.Certificate{SerialNumber: big.NewInt(serial.Add(1)), Subject: pkix.Name{CommonName: cn, Organization: []string{name}},
			NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour), IsCA: true, BasicConstraintsValid: true,
			KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign}
	}
	rk, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	rt := ca(name + " Root")
	root := mk(t, rt, rt, rk.Public(), rk)
	sk, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	sub := mk(t, ca(name+" Sub CA"), root, sk.Public(), rk)
	var key crypto.Signer
	if rsaKey {
		key, _ = rsa.GenerateKey(rand.Reader, 2048)
	} else {
		key, _ = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	}
	leaf := mk(t, &x509.Certificate{SerialNumber: big.NewInt(serial.Add(1)), Subject: pkix.Name{CommonName: name + " signer", Organization: []string{name}},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(12 * time.Hour), SubjectKeyId: ski(key.Public()),
		KeyUsage: x509.KeyUsageDigitalSignature | x509.KeyUsageContentCommitment}, sub, key.Public(), sk)
	return &Lab{Name: name, Root: root, Sub: sub, Leaf: leaf, RootKey: rk, SubKey: sk, Key: key}
}

// Recipient issues, under the lab's sub CA, an e2e-style certificate for
// key agreement (a client's or the registry's), with its key.
func (l *Lab) Recipient(t testing.TB, cn string) (*x509.Certificate, *ecdsa.PrivateKey) {
	t.Helper()
	k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	now := time.Now()
	c := mk(t, &x509.Certificate{SerialNumber: big.NewInt(serial.Add(1)), Subject: pkix.Name{CommonName: cn},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(12 * time.Hour), SubjectKeyId: ski(k.Public()),
		KeyUsage: x509.KeyUsageDigitalSignature | x509.KeyUsageKeyAgreement}, l.Sub, k.Public(), l.SubKey)
	return c, k
}

// WritePEM writes certificates (CERTIFICATE blocks) or a key (PRIVATE
// KEY) to dir/name and returns the path.
func WritePEM(t testing.TB, dir, name string, v ...any) string {
	t.Helper()
	var b []byte
	for _, x := range v {
		switch x := x.(type) {
		case *x509.Certificate:
			b = append(b, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: x.Raw})...)
		case crypto.Signer:
			der, err := x509.MarshalPKCS8PrivateKey(x)
			if err != nil {
				t.Fatal(err)
			}
			b = append(b, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})...)
		}
	}
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// Sample returns pydcc's typical temperature DCC as a schema 3.2.0
// document (the first version with a signature slot) with the given
// unique identifier and equipment serial, read from dir (the package's
// relative path to internal/dcc/testdata).
func Sample(t testing.TB, testdata, id, serialNo string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(testdata, "pydcc", "dcc_gp_temperature_typical_v12.xml"))
	if err != nil {
		t.Fatal(err)
	}
	s := string(b)
	s = strings.ReplaceAll(s, "3.1.1", "3.2.0")
	if id != "" {
		s = strings.ReplaceAll(s, "GP_DCC_temperature_typical_1.2", id)
	}
	if serialNo != "" {
		s = strings.ReplaceAll(s, "<dcc:value>string-manufacturer-item</dcc:value>", "<dcc:value>"+serialNo+"</dcc:value>")
	}
	return []byte(s)
}

// Dated sets a Sample's performance day (begin and end) and its
// recalibration due date (the basic_recalibration statement's dcc:date).
func Dated(sample []byte, performed, due string) []byte {
	s := strings.ReplaceAll(string(sample), "1957-08-13", performed)
	return []byte(strings.ReplaceAll(s, "<dcc:date>1959-10-22</dcc:date>", "<dcc:date>"+due+"</dcc:date>"))
}
