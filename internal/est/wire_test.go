package est_test

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"math/big"
	"testing"
	"time"

	"github.com/fieldtrust/fieldtrust/internal/est"
)

// boundCSR makes a CSR carrying a fixed channel binding and returns it and
// the binding as it appears in challengePassword.
func boundCSR(t testing.TB) ([]byte, string) {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	binding := make([]byte, 32)
	for i := range binding {
		binding[i] = byte(i * 7)
	}
	der, err := est.NewCSR(rand.Reader, key, &x509.CertificateRequest{Subject: pkix.Name{CommonName: "gw"}, DNSNames: []string{"gw.example"}}, binding)
	if err != nil {
		t.Fatal(err)
	}
	return der, base64.StdEncoding.EncodeToString(binding)
}

// TestNewCSR: the binding lands in challengePassword, the request keeps
// what x509 put in it, and its signature verifies, for every key type.
func TestNewCSR(t *testing.T) {
	ecKey, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	rsaKey, _ := rsa.GenerateKey(rand.Reader, 2048)
	_, edKey, _ := ed25519.GenerateKey(rand.Reader)
	binding := []byte("0123456789abcdef0123456789abcdef")
	for name, key := range map[string]crypto.Signer{"P-384": ecKey, "RSA": rsaKey, "Ed25519": edKey} {
		t.Run(name, func(t *testing.T) {
			der, err := est.NewCSR(rand.Reader, key, &x509.CertificateRequest{DNSNames: []string{"a.example"}}, binding)
			if err != nil {
				t.Fatal(err)
			}
			csr, err := est.DecodeCSR(est.EncodeCSRBody(der))
			if err != nil {
				t.Fatal(err)
			}
			if err := csr.CheckSignature(); err != nil {
				t.Fatal(err)
			}
			got, ok, err := est.ChallengePassword(csr)
			if err != nil || !ok || got != base64.StdEncoding.EncodeToString(binding) {
				t.Fatalf("challengePassword = %q, %v, %v", got, ok, err)
			}
			if len(csr.DNSNames) != 1 || csr.DNSNames[0] != "a.example" {
				t.Fatalf("extensions lost: %v", csr.DNSNames)
			}
		})
	}
	// Without a binding there is no challengePassword.
	der, err := est.NewCSR(rand.Reader, ecKey, &x509.CertificateRequest{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	csr, _ := x509.ParseCertificateRequest(der)
	if _, ok, err := est.ChallengePassword(csr); ok || err != nil {
		t.Fatalf("unbound CSR has a challengePassword: %v %v", ok, err)
	}
}

// TestCertsRoundTrip: what EncodeCerts writes, DecodeCerts reads, in order.
func TestCertsRoundTrip(t *testing.T) {
	p := newPlatform(t, est.Policy{})
	in := []*x509.Certificate{p.d.Transport.Root(), p.d.Transport.ServicesCA()}
	body, err := est.EncodeCerts(in)
	if err != nil {
		t.Fatal(err)
	}
	for i, line := range splitLines(body) {
		if len(line) > 64 {
			t.Fatalf("line %d is %d characters; openssl base64 -d needs at most 64", i+1, len(line))
		}
	}
	out, err := est.DecodeCerts(body)
	if err != nil || len(out) != 2 || !out[0].Equal(in[0]) || !out[1].Equal(in[1]) {
		t.Fatalf("round trip: %v, %v", out, err)
	}
}

func splitLines(b []byte) []string {
	var out []string
	start := 0
	for i, c := range b {
		if c == '\n' {
			out = append(out, string(b[start:i]))
			start = i + 1
		}
	}
	return out
}

// FuzzDecodeCSR feeds arbitrary bodies through the request decoding path
// the server runs before anything is authorized to happen: base64 (or PEM)
// decoding, PKCS#10 parsing, signature check and the challengePassword
// reader. Nothing may panic, and a decoded request must survive re-reading.
func FuzzDecodeCSR(f *testing.F) {
	der, _ := boundCSR(f)
	f.Add(est.EncodeCSRBody(der))
	f.Add([]byte(base64.StdEncoding.EncodeToString(der)))
	f.Add([]byte("-----BEGIN CERTIFICATE REQUEST-----\n" + base64.StdEncoding.EncodeToString(der) + "\n-----END CERTIFICATE REQUEST-----\n"))
	f.Add([]byte("MIIB"))
	f.Add([]byte("not base64 at all"))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, body []byte) {
		csr, err := est.DecodeCSR(body)
		if err != nil {
			return
		}
		_ = csr.CheckSignature()
		pw, ok, err := est.ChallengePassword(csr)
		if err != nil && ok {
			t.Fatalf("ChallengePassword returned ok with error %v", err)
		}
		if !ok && pw != "" {
			t.Fatal("password without ok")
		}
		again, err := est.DecodeCSR(est.EncodeCSRBody(csr.Raw))
		if err != nil || string(again.Raw) != string(csr.Raw) {
			t.Fatalf("re-decoding a decoded CSR: %v", err)
		}
	})
}

// FuzzChainOf feeds arbitrary certs-only bodies (what a server answers to
// cacerts) through the client's chain building: nothing may panic or loop,
// and a chain it returns starts at the leaf, links by signature and stays
// within fieldtrust's depth.
func FuzzChainOf(f *testing.F) {
	rootKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	interKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	leafKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	mk := func(cn string, ca bool, parent *x509.Certificate, pub crypto.PublicKey, key crypto.Signer) *x509.Certificate {
		tmpl := &x509.Certificate{SerialNumber: big.NewInt(int64(len(cn))), Subject: pkix.Name{CommonName: cn}, IsCA: ca, BasicConstraintsValid: true,
			NotBefore: time.Unix(0, 0), NotAfter: time.Unix(1<<32, 0), KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature}
		if parent == nil {
			parent = tmpl
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, pub, key)
		if err != nil {
			f.Fatal(err)
		}
		c, _ := x509.ParseCertificate(der)
		return c
	}
	root := mk("root", true, nil, rootKey.Public(), rootKey)
	inter := mk("inter", true, root, interKey.Public(), rootKey)
	leaf := mk("leaf", false, inter, leafKey.Public(), interKey)
	for _, set := range [][]*x509.Certificate{{leaf, root, inter}, {leaf, inter}, {leaf}, {root, root}, {inter, inter, root}} {
		body, err := est.EncodeCerts(set)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(body)
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		certs, err := est.DecodeCerts(body)
		if err != nil {
			return
		}
		chain, err := est.ChainOf(certs[0], certs[1:])
		if err != nil {
			return
		}
		if !chain[0].Equal(certs[0]) || len(chain) > 5 {
			t.Fatalf("chain of %d starting at %q", len(chain), chain[0].Subject)
		}
		for i := 0; i+1 < len(chain); i++ {
			if chain[i].CheckSignatureFrom(chain[i+1]) != nil {
				t.Fatalf("link %d does not verify", i)
			}
		}
	})
}
