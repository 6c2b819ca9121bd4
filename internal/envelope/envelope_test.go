package envelope

import (
	"bytes"
	"context"
	"crypto/elliptic"
	"crypto/sha256"
	"crypto/x509"
	"errors"
	"testing"
	"time"
)

func TestSealOpenRoundTrip(t *testing.T) {
	root := newTestRoot(t, "root")
	acc := root.issueCA("ms-acc-1").issueCA("acc-1")
	dev := acc.issueLeaf("dev-1", elliptic.P256())
	vendor := root.issueCA("vendor-ca").issueLeaf("vendor", elliptic.P256())
	customer := acc.issueLeaf("customer", elliptic.P384())
	content := []byte("snapshot: 21.5 C, seq 42")
	signedAt := testNow.Add(-5 * time.Minute)

	tests := []struct {
		name       string
		recipients []*testLeaf
		signer     *Signer
		lookup     SignerLookup
	}{
		{"one P-256 recipient, signer by key id", []*testLeaf{vendor}, dev.signer(false), NewCertPool(dev.cert)},
		{"P-256 and P-384 recipients", []*testLeaf{vendor, customer}, dev.signer(false), NewCertPool(dev.cert)},
		{"embedded signer chain, no directory", []*testLeaf{vendor, customer}, dev.signer(true), nil},
		{"signer is also a recipient", []*testLeaf{vendor, dev}, dev.signer(false), NewCertPool(dev.cert)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var certs []*x509.Certificate
			for _, r := range tt.recipients {
				certs = append(certs, r.cert)
			}
			env, err := Seal(content, SealOptions{Recipients: certs, Signer: tt.signer, Now: func() time.Time { return signedAt }})
			if err != nil {
				t.Fatal(err)
			}
			for _, r := range tt.recipients {
				v := root.verifier()
				v.Intermediates = dev.chain // known out of band, like the signer
				o := r.opener(t, OpenOptions{VerifyOptions: VerifyOptions{Signers: tt.lookup, Verifier: v}})
				got, err := o.Open(context.Background(), env)
				if err != nil {
					t.Fatalf("%s: %v", r.cert.Subject.CommonName, err)
				}
				if !bytes.Equal(got.Content, content) || !got.Signed || got.Signer != "dev-1" ||
					!got.SigningTime.Equal(signedAt) || got.ContentHash != sha256.Sum256(content) {
					t.Errorf("%s: got %+v", r.cert.Subject.CommonName, got)
				}
			}
			// A bystander in the same PKI cannot open it.
			by := acc.issueLeaf("bystander", elliptic.P256())
			_, err = by.opener(t, OpenOptions{VerifyOptions: VerifyOptions{Verifier: root.verifier()}}).Open(context.Background(), env)
			if !errors.Is(err, ErrNotForMe) {
				t.Errorf("bystander: got %v, want ErrNotForMe", err)
			}
		})
	}
}

func TestUnsigned(t *testing.T) {
	root := newTestRoot(t, "root")
	r := root.issueLeaf("r", elliptic.P256())
	env, err := Seal([]byte("x"), SealOptions{Recipients: []*x509.Certificate{r.cert}})
	if err != nil {
		t.Fatal(err)
	}
	_, err = r.opener(t, OpenOptions{}).Open(context.Background(), env)
	if !errors.Is(err, ErrUnsigned) {
		t.Fatalf("got %v, want ErrUnsigned", err)
	}
	got, err := r.opener(t, OpenOptions{AllowUnsigned: true}).Open(context.Background(), env)
	if err != nil || string(got.Content) != "x" || got.Signed {
		t.Fatalf("got %+v, %v", got, err)
	}
}

// TestSignVerify: Sign's SignedData verifies and names its signer; a
// changed byte does not verify.
func TestSignVerify(t *testing.T) {
	root := newTestRoot(t, "root")
	dev := root.issueCA("ms-acc-1").issueCA("acc-1").issueLeaf("dev-1", elliptic.P256())
	signed, err := Sign([]byte("result"), dev.signer(true), testNow)
	if err != nil {
		t.Fatal(err)
	}
	opts := VerifyOptions{Verifier: root.verifier()}
	got, err := Verify(context.Background(), signed, opts)
	if err != nil || string(got.Content) != "result" || got.Signer != "dev-1" || !got.SigningTime.Equal(testNow) {
		t.Fatalf("verify: %+v %v", got, err)
	}
	bad := append([]byte(nil), signed...)
	bad[len(bad)-10] ^= 1
	if _, err := Verify(context.Background(), bad, opts); err == nil {
		t.Fatal("a changed SignedData verified")
	}
}
