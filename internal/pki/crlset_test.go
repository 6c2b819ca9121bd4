package pki

import (
	"testing"
	"time"
)

// TestCRLSet: a CRL counts only from a known CA, while current, and never
// older than one applied (a replayed bundle cannot undo a revocation).
func TestCRLSet(t *testing.T) {
	p := newTestPKI(t, Options{})
	ctx := t.Context()
	dev, _ := issue(t, p.t, "ms-1/acc-1/gw-1")
	old, err := p.t.CRLs(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := p.t.Revoke(ctx, dev.Cert.SerialNumber, 1); err != nil {
		t.Fatal(err)
	}
	cur, err := p.t.CRLs(ctx)
	if err != nil {
		t.Fatal(err)
	}
	serial := SerialHex(dev.Cert.SerialNumber)

	unknown := NewCRLSet() // knows no CA: applies nothing
	if n, _ := unknown.Apply(cur, time.Now()); n != 0 || len(unknown.Revoked()) != 0 {
		t.Fatalf("a set without CAs applied %d CRLs", n)
	}
	s := NewCRLSet(append(dev.Chain[1:], p.t.Root())...)
	if n, refused := s.Apply(cur, time.Now()); n == 0 || len(refused) != 0 {
		t.Fatalf("applied %d, refused %v", n, refused)
	}
	if _, ok := s.Revoked()[serial]; !ok {
		t.Fatal("the revoked serial is not in the set")
	}
	if _, refused := s.Apply(old, time.Now()); len(refused) == 0 {
		t.Error("an older CRL was not refused")
	}
	if _, ok := s.Revoked()[serial]; !ok {
		t.Fatal("an older CRL undid the revocation")
	}
	fresh := NewCRLSet(append(dev.Chain[1:], p.t.Root())...)
	if n, refused := fresh.Apply(cur, time.Now().Add(400*24*time.Hour)); n != 0 || len(refused) == 0 {
		t.Errorf("outdated CRLs: applied %d, refused %v", n, refused)
	}
}
