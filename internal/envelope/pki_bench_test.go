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
	env, err := Seal(make([]byte, benchPayload), SealOptions{Recipients: []*x509.Certificate{rcpt.Cert}, Signer: &Signer{Cert: dev.Cert, Key: devKey, Chain: dev.Chain[1:]}})
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
}
