package platform

import (
	"context"
	"crypto/tls"
	"fmt"
	"maps"
	"sync/atomic"

	"github.com/fieldtrust/fieldtrust/internal/pki"
	"github.com/fieldtrust/fieldtrust/internal/tacs"
)

// identities maps verified TLS peers to TACS subjects: the identity path
// from the chain (pki), and for services the role from the platform's
// configuration (the store), never from the certificate.
type identities struct {
	verifier *pki.Verifier
	roles    atomic.Pointer[map[string]string] // service -> role; never nil after load
	load     func(context.Context) (map[string]string, error)
}

func newIdentities(ctx context.Context, v *pki.Verifier, load func(context.Context) (map[string]string, error)) (*identities, error) {
	ids := &identities{verifier: v, load: load}
	if _, err := ids.refresh(ctx); err != nil {
		return nil, err
	}
	return ids, nil
}

// refresh reloads revocations and service roles and reports whether either
// changed.
func (ids *identities) refresh(ctx context.Context) (bool, error) {
	revChanged, err := ids.verifier.Refresh(ctx)
	if err != nil {
		return false, err
	}
	roles, err := ids.load(ctx)
	if err != nil {
		return false, fmt.Errorf("load service roles: %w", err)
	}
	old := ids.roles.Load()
	rolesChanged := old == nil || !maps.Equal(*old, roles)
	if rolesChanged {
		ids.roles.Store(&roles)
	}
	return revChanged || (rolesChanged && old != nil), nil
}

// Subject is the broker's Identify function.
func (ids *identities) Subject(cs tls.ConnectionState) (tacs.Subject, error) {
	id, err := ids.verifier.IdentifyTLS(cs)
	if err != nil {
		return tacs.Subject{}, err
	}
	return ids.subjectOf(id)
}

func (ids *identities) subjectOf(id pki.Identity) (tacs.Subject, error) {
	roles := *ids.roles.Load()
	return tacs.SubjectOf(id, func(service string) (string, bool) { r, ok := roles[service]; return r, ok })
}
