package pki

import (
	"crypto/elliptic"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"net"
	"testing"
	"time"
)

// TestSiteIdentity: a site certificate (LeafRequest.Site) of an account is
// named Identity{Site: true} by the verifier, and the site policy is
// refused everywhere else: on a device, on a master account, on a service,
// and in the e2e PKI.
func TestSiteIdentity(t *testing.T) {
	p := newTestPKI(t, Options{})
	ctx := t.Context()
	v, err := p.t.Verifier(ctx)
	if err != nil {
		t.Fatal(err)
	}
	key, _ := GenerateKey(elliptic.P256())
	site, err := p.t.Issue(ctx, LeafRequest{Path: mustPath(t, "ms-acc-1/acc-1"), Site: true, PublicKey: key.Public(), IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}})
	if err != nil {
		t.Fatal(err)
	}
	id, _, err := v.Verify(site.Cert, site.Chain[1:], time.Time{}, x509.ExtKeyUsageClientAuth)
	if err != nil || !id.Site || id.Path.String() != "ms-acc-1/acc-1" || id.String() != "site:ms-acc-1/acc-1" {
		t.Fatalf("site certificate: identity %+v, err %v", id, err)
	}
	if _, _, err := v.Verify(site.Cert, site.Chain[1:], time.Time{}, x509.ExtKeyUsageServerAuth); err != nil {
		t.Fatalf("site certificate as the local broker's server certificate: %v", err)
	}
	acc, _ := issue(t, p.t, "ms-acc-1/acc-1")
	if id, _, err := v.Verify(acc.Cert, acc.Chain[1:], time.Time{}, x509.ExtKeyUsageClientAuth); err != nil || id.Site {
		t.Fatalf("ordinary account certificate: %+v, %v", id, err)
	}

	for _, req := range []LeafRequest{
		{Path: mustPath(t, "ms-acc-1/acc-1/gw-1"), Site: true},
		{Path: mustPath(t, "ms-acc-1"), Site: true},
	} {
		req.PublicKey = key.Public()
		if _, err := p.t.Issue(ctx, req); err == nil {
			t.Errorf("issued a site certificate for %s", req.Path)
		}
	}
	if _, err := p.e.Issue(ctx, LeafRequest{Path: mustPath(t, "ms-acc-1/acc-1"), Site: true, PublicKey: key.Public()}); err == nil {
		t.Error("issued an e2e site certificate")
	}

	// What a CA key can mint with the policy that the identity rule must
	// still refuse.
	dev, _ := issue(t, p.t, "ms-acc-1/acc-1/gw-1")
	accountCA, masterCA := dev.Chain[1], dev.Chain[2]
	sign := func(caName string, issuer *x509.Certificate, cn string) *x509.Certificate {
		signer, err := p.t.caKey(caName)
		if err != nil {
			t.Fatal(err)
		}
		k, _ := GenerateKey(elliptic.P256())
		return signTemplate(t, issuer, signer, &x509.Certificate{Subject: pkix.Name{CommonName: cn}, Policies: []x509.OID{OIDSitePolicy}}, k.Public())
	}
	for _, tc := range []struct {
		name  string
		leaf  *x509.Certificate
		inter []*x509.Certificate
	}{
		{"device with the site policy", sign("ms-acc-1+acc-1", accountCA, "ms-acc-1/acc-1/gw-2"), dev.Chain[1:]},
		{"master with the site policy", sign("ms-acc-1", masterCA, "ms-acc-1"), dev.Chain[2:]},
		{"service with the site policy", sign("services", p.t.ServicesCA(), "ingest"), []*x509.Certificate{p.t.ServicesCA()}},
	} {
		if id, _, err := v.Verify(tc.leaf, tc.inter, time.Time{}, x509.ExtKeyUsageClientAuth); !errors.Is(err, ErrNotInNamespace) {
			t.Errorf("%s: identity %+v, err %v; want ErrNotInNamespace", tc.name, id, err)
		}
	}
}
