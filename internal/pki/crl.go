package pki

import (
	"context"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/fieldtrust/fieldtrust/internal/store"
)

// CRLValidity is how long a CRL is valid (NextUpdate - ThisUpdate). The
// platform reissues CRLs on every revocation and daily, so a week leaves
// gateways that are offline for days a CRL they may still use.
const CRLValidity = 7 * 24 * time.Hour

// Revocation reasons, RFC 5280 §5.3.1.
var reasons = []string{
	0: "unspecified", 1: "keyCompromise", 2: "cACompromise", 3: "affiliationChanged",
	4: "superseded", 5: "cessationOfOperation", 6: "certificateHold", 9: "privilegeWithdrawn",
	10: "aACompromise",
}

// ParseReason maps a reason name as OpenSSL spells it (case-insensitive) to
// its code.
func ParseReason(s string) (int, error) {
	for code, name := range reasons {
		if name != "" && strings.EqualFold(name, s) {
			return code, nil
		}
	}
	var names []string
	for _, n := range reasons {
		if n != "" {
			names = append(names, n)
		}
	}
	return 0, fmt.Errorf("unknown revocation reason %q; use one of %s", s, strings.Join(names, ", "))
}

// ReasonName returns the name of a reason code.
func ReasonName(code int) string {
	if code >= 0 && code < len(reasons) && reasons[code] != "" {
		return reasons[code]
	}
	return fmt.Sprintf("reason(%d)", code)
}

// Revoke revokes the certificate with serial and reissues its issuer's
// CRL. Revoking a CA revokes everything below it: verifiers check every
// certificate of a chain.
func (a *Authority) Revoke(ctx context.Context, serial *big.Int, reason int) (store.Certificate, error) {
	rec, err := a.records.Certificate(ctx, string(a.domain), SerialHex(serial))
	if errors.Is(err, store.ErrNotFound) {
		return rec, fmt.Errorf("revoke: no certificate with serial %s in the %s PKI; see 'fieldtrust pki list': %w", SerialHex(serial), a.domain, err)
	}
	if err != nil {
		return rec, err
	}
	if rec.Kind == KindRoot {
		return rec, errors.New("revoke: a root cannot be revoked; replace the data directory's PKI instead")
	}
	if err := a.records.RevokeCertificate(ctx, string(a.domain), rec.Serial, reason, time.Now()); err != nil {
		return rec, err
	}
	a.log.Warn("certificate revoked", "kind", rec.Kind, "name", rec.Name, "serial", rec.Serial, "reason", ReasonName(reason))
	if _, err := a.issueCRLFor(ctx, rec.IssuerSerial); err != nil {
		return rec, fmt.Errorf("revoked %s, but reissuing the CRL failed: %w", rec.Name, err)
	}
	return a.records.Certificate(ctx, string(a.domain), rec.Serial)
}

// RevokePath revokes the identity path p, not just its certificates of
// the moment: every certificate of p issued before now is refused wherever
// it is presented (Verifier, from its next Refresh), Issue refuses to issue
// on the authority of such a certificate (re-enrollment) from this call
// on, reading the store, and in the transport domain p's device claims are
// revoked, so the onboarding certificate cannot buy p again either. The
// valid leaves of p are revoked too, so that CRLs (what gateways read) list
// them. It returns them.
//
// Certificates issued later get a NotBefore no earlier than the revocation
// (Issue waits for it, at most a second), so a path can be enrolled again
// by a deliberate operator step: a new claim, or 'pki issue'. It holds the
// domain's lock, as Issue does, so no issuance interleaves: a certificate
// is either issued before (and revoked here) or refused after.
func (a *Authority) RevokePath(ctx context.Context, p Path, reason int) ([]store.Certificate, error) {
	pr, ok := a.records.(PathRecords)
	if !ok {
		return nil, fmt.Errorf("revoke %s: this store cannot record path revocations", p)
	}
	unlock, err := a.lock()
	if err != nil {
		return nil, err
	}
	defer unlock()
	list, err := a.records.ListCertificates(ctx, store.CertFilter{Domain: string(a.domain), Name: p.String(), Kinds: []string{KindLeaf}})
	if err != nil {
		return nil, err
	}
	if len(list) == 0 {
		return nil, fmt.Errorf("revoke: no leaf certificate was ever issued for %q in the %s PKI; see 'fieldtrust pki list': %w", p, a.domain, store.ErrNotFound)
	}
	// Every certificate issued until now has a NotBefore in a whole second
	// before this one (x509 times have whole seconds).
	at := time.Now().Truncate(time.Second).Add(time.Second)
	if err := pr.RevokePath(ctx, store.PathRevocation{Domain: string(a.domain), Path: p.String(), RevokedAt: at, Reason: reason, RevokeClaims: a.domain == Transport}); err != nil {
		return nil, err
	}
	a.log.Warn("identity path revoked", "path", p.String(), "reason", ReasonName(reason), "revoked_at", at)
	var done []store.Certificate
	now := time.Now()
	for _, c := range list {
		if c.Kind != KindLeaf || c.Revoked() || now.After(c.NotAfter) {
			continue
		}
		n, _ := new(big.Int).SetString(c.Serial, 16)
		r, err := a.Revoke(ctx, n, reason)
		if err != nil {
			return done, fmt.Errorf("revoked path %s, but putting certificate %s on the CRL failed: %w", p, c.Serial, err)
		}
		done = append(done, r)
	}
	return done, nil
}

// ValidLeaves returns the leaf certificates recorded for name (an
// identity path or service name) that are neither revoked nor expired, as
// parsed certificates: what its holder may still connect with, e.g. a
// certificate renewed after an older one was revoked. The cluster tier
// verifies them again before it removes a revoked identity's persistent
// sessions (cluster.Config.IdentityCerts).
func (a *Authority) ValidLeaves(ctx context.Context, name string) ([]*x509.Certificate, error) {
	list, err := a.records.ListCertificates(ctx, store.CertFilter{Domain: string(a.domain), Name: name, Kinds: []string{KindLeaf}})
	if err != nil {
		return nil, fmt.Errorf("certificates of %s: %w", name, err)
	}
	now := time.Now()
	var out []*x509.Certificate
	for _, c := range list {
		if c.Revoked() || !now.Before(c.NotAfter) {
			continue
		}
		cert, err := x509.ParseCertificate(c.DER)
		if err != nil {
			return nil, fmt.Errorf("certificate %s of %s: %w", c.Serial, name, err)
		}
		out = append(out, cert)
	}
	return out, nil
}

// RevokeName revokes the valid (unrevoked, unexpired) certificates of an
// identity or service name: leaves, or with ca set, the CA of that path.
// For an identity path's leaves, RevokePath is what cuts a holder off.
func (a *Authority) RevokeName(ctx context.Context, name string, ca bool, reason int) ([]store.Certificate, error) {
	list, err := a.records.ListCertificates(ctx, store.CertFilter{Domain: string(a.domain), Name: name})
	if err != nil {
		return nil, err
	}
	var done []store.Certificate
	now := time.Now()
	for _, c := range list {
		isCA := c.Kind == KindMasterCA || c.Kind == KindAccountCA
		if isCA != ca || c.Revoked() || now.After(c.NotAfter) {
			continue
		}
		n, _ := new(big.Int).SetString(c.Serial, 16)
		r, err := a.Revoke(ctx, n, reason)
		if err != nil {
			return done, err
		}
		done = append(done, r)
	}
	if len(done) == 0 {
		what := "leaf certificate"
		if ca {
			what = "CA"
		}
		return nil, fmt.Errorf("revoke: no valid %s for %q in the %s PKI; see 'fieldtrust pki list'", what, name, a.domain)
	}
	return done, nil
}

// CRLs issues a fresh CRL for every CA of the domain (root first) and
// caches each under DIR/pki/<domain>/crl/.
func (a *Authority) CRLs(ctx context.Context) ([]*x509.RevocationList, error) {
	all, err := a.records.ListCertificates(ctx, store.CertFilter{Domain: string(a.domain)})
	if err != nil {
		return nil, err
	}
	anchored := a.anchoredCAs(all)
	var out []*x509.RevocationList
	for _, c := range all {
		if !isCAKind(c.Kind) {
			continue
		}
		if !anchored[c.Serial] {
			// Not a CA of this PKI (a record planted by whoever can
			// write the database): no verifier accepts a chain through
			// it, and it must not keep every CA's CRL from being issued.
			a.log.Warn("CRL: a CA record that does not chain to this domain's root is skipped", "name", c.Name, "serial", c.Serial)
			continue
		}
		crl, err := a.issueCRLFor(ctx, c.Serial)
		if err != nil {
			return nil, err
		}
		out = append(out, crl)
	}
	return out, nil
}

func isCAKind(kind string) bool {
	switch kind {
	case KindRoot, KindServicesCA, KindMasterCA, KindAccountCA:
		return true
	}
	return false
}

// anchoredCAs reports, by serial, which CA records of recs are this
// domain's root or signed by an anchored CA record named as their issuer.
func (a *Authority) anchoredCAs(recs []store.Certificate) map[string]bool {
	cas := map[string]*x509.Certificate{}
	issuers := map[string]string{}
	for _, r := range recs {
		if !isCAKind(r.Kind) {
			continue
		}
		if c, err := x509.ParseCertificate(r.DER); err == nil && c.IsCA {
			cas[r.Serial], issuers[r.Serial] = c, r.IssuerSerial
		}
	}
	out := map[string]bool{}
	var anchored func(serial string, depth int) bool
	anchored = func(serial string, depth int) bool {
		if v, ok := out[serial]; ok {
			return v
		}
		out[serial] = false // a cycle anchors nothing
		c, ok := cas[serial]
		switch {
		case !ok:
		case c.Equal(a.root):
			out[serial] = true
		case depth < 4:
			if p, ok := cas[issuers[serial]]; ok && anchored(issuers[serial], depth+1) {
				out[serial] = c.CheckSignatureFrom(p) == nil
			}
		}
		return out[serial]
	}
	for serial := range cas {
		anchored(serial, 0)
	}
	return out
}

// issueCRLFor issues the CRL of the CA with serial caSerial.
func (a *Authority) issueCRLFor(ctx context.Context, caSerial string) (*x509.RevocationList, error) {
	caRec, err := a.records.Certificate(ctx, string(a.domain), caSerial)
	if err != nil {
		return nil, fmt.Errorf("CRL issuer: %w", err)
	}
	ca, err := x509.ParseCertificate(caRec.DER)
	if err != nil {
		return nil, fmt.Errorf("CRL issuer %s: %w", caRec.Name, err)
	}
	children, err := a.records.ListCertificates(ctx, store.CertFilter{Domain: string(a.domain), IssuerSerial: caSerial, RevokedOnly: true})
	if err != nil {
		return nil, err
	}
	sort.Slice(children, func(i, j int) bool { return children[i].RevokedAt.Before(children[j].RevokedAt) })
	var entries []x509.RevocationListEntry
	for _, c := range children {
		n, _ := new(big.Int).SetString(c.Serial, 16)
		entries = append(entries, x509.RevocationListEntry{SerialNumber: n, RevocationTime: c.RevokedAt, ReasonCode: c.Reason})
	}
	num, err := a.records.NextCRLNumber(ctx, string(a.domain), caSerial)
	if err != nil {
		return nil, err
	}
	key, err := a.issuerKey(ctx, caRec)
	if err != nil {
		return nil, err
	}
	now := time.Now()
	der, err := x509.CreateRevocationList(rand.Reader, &x509.RevocationList{
		Number:                    big.NewInt(num),
		ThisUpdate:                now,
		NextUpdate:                now.Add(CRLValidity),
		RevokedCertificateEntries: entries,
	}, ca, key)
	if err != nil {
		return nil, fmt.Errorf("CRL of %s: %w", caRec.Name, err)
	}
	crl, err := x509.ParseRevocationList(der)
	if err != nil {
		return nil, err
	}
	dir := filepath.Join(a.dir, "crl")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	if err := writeAtomic(filepath.Join(dir, a.caNameOfRecord(caRec)+".crl"), der, 0o644); err != nil {
		return nil, fmt.Errorf("cache CRL of %s: %w", caRec.Name, err)
	}
	return crl, nil
}

// EncodeCRLPEM encodes a CRL as PEM.
func EncodeCRLPEM(crl *x509.RevocationList) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "X509 CRL", Bytes: crl.Raw})
}
