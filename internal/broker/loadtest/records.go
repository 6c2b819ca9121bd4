package loadtest

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/fieldtrust/fieldtrust/internal/store"
)

// records is an in-memory pki.Records: the harness issues certificates
// with the real Authority but needs no database (the broker's Verifier is
// built from the root and services CA, as a gateway builds one from CRLs;
// the per-connection checks are the same).
type records struct {
	mu    sync.Mutex
	certs map[string]store.Certificate // domain + "/" + serial
}

func newRecords() *records { return &records{certs: map[string]store.Certificate{}} }

func (r *records) PutCertificate(_ context.Context, c store.Certificate) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	k := c.Domain + "/" + c.Serial
	if _, ok := r.certs[k]; ok {
		return store.ErrExists
	}
	r.certs[k] = c
	return nil
}

func (r *records) Certificate(_ context.Context, domain, serial string) (store.Certificate, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	c, ok := r.certs[domain+"/"+serial]
	if !ok {
		return store.Certificate{}, store.ErrNotFound
	}
	return c, nil
}

func (r *records) ListCertificates(_ context.Context, f store.CertFilter) ([]store.Certificate, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []store.Certificate
	for _, c := range r.certs {
		if (f.Domain == "" || c.Domain == f.Domain) && (f.Name == "" || c.Name == f.Name) &&
			(f.IssuerSerial == "" || c.IssuerSerial == f.IssuerSerial) && (!f.RevokedOnly || c.Revoked()) {
			out = append(out, c)
		}
	}
	return out, nil
}

func (r *records) RevokeCertificate(context.Context, string, string, int, time.Time) error {
	return errors.New("loadtest: revocation not supported")
}

func (r *records) NextCRLNumber(context.Context, string, string) (int64, error) {
	return 0, errors.New("loadtest: CRLs not supported")
}
