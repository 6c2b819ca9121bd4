package platform

import (
	"context"
	"crypto/elliptic"
	"crypto/tls"
	"crypto/x509"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"testing"

	"github.com/fieldtrust/fieldtrust/internal/est"
	"github.com/fieldtrust/fieldtrust/internal/pki"
	"github.com/fieldtrust/fieldtrust/internal/store/sqlite"
	"github.com/fieldtrust/fieldtrust/internal/tacs"
	"github.com/fieldtrust/fieldtrust/internal/topic"
)

// TestServiceRightsFollowGrants: metrics and commands are decided by the
// grants of the caller's role, as the broker decides, never by comparing
// role names: a role configured with the rights gets in, one without is
// refused, whatever it is called.
func TestServiceRightsFollowGrants(t *testing.T) {
	ctx := t.Context()
	dir := t.TempDir()
	db, err := sqlite.Open(ctx, filepath.Join(dir, "db"))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	tr, err := pki.Open(ctx, dir, pki.Transport, db, pki.Options{})
	if err != nil {
		t.Fatal(err)
	}
	verifier, err := tr.Verifier(ctx)
	if err != nil {
		t.Fatal(err)
	}
	roles := map[string]string{"ops": tacs.RoleAdmin, "ingest": tacs.RoleSnapshotReader, "watch": "observer", "fleet": "fleet-operator"}
	ids, err := newIdentities(ctx, verifier, func(context.Context) (map[string]string, error) { return roles, nil })
	if err != nil {
		t.Fatal(err)
	}
	grants := tacs.DefaultGrants()
	grants["observer"] = []tacs.Grant{{Filter: topic.System, Read: true}}
	grants["fleet-operator"] = []tacs.Grant{{Filter: topic.Of("+/+/+", topic.Commands), Write: true}}

	cert := func(req pki.LeafRequest) []*x509.Certificate {
		key, _ := pki.GenerateKey(elliptic.P256())
		req.PublicKey = key.Public()
		iss, err := tr.Issue(ctx, req)
		if err != nil {
			t.Fatal(err)
		}
		return iss.Chain[:len(iss.Chain)-1] // the client sends leaf and intermediates
	}
	ok := http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusTeapot) })
	metrics := est.GuardOperational(verifier, nil, requireGrant(ids, grants, topic.System, ok))
	cmds := est.GuardOperational(verifier, nil, &commander{ids: ids, grants: grants, store: db, log: slog.New(slog.DiscardHandler)})

	tests := []struct {
		name             string
		req              pki.LeafRequest
		metrics, command int
	}{
		// 404 from commands: allowed, and then there is no e2e
		// certificate of the gateway to seal for.
		{"admin", pki.LeafRequest{Service: "ops"}, http.StatusTeapot, http.StatusNotFound},
		{"observer role with $SYS", pki.LeafRequest{Service: "watch"}, http.StatusTeapot, http.StatusForbidden},
		{"fleet role with commands", pki.LeafRequest{Service: "fleet"}, http.StatusForbidden, http.StatusNotFound},
		{"snapshot reader", pki.LeafRequest{Service: "ingest"}, http.StatusForbidden, http.StatusForbidden},
		{"the gateway itself", pki.LeafRequest{Path: pki.Path{"ms-1", "acc-1", "gw-1"}}, http.StatusForbidden, http.StatusForbidden},
		{"its customer", pki.LeafRequest{Path: pki.Path{"ms-1"}}, http.StatusForbidden, http.StatusForbidden},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			chain := cert(tt.req)
			do := func(h http.Handler, method, path string) int {
				r := httptest.NewRequest(method, path, nil)
				r.TLS = &tls.ConnectionState{PeerCertificates: chain}
				mux := http.NewServeMux()
				mux.Handle("GET /metrics", h)
				mux.Handle("POST /api/v1/gateways/{path...}", h)
				w := httptest.NewRecorder()
				mux.ServeHTTP(w, r)
				return w.Code
			}
			if got := do(metrics, "GET", "/metrics"); got != tt.metrics {
				t.Errorf("GET /metrics: %d, want %d", got, tt.metrics)
			}
			if got := do(cmds, "POST", "/api/v1/gateways/ms-1/acc-1/gw-1/rebootstrap"); got != tt.command {
				t.Errorf("POST rebootstrap: %d, want %d", got, tt.command)
			}
		})
	}
}
