package platform

import (
	"context"
	"fmt"
	"sync"

	"github.com/fieldtrust/fieldtrust/internal/pki"
	"github.com/fieldtrust/fieldtrust/internal/tacs"
)

// coverageStore records which accounts the ingest partition sessions of a
// multi-node cluster have subscribed to (postgres.Store, migration 0030).
type coverageStore interface {
	CoverAccounts(ctx context.Context, accounts []string) error
	AccountCovered(ctx context.Context, account string) (bool, error)
}

// admission closes the window of a brand-new account on a node of several
// (docs/scale.md): the engine acknowledges a QoS 1 publish that no
// subscription matches and drops it, and an account's partition session
// subscribes to it only on its owner's next accounts poll. So a node
// admits an identity of an account (a gateway, a site, the account
// itself) only once a partition session covers the account; until then
// its CONNECT is refused and the gateway, which keeps its snapshots
// queued, tries again. Fail closed: a store error refuses too.
type admission struct {
	store coverageStore

	mu      sync.Mutex
	covered map[string]bool // positive answers only: coverage is never withdrawn
}

func newAdmission(s coverageStore) *admission {
	return &admission{store: s, covered: map[string]bool{}}
}

// accountOf is the account ("master/account") an account identity is in;
// false for services and master accounts, which are in none.
func accountOf(s tacs.Subject) (string, bool) {
	if s.Service != "" {
		return "", false
	}
	p, err := pki.ParsePath(s.Path)
	if err != nil || len(p) < 2 {
		return "", false
	}
	return p[:2].String(), true
}

// admit is cluster.Config.Admit.
func (a *admission) admit(ctx context.Context, s tacs.Subject) error {
	acct, ok := accountOf(s)
	if !ok {
		return nil
	}
	a.mu.Lock()
	hit := a.covered[acct]
	a.mu.Unlock()
	if hit {
		return nil
	}
	ok, err := a.store.AccountCovered(ctx, acct)
	if err != nil {
		return err
	}
	if !ok {
		return fmt.Errorf("account %s is new and no ingest session subscribed to it yet: try again in a few seconds", acct)
	}
	a.mu.Lock()
	a.covered[acct] = true
	a.mu.Unlock()
	return nil
}
