package envelope

import (
	"context"
	"crypto"
	"crypto/aes"
	"crypto/cipher"
	"crypto/ecdh"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"fmt"
	"testing"
	"time"

	"github.com/ProtonMail/go-crypto/openpgp/aes/keywrap"
)

// Benchmarks. Reproduce with
//
//	go test -run=^$ -bench=. -benchmem ./internal/envelope
//
// and see docs/benchmarks.md for the numbers and what they are compared to.

const benchPayload = 100

type benchFixture struct {
	root    *testCA
	dev     *testLeaf
	rcpts   []*testLeaf
	content []byte
}

func newBenchFixture(b *testing.B, n int) *benchFixture {
	b.Helper()
	fx := &benchFixture{content: make([]byte, benchPayload)}
	fx.root = newTestRoot(b, "root")
	acc := fx.root.issueCA("ms-acc-1").issueCA("acc-1")
	fx.dev = acc.issueLeaf("dev-1", elliptic.P256())
	for i := 0; i < n; i++ {
		fx.rcpts = append(fx.rcpts, fx.root.issueLeaf(fmt.Sprintf("r-%d", i), elliptic.P256()))
	}
	return fx
}

func (fx *benchFixture) certs() []*x509.Certificate {
	var cs []*x509.Certificate
	for _, r := range fx.rcpts {
		cs = append(cs, r.cert)
	}
	return cs
}

// BenchmarkOverhead reports the envelope bytes beyond a 100-byte payload
// (P-256 recipients, signer by key id, no certificates embedded).
func BenchmarkOverhead(b *testing.B) {
	for _, signed := range []bool{false, true} {
		for _, n := range []int{1, 3, 10} {
			mode := "encrypt-only"
			if signed {
				mode = "sign-then-encrypt"
			}
			b.Run(fmt.Sprintf("%s/recipients=%d", mode, n), func(b *testing.B) {
				fx := newBenchFixture(b, n)
				opts := SealOptions{Recipients: fx.certs()}
				if signed {
					opts.Signer = fx.dev.signer(false)
				}
				s, err := NewSealer(opts)
				if err != nil {
					b.Fatal(err)
				}
				var env []byte
				for b.Loop() {
					if env, err = s.Seal(fx.content); err != nil {
						b.Fatal(err)
					}
				}
				b.ReportMetric(float64(len(env)-benchPayload), "overhead-bytes")
			})
		}
	}
}

// BenchmarkSeal measures sign-then-encrypt for 1 recipient; ns/op is the
// inverse of ops/s on one core (run with -cpu 1 for a strict per-core view).
func BenchmarkSeal(b *testing.B) {
	for _, n := range []int{1, 3} {
		b.Run(fmt.Sprintf("sign-then-encrypt/recipients=%d", n), func(b *testing.B) {
			fx := newBenchFixture(b, n)
			s, err := NewSealer(SealOptions{Recipients: fx.certs(), Signer: fx.dev.signer(false)})
			if err != nil {
				b.Fatal(err)
			}
			for b.Loop() {
				if _, err := s.Seal(fx.content); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "ops/s")
		})
	}
}

// pinnedVerifier trusts exactly one certificate: it isolates the cost of
// the envelope from the cost of chain building, which internal/pki caches.
type pinnedVerifier struct{ cert *x509.Certificate }

func (p pinnedVerifier) VerifySigner(leaf *x509.Certificate, _ []*x509.Certificate, _ time.Time) (string, error) {
	if !leaf.Equal(p.cert) {
		return "", ErrUntrustedSigner
	}
	return leaf.Subject.CommonName, nil
}

// BenchmarkOpen measures opening a signed 1-recipient envelope, with the
// signer pinned (envelope cost only) and with full chain verification
// (x509.Verify of a 3-CA chain plus CRL checks).
func BenchmarkOpen(b *testing.B) {
	fx := newBenchFixture(b, 1)
	env, err := Seal(fx.content, SealOptions{Recipients: fx.certs(), Signer: fx.dev.signer(false)})
	if err != nil {
		b.Fatal(err)
	}
	chain := fx.root.verifier()
	chain.Intermediates = fx.dev.chain
	for _, tc := range []struct {
		name string
		v    SignerVerifier
	}{{"signed/pinned-signer", pinnedVerifier{fx.dev.cert}}, {"signed/chain-verifier", chain}} {
		b.Run(tc.name, func(b *testing.B) {
			o := fx.rcpts[0].opener(b, OpenOptions{VerifyOptions: VerifyOptions{Signers: NewCertPool(fx.dev.cert), Verifier: tc.v}})
			for b.Loop() {
				if _, err := o.Open(context.Background(), env); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "ops/s")
		})
	}
}

// BenchmarkFloor measures the raw operations an envelope is made of, and
// their sums for one recipient: the floor Seal and Open are compared to.
func BenchmarkFloor(b *testing.B) {
	recipient, _ := ecdh.P256().GenerateKey(rand.Reader)
	eph, _ := ecdh.P256().GenerateKey(rand.Reader)
	signKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	content := make([]byte, benchPayload)
	si, _ := sharedInfo(wrapAlgDER, nil, 32)
	cek := make([]byte, 32)
	nonce := make([]byte, 12)
	z, _ := eph.ECDH(recipient.PublicKey())
	kek := x963KDF(crypto.SHA256, z, si, 32)
	wrapped, _ := keywrap.Wrap(kek, cek)
	block, _ := aes.NewCipher(cek)
	gcm, _ := cipher.NewGCM(block)
	sealed := gcm.Seal(nil, nonce, content, nil)
	digest := sha256.Sum256(content)
	sig, _ := ecdsa.SignASN1(rand.Reader, signKey, digest[:])

	compressed := compressPoint(eph.PublicKey().Bytes())

	ops := map[string]func(){
		"ecdh-keygen-p256": func() { _, _ = ecdh.P256().GenerateKey(rand.Reader) },
		"ecdh-p256":        func() { _, _ = eph.ECDH(recipient.PublicKey()) },
		// Open decompresses the originator's point (a field square
		// root); not part of the floor sums below, which stay the raw
		// cryptography of the uncompressed case.
		"p256-point-decompress": func() { _, _ = parsePoint(ecdh.P256(), compressed) },
		"x963-kdf-sha256":       func() { _ = x963KDF(crypto.SHA256, z, si, 32) },
		"aes-keywrap":           func() { _, _ = keywrap.Wrap(kek, cek) },
		"aes-keyunwrap":         func() { _, _ = keywrap.Unwrap(kek, wrapped) },
		"aes-gcm-seal-100B": func() {
			b, _ := aes.NewCipher(cek)
			g, _ := cipher.NewGCM(b)
			_ = g.Seal(nil, nonce, content, nil)
		},
		"aes-gcm-open-100B": func() {
			b, _ := aes.NewCipher(cek)
			g, _ := cipher.NewGCM(b)
			_, _ = g.Open(nil, nonce, sealed, nil)
		},
		"ecdsa-p256-sign": func() {
			d := sha256.Sum256(content)
			_, _ = ecdsa.SignASN1(rand.Reader, signKey, d[:])
		},
		"ecdsa-p256-verify": func() {
			d := sha256.Sum256(content)
			_ = ecdsa.VerifyASN1(&signKey.PublicKey, d[:], sig)
		},
	}
	order := []string{"ecdh-keygen-p256", "ecdh-p256", "p256-point-decompress", "x963-kdf-sha256", "aes-keywrap", "aes-keyunwrap",
		"aes-gcm-seal-100B", "aes-gcm-open-100B", "ecdsa-p256-sign", "ecdsa-p256-verify"}
	for _, name := range order {
		op := ops[name]
		b.Run(name, func(b *testing.B) {
			for b.Loop() {
				op()
			}
		})
	}
	sum := func(names ...string) func() {
		return func() {
			for _, n := range names {
				ops[n]()
			}
		}
	}
	// Seal for one recipient: ephemeral key, ECDH, KDF, wrap, GCM, sign
	// (the signature covers the attributes' hash; one more SHA-256).
	sealFloor := sum("ecdh-keygen-p256", "ecdh-p256", "x963-kdf-sha256", "aes-keywrap", "aes-gcm-seal-100B", "ecdsa-p256-sign")
	openFloor := sum("ecdh-p256", "x963-kdf-sha256", "aes-keyunwrap", "aes-gcm-open-100B", "ecdsa-p256-verify")
	for _, tc := range []struct {
		name string
		f    func()
	}{{"seal-1-recipient", sealFloor}, {"open-1-recipient", openFloor}} {
		b.Run(tc.name, func(b *testing.B) {
			for b.Loop() {
				tc.f()
			}
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "ops/s")
		})
	}
}
