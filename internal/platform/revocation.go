package platform

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/fieldtrust/fieldtrust/internal/pki"
	"github.com/fieldtrust/fieldtrust/internal/topic"
)

// revocationPoll is how often the platform rereads revocation state and
// service roles that the operator CLI may have changed: well inside the
// promise that a revocation takes effect within 5 seconds.
const revocationPoll = time.Second

// crlRepublish is how often CRLs are reissued without a revocation, well
// before pki.CRLValidity runs out.
const crlRepublish = 24 * time.Hour

// revocation keeps the running platform's view of revocation live: it
// refreshes the verifier, ends broker sessions that no longer verify, and
// publishes each domain's CRL bundle retained for gateways.
type revocation struct {
	ids    *identities
	e2e    *pki.Verifier
	broker publisher
	auths  []*pki.Authority // transport first
	log    *slog.Logger
}

// publisher is what the platform's services need of the broker.
type publisher interface {
	Publish(topic string, payload []byte, retain bool, qos byte) error
	Revalidate(ctx context.Context) int
}

// run polls revocation state until ctx ends. Refreshing fails only when
// the store does: that is returned, for the supervisor to retry with
// backoff (and to end the platform if it persists), so that revocations
// are never silently ignored.
func (r *revocation) run(ctx context.Context) error {
	poll := time.NewTicker(revocationPoll)
	defer poll.Stop()
	republish := time.NewTicker(crlRepublish)
	defer republish.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-republish.C:
			if err := r.publishCRLs(ctx); err != nil && ctx.Err() == nil {
				r.log.Error("reissuing CRLs failed; retrying at the next change or in a day", "err", err)
			}
		case <-poll.C:
			changed, err := r.ids.refresh(ctx)
			if err == nil {
				var e2eChanged bool
				e2eChanged, err = r.e2e.Refresh(ctx)
				changed = changed || e2eChanged
			}
			if err != nil {
				if ctx.Err() != nil {
					return nil
				}
				return fmt.Errorf("refresh revocations: %w", err)
			}
			if !changed {
				continue
			}
			n := r.broker.Revalidate(ctx)
			r.log.Info("revocation state changed", "sessions_ended", n)
			if err := r.publishCRLs(ctx); err != nil && ctx.Err() == nil {
				r.log.Error("publishing CRLs failed", "err", err)
			}
		}
	}
}

// publishCRLs issues fresh CRLs for every CA and publishes each domain's
// bundle retained (QoS 1) on its CRL topic (topic.CRLTransport,
// topic.CRLE2E).
func (r *revocation) publishCRLs(ctx context.Context) error {
	for _, a := range r.auths {
		crls, err := a.CRLs(ctx)
		if err != nil {
			return fmt.Errorf("issue %s CRLs: %w", a.Domain(), err)
		}
		bundle, err := pki.EncodeCRLBundle(crls)
		if err != nil {
			return err
		}
		to := topic.CRLTransport
		if a.Domain() == pki.E2E {
			to = topic.CRLE2E
		}
		if err := r.broker.Publish(to, bundle, true, 1); err != nil {
			return err
		}
		r.log.Debug("CRLs published", "topic", to, "crls", len(crls), "bytes", len(bundle))
	}
	return nil
}
