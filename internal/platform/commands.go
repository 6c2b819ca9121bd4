package platform

import (
	"context"
	"crypto"
	"crypto/rand"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"time"

	"github.com/fieldtrust/fieldtrust/internal/command"
	"github.com/fieldtrust/fieldtrust/internal/envelope"
	"github.com/fieldtrust/fieldtrust/internal/est"
	"github.com/fieldtrust/fieldtrust/internal/pki"
	"github.com/fieldtrust/fieldtrust/internal/store"
	"github.com/fieldtrust/fieldtrust/internal/tacs"
	"github.com/fieldtrust/fieldtrust/internal/topic"
)

// commander sends signed, sealed commands to gateways: the platform's side
// of package command. Operators use it through
//
//	POST /api/v1/gateways/{master}/{account}/{gateway}/rebootstrap[?rotate_keys=true]
//
// with a service certificate whose role may publish on the gateway's
// commands topic (admin, by default).
type commander struct {
	signer  *serviceCert // e2e "platform"
	e2e     *pki.Verifier
	records interface {
		ListCertificates(ctx context.Context, f store.CertFilter) ([]store.Certificate, error)
	}
	broker publisher
	ids    *identities
	grants tacs.Grants
	log    *slog.Logger
}

func (c *commander) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	id, ok := est.IdentityFromContext(r.Context())
	subj, err := c.ids.subjectOf(id)
	if !ok || err != nil || !subj.IsService() {
		http.Error(w, "forbidden: needs a service certificate whose role may send commands (admin)", http.StatusForbidden)
		return
	}
	rest := strings.TrimSuffix(r.PathValue("path"), "/rebootstrap")
	if rest == r.PathValue("path") {
		http.Error(w, "use POST /api/v1/gateways/{master}/{account}/{gateway}/rebootstrap", http.StatusNotFound)
		return
	}
	path, err := pki.ParsePath(rest)
	if err != nil || len(path) != 3 {
		http.Error(w, fmt.Sprintf("bad gateway path %q: want master/account/gateway", rest), http.StatusBadRequest)
		return
	}
	// Ordering a gateway is publishing on its commands topic, through
	// the platform's signature: the role's grants decide, as on MQTT.
	if !tacs.Authorize(c.grants, subj, tacs.Publish, topic.CommandsOf(path.String())).Allowed {
		http.Error(w, fmt.Sprintf("forbidden: service role %s may not publish on %s", subj.Role, topic.CommandsOf(path.String())), http.StatusForbidden)
		return
	}
	cmd := command.Command{ID: newID(), Type: command.Rebootstrap, RotateKeys: r.URL.Query().Get("rotate_keys") == "true"}
	if err := c.send(r.Context(), path.String(), cmd); err != nil {
		status := http.StatusInternalServerError
		if errors.Is(err, errNoE2E) {
			status = http.StatusNotFound
		}
		c.log.Warn("command not sent", "gateway", path.String(), "err", err)
		http.Error(w, err.Error(), status)
		return
	}
	c.log.Info("command sent", "gateway", path.String(), "type", cmd.Type, "id", cmd.ID, "rotate_keys", cmd.RotateKeys, "by", subj.String())
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusAccepted)
	json.NewEncoder(w).Encode(cmd)
}

var errNoE2E = errors.New("the gateway has no valid e2e certificate to seal a command for")

// send seals cmd for the gateway's newest valid e2e certificate, signed
// by the platform, and publishes it (QoS 1, not retained: a command is
// for the session that receives it).
func (c *commander) send(ctx context.Context, path string, cmd command.Command) error {
	recs, err := c.records.ListCertificates(ctx, store.CertFilter{Domain: string(pki.E2E), Name: path})
	if err != nil {
		return err
	}
	var to *x509.Certificate
	for _, rec := range recs {
		if rec.Kind != pki.KindLeaf || rec.Revoked() {
			continue
		}
		cert, err := x509.ParseCertificate(rec.DER)
		if err != nil {
			continue
		}
		if _, _, err := c.e2e.Verify(cert, nil, time.Now(), x509.ExtKeyUsageAny); err != nil {
			continue
		}
		if to == nil || cert.NotBefore.After(to.NotBefore) {
			to = cert
		}
	}
	if to == nil {
		return fmt.Errorf("%w: %s", errNoE2E, path)
	}
	content, err := json.Marshal(cmd)
	if err != nil {
		return err
	}
	cur := c.signer.Current()
	var chain []*x509.Certificate
	for _, der := range cur.Certificate[1:] {
		ca, err := x509.ParseCertificate(der)
		if err != nil {
			return err
		}
		chain = append(chain, ca)
	}
	env, err := envelope.Seal(content, envelope.SealOptions{
		Recipients: []*x509.Certificate{to},
		Signer:     &envelope.Signer{Cert: cur.Leaf, Key: cur.PrivateKey.(crypto.Signer), Chain: chain, EmbedCerts: true},
	})
	if err != nil {
		return err
	}
	return c.broker.Publish(topic.CommandsOf(path), env, false, 1)
}

func newID() string {
	b := make([]byte, 8)
	rand.Read(b)
	return hex.EncodeToString(b)
}
