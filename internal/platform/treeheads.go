package platform

import (
	"bytes"
	"context"
	"crypto"
	"crypto/x509"
	"fmt"
	"log/slog"
	"time"

	"github.com/fieldtrust/fieldtrust/internal/ledger"
	"github.com/fieldtrust/fieldtrust/internal/pki"
	"github.com/fieldtrust/fieldtrust/internal/store"
)

// treeHeadInterval is how often the platform signs a new tree head when
// the ledger grew: the window in which a received snapshot is not yet
// covered by a signed statement.
const treeHeadInterval = 5 * time.Second

// treeHeads signs the ledger's head periodically with the e2e "ledger"
// service key and stores it for the API and for offline verification.
type treeHeads struct {
	log   *ledger.Log
	store interface {
		PutTreeHead(context.Context, store.TreeHead) error
	}
	signer *serviceCert
	logger *slog.Logger
	last   []byte // root of the last signed head
	// reload rereads the log before signing: on a node of several, the
	// other nodes' ingest appends too.
	reload bool
}

// run signs heads every treeHeadInterval until ctx ends; a failure is
// returned for the supervisor to retry with backoff.
func (t *treeHeads) run(ctx context.Context) error {
	tick := time.NewTicker(treeHeadInterval)
	defer tick.Stop()
	for {
		if err := t.sign(ctx); err != nil && ctx.Err() == nil {
			return fmt.Errorf("sign a tree head: %w", err)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
	}
}

// sign signs the current head if it changed since the last one.
func (t *treeHeads) sign(ctx context.Context) error {
	if t.reload {
		if err := t.log.Reload(ctx); err != nil {
			return err
		}
	}
	size, root, err := t.log.Size()
	if err != nil {
		return err
	}
	if size == 0 || bytes.Equal(root, t.last) {
		return nil
	}
	cur := t.signer.Current()
	text, sig, err := ledger.Sign(ledger.Checkpoint{Size: size, Root: root, Time: time.Now().UTC().Truncate(time.Second)}, cur.PrivateKey.(crypto.Signer))
	if err != nil {
		return err
	}
	var chain []byte
	for _, der := range cur.Certificate {
		c, err := x509.ParseCertificate(der)
		if err != nil {
			return err
		}
		chain = append(chain, pki.EncodeCertsPEM(c)...)
	}
	if err := t.store.PutTreeHead(ctx, store.TreeHead{Size: size, Root: root, Checkpoint: text, Signature: sig, CertChain: chain}); err != nil {
		return err
	}
	t.last = root
	t.logger.Debug("tree head signed", "size", size)
	return nil
}
