package gateway

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"log/slog"
	"math/big"
	"path/filepath"
	"testing"
	"time"

	"github.com/fieldtrust/fieldtrust/internal/queue"
	"github.com/fieldtrust/fieldtrust/internal/snapshot"
)

// selfSigned is a signing credential valid from notBefore to notAfter.
func selfSigned(t *testing.T, notBefore, notAfter time.Time) *credential {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "gw-test"},
		NotBefore: notBefore, NotAfter: notAfter, KeyUsage: x509.KeyUsageDigitalSignature | x509.KeyUsageKeyAgreement,
		SubjectKeyId: []byte{1, 2, 3, 4},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return &credential{key: key, chain: []*x509.Certificate{cert}}
}

// TestSubmitRefusesExpiredSigner: a reading sealed with an expired e2e
// certificate is refused by ingest, which leaves a gap in the device's
// chain for good. The gateway refuses to build it instead, without
// using up its sequence number: once the certificate is renewed, the
// next reading takes the seq the refused one would have had.
func TestSubmitRefusesExpiredSigner(t *testing.T) {
	now := time.Now()
	q, err := queue.Open(filepath.Join(t.TempDir(), "queue.db"), queue.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	creds := &credentials{e2e: selfSigned(t, now.Add(-2*time.Hour), now.Add(-time.Minute))}
	p := newPipeline("acme/plant/gw-1", q, creds, slog.New(slog.DiscardHandler))
	p.setRecipients([]*x509.Certificate{selfSigned(t, now.Add(-time.Hour), now.Add(time.Hour)).leaf()})
	values := []snapshot.Value{{Channel: "t", Value: 1}}

	err = p.submit("dev-1", "pump", now, values)
	if !errors.Is(err, errSignerExpired) {
		t.Fatalf("submit with an expired e2e certificate: %v, want errSignerExpired", err)
	}
	if st, _ := q.Stats(); st.Items != 0 {
		t.Fatalf("%d items queued after the refusal", st.Items)
	}

	creds.e2e = selfSigned(t, now.Add(-time.Minute), now.Add(time.Hour))
	if err := p.submit("dev-1", "pump", now, values); err != nil {
		t.Fatalf("submit after renewal: %v", err)
	}
	items, err := q.Peek(10)
	if err != nil || len(items) != 1 {
		t.Fatalf("queued %d items (%v), want 1", len(items), err)
	}
	if _, seq, _, err := decodeItem(items[0].Data); err != nil || seq != 1 {
		t.Fatalf("first queued reading has seq %d (%v), want 1", seq, err)
	}
}
