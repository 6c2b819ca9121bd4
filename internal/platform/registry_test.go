package platform

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"io"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/fieldtrust/fieldtrust/internal/dcc"
	"github.com/fieldtrust/fieldtrust/internal/dcc/calibration"
	"github.com/fieldtrust/fieldtrust/internal/dcc/dcctest"
	"github.com/fieldtrust/fieldtrust/internal/dcc/registry"
	"github.com/fieldtrust/fieldtrust/internal/envelope"
	"github.com/fieldtrust/fieldtrust/internal/pki"
	"github.com/fieldtrust/fieldtrust/internal/snapshot"
	"github.com/fieldtrust/fieldtrust/internal/store"
	"github.com/fieldtrust/fieldtrust/internal/store/registrystore"
	"github.com/fieldtrust/fieldtrust/internal/supervisor"
	"github.com/fieldtrust/fieldtrust/internal/topic"
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

// apiClient is an HTTPS client presenting cert.
func (r *running) apiClient(cert tls.Certificate) *http.Client {
	return &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: r.transport, Certificates: []tls.Certificate{cert}}}, Timeout: 10 * time.Second}
}

// call makes a request and decodes a JSON answer into v (if non-nil).
func call(t *testing.T, c *http.Client, method, url, body string, v any) int {
	t.Helper()
	req, err := http.NewRequest(method, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if v != nil && resp.StatusCode == http.StatusOK {
		if err := json.Unmarshal(b, v); err != nil {
			t.Fatalf("%s %s: %v: %s", method, url, err, b)
		}
	}
	return resp.StatusCode
}

// TestCalibrationLink: the fleet link in 'up'. A gateway declares which
// instrument its device is; the device's snapshots (measured under a valid
// DCC, after its due date, and under a revoked one) are flagged in the
// snapshot, status and device reads, scoped like them; the calibration
// read has the history with proofs that verify offline.
func TestCalibrationLink(t *testing.T) {
	r := start(t)
	r.waitHealth(t, "the registry service", func(_ int, h healthJSON) bool { return h.Services["registry"].State == supervisor.StateRunning })
	ctx := t.Context()
	st, err := registrystore.Of(r.d.Store)
	if err != nil {
		t.Fatal(err)
	}
	key, cert, err := registry.LoadKey(r.dir)
	if err != nil {
		t.Fatal(err)
	}
	op, err := registry.New(ctx, st, registry.Options{Key: key, Cert: cert})
	if err != nil {
		t.Fatal(err)
	}
	lab := dcctest.NewLab(t, "Lab A", false)
	if err := op.AddIssuer(ctx, lab.Name, []*x509.Certificate{lab.Root}); err != nil {
		t.Fatal(err)
	}
	for _, d := range [][3]string{{"CAL-1", "2024-01-10", "2025-01-10"}, {"CAL-2", "2025-02-01", "2026-02-01"}} {
		src := dcctest.Dated(dcctest.Sample(t, "../dcc/testdata", d[0], "SN-7"), d[1], d[2])
		signed, err := dcc.Sign(src, lab.Key, []*x509.Certificate{lab.Leaf, lab.Sub}, lab.Leaf.NotBefore.Add(time.Minute))
		if err != nil {
			t.Fatal(err)
		}
		if _, _, err := op.SubmitDCC(ctx, signed); err != nil {
			t.Fatal(err)
		}
	}
	stmt, _ := json.Marshal(registry.Statement{Action: "revoke", DCCID: "CAL-2", Reason: "wrong reference"})
	sd, err := envelope.Sign(stmt, &envelope.Signer{Cert: lab.Leaf, Key: lab.Key, Chain: []*x509.Certificate{lab.Sub}, EmbedCerts: true}, lab.Leaf.NotBefore.Add(time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := op.SubmitStatement(ctx, sd); err != nil {
		t.Fatal(err)
	}

	const gwPath = "ms-1/acc-1/gw-1"
	g := r.gateway(t, gwPath)
	mc, err := r.mqttClient(t, "gw-1", g.tls, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer mc.Disconnect(0)
	ic, err := pki.ReadCertsFile(filepath.Join(r.dir, "platform", "ingest-e2e.crt"))
	if err != nil {
		t.Fatal(err)
	}
	for _, at := range []string{"2024-06-01T12:00:00Z", "2025-01-20T12:00:00Z", "2025-03-01T12:00:00Z"} {
		tm, _ := time.Parse(time.RFC3339, at)
		enc, _, err := g.b.Next(tm.UnixMilli(), []snapshot.Value{{Channel: "p", Value: 1}})
		if err != nil {
			t.Fatal(err)
		}
		env, err := envelope.Seal(enc, envelope.SealOptions{Recipients: []*x509.Certificate{ic[0]}, Signer: g.signer})
		if err != nil {
			t.Fatal(err)
		}
		if tok := mc.Publish(topic.SnapshotsOf(gwPath), 1, false, env); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
			t.Fatalf("publish: %v", tok.Error())
		}
	}
	deadline := time.Now().Add(30 * time.Second)
	for r.stored(t) < 3 {
		if time.Now().After(deadline) {
			t.Fatal("snapshots not stored")
		}
		time.Sleep(20 * time.Millisecond) // polling a condition with a deadline
	}

	base := "https://" + r.httpAddr + "/api/v1/devices/" + gwPath + "/pump/"
	gw := r.apiClient(g.tls)
	account := r.apiClient(r.credentials(t, pki.LeafRequest{Path: mustPath(t, "ms-1/acc-1")}))
	other := r.apiClient(r.credentials(t, pki.LeafRequest{Path: mustPath(t, "ms-2/acc-1")}))
	reader := r.apiClient(r.credentials(t, pki.LeafRequest{Service: "ingest"}))

	type snapshots struct {
		Snapshots []struct {
			Time        time.Time         `json:"time"`
			Calibration *calibration.Flag `json:"calibration"`
		} `json:"snapshots"`
	}
	var before snapshots
	if code := call(t, account, "GET", base+"snapshots", "", &before); code != 200 || len(before.Snapshots) != 3 || before.Snapshots[0].Calibration != nil {
		t.Fatalf("before binding: %d %+v", code, before)
	}
	bind := `{"issuer":"manufacturer","value":"SN-7","since":"2024-01-01T00:00:00Z"}`
	for _, c := range []struct {
		name   string
		client *http.Client
		method string
		want   int
	}{
		{"another customer", other, "PUT", 404},
		{"a reader service", reader, "PUT", 403},
		{"GET on equipment", gw, "GET", 405},
		{"the gateway", gw, "PUT", 200},
	} {
		if code := call(t, c.client, c.method, base+"equipment", bind, nil); code != c.want {
			t.Errorf("%s: %s equipment: %d, want %d", c.name, c.method, code, c.want)
		}
	}
	if code := call(t, gw, "PUT", base+"equipment", `{"issuer":"vendor","value":"SN-7"}`, nil); code != 400 {
		t.Errorf("bad issuer: %d", code)
	}
	// Another manufacturer's instrument, claimed for another gateway: the
	// platform knows it is not this one (docs/dcc.md "The fleet link").
	if err := r.d.Store.PutClaims(ctx, []store.Claim{{ClaimKey: store.ClaimKey{ManufacturerKeyID: strings.Repeat("b", 64), Kind: store.ClaimBySerial, Value: "SN-OTHER"},
		ManufacturerSubject: "CN=Other Maker", Path: "ms-1/acc-1/gw-2", CreatedAt: time.Now()}}); err != nil {
		t.Fatal(err)
	}
	if code := call(t, gw, "PUT", base+"equipment", `{"issuer":"manufacturer","value":"SN-OTHER"}`, nil); code != 409 {
		t.Errorf("another device's manufacturer serial: %d, want 409", code)
	}

	var after snapshots
	if code := call(t, account, "GET", base+"snapshots", "", &after); code != 200 || len(after.Snapshots) != 3 {
		t.Fatalf("after binding: %d %+v", code, after)
	}
	want := [][2]string{{calibration.Valid, "CAL-1"}, {calibration.Overdue, "CAL-1"}, {calibration.Revoked, "CAL-2"}}
	for i, s := range after.Snapshots {
		if c := s.Calibration; c == nil || c.Status != want[i][0] || c.DCCID != want[i][1] || c.Flagged != (i > 0) || c.Equipment.Value != "SN-7" {
			t.Errorf("snapshot at %s: %+v, want %v", s.Time, c, want[i])
		}
	}
	var status struct {
		Devices []struct {
			Calibration *calibration.Flag `json:"calibration"`
		} `json:"devices"`
	}
	if code := call(t, account, "GET", "https://"+r.httpAddr+"/api/v1/status", "", &status); code != 200 || len(status.Devices) != 1 || status.Devices[0].Calibration.Status != calibration.Revoked {
		t.Fatalf("status: %d %+v", code, status)
	}
	var devices struct {
		Devices []struct {
			Calibration *calibration.Flag `json:"calibration"`
		} `json:"devices"`
	}
	if code := call(t, account, "GET", "https://"+r.httpAddr+"/api/v1/devices", "", &devices); code != 200 || len(devices.Devices) != 1 || devices.Devices[0].Calibration.Status != calibration.Revoked {
		t.Fatalf("devices: %d %+v", code, devices)
	}

	var rep calibration.Report
	if code := call(t, account, "GET", base+"calibration", "", &rep); code != 200 {
		t.Fatalf("calibration: %d", code)
	}
	if len(rep.Bindings) != 1 || rep.Bindings[0].SetBy != gwPath || rep.Calibration == nil || rep.Calibration.Status != calibration.Revoked || len(rep.Records) != 2 || rep.TreeHead == nil {
		t.Fatalf("report %+v", rep)
	}
	for _, rec := range rep.Records {
		if err := registry.VerifyRecord(*rep.TreeHead, cert, &rec); err != nil {
			t.Errorf("%s: %v", rec.DCC.ID, err)
		}
	}
	if code := call(t, other, "GET", base+"calibration", "", nil); code != 404 {
		t.Errorf("another customer's calibration read: %d, want 404 like its snapshots", code)
	}
}
