package pki

import (
	"context"
	"crypto/elliptic"
	"crypto/x509"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/fieldtrust/fieldtrust/internal/secretbox"
	"github.com/fieldtrust/fieldtrust/internal/store"
	"github.com/fieldtrust/fieldtrust/internal/store/postgres"
	"github.com/fieldtrust/fieldtrust/internal/store/postgres/pgtest"
)

// node is one data directory of a cluster on a shared PostgreSQL store.
func vaultNode(t *testing.T, db *postgres.Store, from string) (string, *Authority) {
	t.Helper()
	dir := t.TempDir()
	if from != "" {
		// What 'cluster add-node' copies before any account exists: the
		// root and services CAs and the secrets key.
		for _, f := range []string{"pki/transport/root.crt", "pki/transport/root.key", "pki/transport/services.crt", "pki/transport/services.key", "platform/secrets.key"} {
			b, err := os.ReadFile(filepath.Join(from, f))
			if err != nil {
				t.Fatal(err)
			}
			os.MkdirAll(filepath.Dir(filepath.Join(dir, f)), 0o700)
			if err := os.WriteFile(filepath.Join(dir, f), b, 0o600); err != nil {
				t.Fatal(err)
			}
		}
	}
	box := secretbox.New(dir, nil)
	if err := box.Ensure(); err != nil {
		t.Fatal(err)
	}
	a, err := Open(t.Context(), dir, Transport, db, Options{Vault: db, Sealer: box})
	if err != nil {
		t.Fatal(err)
	}
	return dir, a
}

func caCount(t *testing.T, db *postgres.Store, name, kind string) int {
	t.Helper()
	cas, err := db.ListCertificates(t.Context(), store.CertFilter{Domain: string(Transport), Name: name, Kinds: []string{kind}})
	if err != nil {
		t.Fatal(err)
	}
	return len(cas)
}

// TestCAsSharedThroughTheStore: the nodes of a cluster share master and
// account CAs through the database (sealed), so a CA one node made issues
// on every node; two nodes making one at the same time end with one; a
// node signs the CRL of a CA it never used; and whoever can write the
// database but holds no key cannot plant a CA.
func TestCAsSharedThroughTheStore(t *testing.T) {
	db := pgtest.Open(t)
	dirA, a := vaultNode(t, db, "")
	_, b := vaultNode(t, db, dirA)

	gw1, _ := issue(t, a, "ms-1/acc-1/gw-1")
	gw2, _ := issue(t, b, "ms-1/acc-1/gw-2")
	if !gw1.Chain[1].Equal(gw2.Chain[1]) || !gw1.Chain[2].Equal(gw2.Chain[2]) {
		t.Fatal("the second node issued under other CAs than the first")
	}
	if n, m := caCount(t, db, "ms-1", KindMasterCA), caCount(t, db, "ms-1/acc-1", KindAccountCA); n != 1 || m != 1 {
		t.Fatalf("master CAs %d, account CAs %d; want 1 and 1", n, m)
	}
	for _, iss := range []*Issued{gw1, gw2} {
		pool := x509.NewCertPool()
		pool.AddCert(a.Root())
		inter := x509.NewCertPool()
		for _, c := range iss.Chain[1:] {
			inter.AddCert(c)
		}
		if _, err := iss.Cert.Verify(x509.VerifyOptions{Roots: pool, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
			t.Errorf("%s: %v", iss.Cert.Subject.CommonName, err)
		}
	}

	// Two nodes make the CAs of a new master account at the same time.
	var wg sync.WaitGroup
	got := make([]*Issued, 2)
	errs := make([]error, 2)
	for i, au := range []*Authority{a, b} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			key, _ := GenerateKey(elliptic.P256())
			got[i], errs[i] = au.Issue(context.Background(), LeafRequest{Path: mustPath(t, "ms-2/acc-1/gw-"+string(rune('1'+i))), PublicKey: key.Public()})
		}()
	}
	wg.Wait()
	if errs[0] != nil || errs[1] != nil {
		t.Fatalf("concurrent issues: %v, %v", errs[0], errs[1])
	}
	if !got[0].Chain[1].Equal(got[1].Chain[1]) {
		t.Error("two nodes issuing at once ended under two account CAs")
	}
	if n, m := caCount(t, db, "ms-2", KindMasterCA), caCount(t, db, "ms-2/acc-1", KindAccountCA); n != 1 || m != 1 {
		t.Errorf("after concurrent issues: master CAs %d, account CAs %d; want 1 and 1", n, m)
	}

	// A third node that never issued under ms-1/acc-1 revokes gw-1 and
	// signs that CA's CRL (its key from the store).
	_, c := vaultNode(t, db, dirA)
	if _, err := c.Revoke(t.Context(), gw1.Cert.SerialNumber, 1); err != nil {
		t.Fatal(err)
	}
	crls, err := c.CRLs(t.Context())
	if err != nil {
		t.Fatalf("CRLs on a node without the CA files: %v", err)
	}
	found := false
	for _, l := range crls {
		if l.CheckSignatureFrom(gw1.Chain[1]) == nil {
			for _, e := range l.RevokedCertificateEntries {
				found = found || e.SerialNumber.Cmp(gw1.Cert.SerialNumber) == 0
			}
		}
	}
	if !found {
		t.Error("no CRL of ms-1/acc-1 signed by its key lists the revoked gw-1")
	}

	// Whoever writes the database without a CA key: a CA certificate of
	// another PKI under the name of a new account, and a sealed key moved
	// from another CA's row. Neither is adopted.
	other := newTestPKI(t, Options{})
	foreign, _ := issue(t, other.t, "ms-3/acc-1/gw-1")
	_, sealed, err := db.CAKey(t.Context(), string(Transport), "ms-1")
	if err != nil {
		t.Fatal(err)
	}
	for name, row := range map[string][2][]byte{
		"ms-3":       {foreign.Chain[2].Raw, sealed}, // another root's master CA
		"ms-4":       {gw1.Chain[2].Raw, sealed},     // ms-1's certificate and key, under another name
		"ms-5+acc-1": {gw1.Chain[1].Raw, sealed},     // ms-1/acc-1 below a new master
	} {
		if _, _, err := db.PutCAKey(t.Context(), string(Transport), name, row[0], row[1]); err != nil {
			t.Fatal(err)
		}
	}
	for _, path := range []string{"ms-3/acc-1/gw-1", "ms-4/acc-1/gw-1", "ms-5/acc-1/gw-1"} {
		key, _ := GenerateKey(elliptic.P256())
		if _, err := c.Issue(t.Context(), LeafRequest{Path: mustPath(t, path), PublicKey: key.Public()}); err == nil {
			t.Errorf("issued %s under a CA planted in the database", path)
		} else {
			t.Logf("%s: %v", path, err)
		}
	}

	// A node without the first node's secrets key says what to copy.
	loner := t.TempDir()
	for _, f := range []string{"root.crt", "root.key", "services.crt", "services.key"} {
		bs, _ := os.ReadFile(filepath.Join(dirA, "pki/transport", f))
		os.MkdirAll(filepath.Join(loner, "pki/transport"), 0o700)
		os.WriteFile(filepath.Join(loner, "pki/transport", f), bs, 0o600)
	}
	box := secretbox.New(loner, nil)
	d, err := Open(t.Context(), loner, Transport, db, Options{Vault: db, Sealer: box})
	if err != nil {
		t.Fatal(err)
	}
	key, _ := GenerateKey(elliptic.P256())
	_, err = d.Issue(t.Context(), LeafRequest{Path: mustPath(t, "ms-1/acc-1/gw-9"), PublicKey: key.Public()})
	if !errors.Is(err, secretbox.ErrOpen) || !strings.Contains(err.Error(), "secrets.key") {
		t.Errorf("issue on a node with another secrets key: %v; want secretbox.ErrOpen naming secrets.key", err)
	}
}
