package platform

import (
	"context"
	"crypto"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"time"

	"github.com/fieldtrust/fieldtrust/internal/command"
	"github.com/fieldtrust/fieldtrust/internal/devicemsg"
	"github.com/fieldtrust/fieldtrust/internal/envelope"
	"github.com/fieldtrust/fieldtrust/internal/est"
	"github.com/fieldtrust/fieldtrust/internal/pki"
	"github.com/fieldtrust/fieldtrust/internal/store"
	"github.com/fieldtrust/fieldtrust/internal/tacs"
	"github.com/fieldtrust/fieldtrust/internal/topic"
)

// commander queues signed, sealed commands for gateways on behalf of API
// clients: the platform's side of package command. Operators use it
// through
//
//	POST /api/v1/gateways/{master}/{account}/{gateway}/rebootstrap[?rotate_keys=true]
//	POST /api/v1/gateways/{master}/{account}/{gateway}/commands  {"name":"reboot","args":{...},"expires_in_seconds":3600}
//
// with a service certificate whose role may publish on the gateway's
// commands topic (admin, by default). The platform signs them with its e2e
// "platform" key and records the requesting service as the sender; the
// CLI ('fieldtrust command send') signs with the operator's own key. The
// device messaging service publishes them.
type commander struct {
	signer  *serviceCert // e2e "platform"
	e2e     *pki.Verifier
	store   devicemsg.Store
	devices interface{ Wake() }
	ids     *identities
	grants  tacs.Grants
	log     *slog.Logger
}

// maxCommandBody bounds an API command request.
const maxCommandBody = 16 << 10

func (c *commander) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	id, ok := est.IdentityFromContext(r.Context())
	subj, err := c.ids.subjectOf(id)
	if !ok || err != nil || !subj.IsService() {
		http.Error(w, "forbidden: needs a service certificate whose role may send commands (admin)", http.StatusForbidden)
		return
	}
	full := r.PathValue("path")
	rest, verb, found := cutLast(full)
	if !found || (verb != "rebootstrap" && verb != "commands") {
		http.Error(w, "use POST /api/v1/gateways/{master}/{account}/{gateway}/rebootstrap or .../commands", http.StatusNotFound)
		return
	}
	path, err := pki.ParsePath(rest)
	if err != nil || len(path) != 3 {
		http.Error(w, fmt.Sprintf("bad gateway path %q: want master/account/gateway", rest), http.StatusBadRequest)
		return
	}
	// Ordering a gateway is publishing on its commands topic, through
	// the platform's signature: the role's grants decide, as on MQTT.
	if !devicemsg.MayCommand(c.grants, subj, path.String()) {
		http.Error(w, fmt.Sprintf("forbidden: service role %s may not publish on %s", subj.Role, topic.CommandsOf(path.String())), http.StatusForbidden)
		return
	}
	now := time.Now()
	cmd, err := devicemsg.NewCommand(path.String(), command.Rebootstrap, nil, 0, now)
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	if verb == "rebootstrap" {
		cmd.RotateKeys = r.URL.Query().Get("rotate_keys") == "true"
	} else {
		var req struct {
			Name             string            `json:"name"`
			Args             map[string]string `json:"args"`
			ExpiresInSeconds int               `json:"expires_in_seconds"`
		}
		dec := json.NewDecoder(io.LimitReader(r.Body, maxCommandBody))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&req); err != nil {
			http.Error(w, "body: want {\"name\":...,\"args\":{...},\"expires_in_seconds\":N}: "+err.Error(), http.StatusBadRequest)
			return
		}
		if err := command.CheckName(req.Name); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		life := time.Duration(req.ExpiresInSeconds) * time.Second
		if req.ExpiresInSeconds < 0 || life > command.MaxLifetime {
			http.Error(w, fmt.Sprintf("expires_in_seconds: want 1 to %d", int(command.MaxLifetime.Seconds())), http.StatusBadRequest)
			return
		}
		if cmd, err = devicemsg.NewCommand(path.String(), req.Name, req.Args, life, now); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
	}
	if err := c.queue(r.Context(), cmd, subj.String()); err != nil {
		status := http.StatusInternalServerError
		switch {
		case errors.Is(err, devicemsg.ErrNoE2E):
			status = http.StatusNotFound
		case errors.Is(err, command.ErrInvalid):
			status = http.StatusBadRequest
		}
		c.log.Warn("command not queued", "gateway", path.String(), "err", err)
		http.Error(w, err.Error(), status)
		return
	}
	c.log.Info("command queued", "gateway", path.String(), "type", cmd.Type, "id", cmd.ID, "by", subj.String())
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusAccepted)
	json.NewEncoder(w).Encode(cmd)
}

// queue signs cmd with the platform's e2e identity, seals and queues it
// (the record's sender names the requester: a service, or a console
// user) and wakes the device messaging service.
func (c *commander) queue(ctx context.Context, cmd command.Command, requester string) error {
	if err := devicemsg.QueueCommand(ctx, c.store, c.e2e, c.signer.signer, command.Signer+" for "+requester, cmd); err != nil {
		return err
	}
	c.Wake()
	return nil
}

// SendCommand is queue for the console (console.DeviceActions): the
// platform signs what a logged-in vendor operator asked for.
func (c *commander) SendCommand(ctx context.Context, cmd command.Command, requester string) error {
	return c.queue(ctx, cmd, requester)
}

// CommandResult verifies a result's gateway signature (console.DeviceActions).
func (c *commander) CommandResult(ctx context.Context, m store.DeviceMessage) (command.Result, error) {
	return devicemsg.OpenResult(ctx, c.e2e, m)
}

// Wake tells the device messaging service to look now (it is set once
// the service exists).
func (c *commander) Wake() {
	if c.devices != nil {
		c.devices.Wake()
	}
}

// cutLast splits "a/b/c/verb" into "a/b/c" and "verb".
func cutLast(p string) (string, string, bool) {
	i := strings.LastIndexByte(p, '/')
	if i < 0 {
		return "", "", false
	}
	return p[:i], p[i+1:], true
}

// signer is the service certificate as an envelope signer.
func (s *serviceCert) signer() (*envelope.Signer, error) {
	cur := s.Current()
	if cur == nil || cur.Leaf == nil {
		return nil, errors.New("service certificate not loaded")
	}
	var chain []*x509.Certificate
	for _, der := range cur.Certificate[1:] {
		ca, err := x509.ParseCertificate(der)
		if err != nil {
			return nil, err
		}
		chain = append(chain, ca)
	}
	key, ok := cur.PrivateKey.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("service key %T cannot sign", cur.PrivateKey)
	}
	return &envelope.Signer{Cert: cur.Leaf, Key: key, Chain: chain, EmbedCerts: true}, nil
}

func transportRootPool(root *x509.Certificate) *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(root)
	return p
}
