package envelope

import (
	"context"
	"crypto/elliptic"
	"crypto/x509"
	"path/filepath"
	"testing"

	"github.com/fieldtrust/fieldtrust/internal/pki"
	"github.com/fieldtrust/fieldtrust/internal/store/sqlite"
)

// BenchmarkOpenPKIVerifier opens with the platform's own signer verifier
// (pki.Verifier, e2e domain), which caches verified chains and checks
// revocation and namespace on every call: what ingest does per snapshot.
func BenchmarkOpenPKIVerifier(b *testing.B) {
	ctx := context.Background()
	dir := b.TempDir()
	db, err := sqlite.Open(ctx, filepath.Join(dir, "db"))
	if err != nil {
		b.Fatal(err)
	}
	defer db.Close()
	a, err := pki.Open(ctx, dir, pki.E2E, db, pki.Options{})
	if err != nil {
		b.Fatal(err)
	}
	devKey, _ := pki.GenerateKey(elliptic.P256())
	dev, err := a.Issue(ctx, pki.LeafRequest{Path: pki.Path{"ms-1", "acc-1", "dev-1"}, PublicKey: devKey.Public()})
	if err != nil {
		b.Fatal(err)
	}
	rcptKey, _ := pki.GenerateKey(elliptic.P256())
	rcpt, err := a.Issue(ctx, pki.LeafRequest{Service: "ingest", PublicKey: rcptKey.Public()})
	if err != nil {
		b.Fatal(err)
	}
	other, err := a.Issue(ctx, pki.LeafRequest{Path: pki.Path{"ms-1"}, PublicKey: devKey.Public()})
	if err != nil {
		b.Fatal(err)
	}
	v, err := a.Verifier(ctx)
	if err != nil {
		b.Fatal(err)
	}
	pool := NewCertPool(append([]*x509.Certificate{dev.Cert}, dev.Chain[1:]...)...)
	o, err := NewOpener(rcpt.Cert, rcptKey, OpenOptions{VerifyOptions: VerifyOptions{Signers: pool, Verifier: v}})
	if err != nil {
		b.Fatal(err)
	}
	for _, shape := range []struct {
		name       string
		payload    int
		recipients []*x509.Certificate
	}{
		{"100B-1rcpt", benchPayload, []*x509.Certificate{rcpt.Cert}},
		// The end-to-end workload's envelope: a snapshot of 340 values
		// sealed for ingest and the customer's master account.
		{"11KB-2rcpt", 11_500, []*x509.Certificate{rcpt.Cert, other.Cert}},
	} {
		b.Run(shape.name, func(b *testing.B) {
			env, err := Seal(make([]byte, shape.payload), SealOptions{Recipients: shape.recipients, Signer: &Signer{Cert: dev.Cert, Key: devKey, Chain: dev.Chain[1:]}})
			if err != nil {
				b.Fatal(err)
			}
			b.ReportAllocs()
			for b.Loop() {
				res, err := o.Open(ctx, env)
				if err != nil {
					b.Fatal(err)
				}
				if res.Signer != "ms-1/acc-1/dev-1" {
					b.Fatalf("signer %q", res.Signer)
				}
			}
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "ops/s")
		})
	}
}
