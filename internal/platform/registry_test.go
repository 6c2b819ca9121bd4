package platform

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"io"
	"net/http"
	"testing"
	"time"

	"github.com/fieldtrust/fieldtrust/internal/dcc"
	"github.com/fieldtrust/fieldtrust/internal/dcc/dcctest"
	"github.com/fieldtrust/fieldtrust/internal/dcc/registry"
	"github.com/fieldtrust/fieldtrust/internal/store/registrystore"
	"github.com/fieldtrust/fieldtrust/internal/supervisor"
)

// TestUpServesRegistry: 'up' runs the DCC registry as a supervised service
// named in /healthz, on its HTTPS API without a client certificate, in the
// platform's database; a lab registered by an operator command beside the
// running platform submits a DCC, and the equipment lookup's proofs verify
// offline with the checkpoint certificate in DIR/registry/.
func TestUpServesRegistry(t *testing.T) {
	r := start(t)
	c := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: r.transport}}, Timeout: 10 * time.Second}
	r.waitHealth(t, "the registry service", func(_ int, h healthJSON) bool { return h.Services["registry"].State == supervisor.StateRunning })

	// The operator registers a lab as 'fieldtrust registry issuer' does:
	// the same database, the same checkpoint key.
	st, err := registrystore.Of(r.d.Store)
	if err != nil {
		t.Fatal(err)
	}
	key, cert, err := registry.LoadKey(r.dir)
	if err != nil {
		t.Fatal(err)
	}
	op, err := registry.New(t.Context(), st, registry.Options{Key: key, Cert: cert})
	if err != nil {
		t.Fatal(err)
	}
	lab := dcctest.NewLab(t, "Lab A", false)
	if err := op.AddIssuer(t.Context(), lab.Name, []*x509.Certificate{lab.Root}); err != nil {
		t.Fatal(err)
	}
	signed, err := dcc.Sign(dcctest.Sample(t, "../dcc/testdata", "DCC-UP-1", "SN-UP"), lab.Key, []*x509.Certificate{lab.Leaf, lab.Sub}, lab.Leaf.NotBefore.Add(time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	resp, err := c.Post("https://"+r.httpAddr+"/api/v1/registry/dcc", "application/xml", bytes.NewReader(signed))
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("submit: %d %s", resp.StatusCode, body)
	}
	resp, err = c.Get("https://" + r.httpAddr + "/api/v1/registry/equipment?issuer=manufacturer&value=SN-UP")
	if err != nil {
		t.Fatal(err)
	}
	var l registry.Lookup
	err = json.NewDecoder(resp.Body).Decode(&l)
	resp.Body.Close()
	if err != nil || resp.StatusCode != http.StatusOK || len(l.History) != 1 || l.History[0].DCC.ID != "DCC-UP-1" || l.History[0].Lab != "Lab A" {
		t.Fatalf("lookup: %d %+v %v", resp.StatusCode, l, err)
	}
	if err := registry.VerifyRecord(l.Head, cert, &l.History[0]); err != nil {
		t.Fatalf("offline check: %v", err)
	}
	// The same content is served exactly as signed.
	resp, err = c.Get("https://" + r.httpAddr + "/api/v1/registry/dcc/DCC-UP-1/content")
	if err != nil {
		t.Fatal(err)
	}
	got, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !bytes.Equal(got, signed) {
		t.Fatal("stored DCC differs from the signed bytes")
	}
}
