package platform

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"math/big"
	"path/filepath"
	"testing"
	"time"

	"github.com/fieldtrust/fieldtrust/internal/pki"
)

// TestBrokerRefusesWeakKeysAndTwoCNs: the broker listener applies the same
// key sizes as EST and refuses a certificate with two CN attributes (Go
// reads the last, another broker may read the first). The certificates
// are minted with the account CA's own key, as a compromised or sloppy
// issuer would: the chain verifies, the identity must not.
func TestBrokerRefusesWeakKeysAndTwoCNs(t *testing.T) {
	r := start(t)
	valid := r.credentials(t, pki.LeafRequest{Path: mustPath(t, "ms-1/acc-1/gw-1")})
	caKey, err := pki.ReadKeyFile(filepath.Join(r.dir, "pki", "transport", "ca", "ms-1+acc-1.key"), nil)
	if err != nil {
		t.Fatal(err)
	}
	var accountCA, masterCA *x509.Certificate
	for _, der := range valid.Certificate[1:] {
		c, _ := x509.ParseCertificate(der)
		switch c.Subject.CommonName {
		case "acc-1":
			accountCA = c
		case "ms-1":
			masterCA = c
		}
	}
	mint := func(subject pkix.Name, key crypto.Signer) tls.Certificate {
		serial, _ := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 64))
		tmpl := &x509.Certificate{SerialNumber: serial, Subject: subject, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
			KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, accountCA, key.Public(), caKey)
		if err != nil {
			t.Fatal(err)
		}
		leaf, _ := x509.ParseCertificate(der)
		return tls.Certificate{PrivateKey: key, Leaf: leaf, Certificate: [][]byte{der, accountCA.Raw, masterCA.Raw}}
	}
	rsa1024, _ := rsa.GenerateKey(rand.Reader, 1024)
	p256, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	oidCN := asn1.ObjectIdentifier{2, 5, 4, 3}
	for _, tt := range []struct {
		name string
		cert tls.Certificate
		ok   bool
	}{
		{"valid", valid, true},
		{"RSA-1024", mint(pkix.Name{CommonName: "ms-1/acc-1/weak"}, rsa1024), false},
		{"two common names", mint(pkix.Name{ExtraNames: []pkix.AttributeTypeAndValue{
			{Type: oidCN, Value: "ms-1/acc-1/victim"}, {Type: oidCN, Value: "ms-1/acc-1/gw-1"}}}, p256), false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, err := r.mqttClient(t, "c-"+tt.name, tt.cert, nil)
			if (err == nil) != tt.ok {
				t.Fatalf("connect: err = %v; want ok=%v", err, tt.ok)
			}
		})
	}
}
