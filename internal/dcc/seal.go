package dcc

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"time"

	"github.com/fieldtrust/fieldtrust/internal/dcc/xades"
	"github.com/fieldtrust/fieldtrust/internal/envelope"
)

// Seal encrypts a signed DCC for its readers (CMS AuthEnvelopedData: the
// client's e2e certificate, optionally the registry's) and signs the
// envelope as the lab (outer CMS SignedData), as the reference
// architecture does: a relay or the registry can check who sent it
// without being able to read it. The DCC keeps its own XAdES signature
// inside, so the envelope's content is not signed a second time.
func Seal(signedDCC []byte, to []*x509.Certificate, lab *envelope.Signer) ([]byte, error) {
	if len(to) == 0 {
		return nil, errors.New("seal: no recipients")
	}
	if lab == nil {
		return nil, errors.New("seal: no lab signer for the envelope")
	}
	env, err := envelope.Seal(signedDCC, envelope.SealOptions{Recipients: to})
	if err != nil {
		return nil, fmt.Errorf("seal: %w", err)
	}
	out, err := envelope.Sign(env, lab, time.Time{})
	if err != nil {
		return nil, fmt.Errorf("seal: sign the envelope: %w", err)
	}
	return out, nil
}

// Opened is an opened sealed DCC.
type Opened struct {
	DCC      []byte
	Sender   string           // the envelope signer's identity
	SenderAt time.Time        // the envelope's signing time (the sender's claim)
	Report   *Report          // the DCC's own verification
	Envelope *envelope.Opened // the outer signature
}

// Open reverses Seal: it verifies the lab's envelope signature (chain to
// one of roots), decrypts with the recipient's key, and verifies the DCC's
// XAdES signature against the same roots. A DCC that does not verify as
// valid is returned with its report and an error.
func Open(ctx context.Context, sealed []byte, cert *x509.Certificate, key any, opts xades.VerifyOptions) (*Opened, error) {
	roots := x509.NewCertPool()
	for _, r := range opts.Roots {
		roots.AddCert(r)
	}
	outer, err := envelope.Verify(ctx, sealed, envelope.VerifyOptions{
		Verifier: &envelope.ChainVerifier{Roots: roots, Intermediates: opts.Intermediates, CRLs: opts.CRLs},
	})
	if err != nil {
		return nil, fmt.Errorf("open: the lab's envelope signature: %w", err)
	}
	o, err := envelope.NewOpener(cert, key, envelope.OpenOptions{AllowUnsigned: true})
	if err != nil {
		return nil, fmt.Errorf("open: %w", err)
	}
	inner, err := o.Open(ctx, outer.Content)
	if err != nil {
		return nil, fmt.Errorf("open: %w", err)
	}
	res := &Opened{DCC: inner.Content, Sender: outer.Signer, SenderAt: outer.SigningTime, Envelope: outer}
	res.Report = Verify(inner.Content, opts)
	if res.Report.Status != xades.Valid {
		return res, fmt.Errorf("open: the DCC is %s: %s", res.Report.Status, res.Report.Reason)
	}
	return res, nil
}
