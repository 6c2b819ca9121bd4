package console_test

import (
	"crypto/x509"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/fieldtrust/fieldtrust/internal/console"
	"github.com/fieldtrust/fieldtrust/internal/dcc"
	"github.com/fieldtrust/fieldtrust/internal/dcc/calibration"
	"github.com/fieldtrust/fieldtrust/internal/dcc/dcctest"
	"github.com/fieldtrust/fieldtrust/internal/dcc/registry"
	"github.com/fieldtrust/fieldtrust/internal/envelope"
	"github.com/fieldtrust/fieldtrust/internal/snapshot"
	"github.com/fieldtrust/fieldtrust/internal/store"
	"github.com/fieldtrust/fieldtrust/internal/store/registrystore"
	"github.com/fieldtrust/fieldtrust/internal/store/sqlite"
	"github.com/fieldtrust/fieldtrust/internal/tacs"
	"github.com/fieldtrust/fieldtrust/internal/web"
)

// TestDeviceCalibration: the device page shows the bound instrument, its
// calibration now, the DCC history (lab, dates, status, DCC id) and the
// bindings — from the real registry on SQLite, through the fleet link's
// one rule — only for a device the viewer may read (another customer's
// device is the same 404, and nothing of its instrument appears), with
// lab names, equipment values and revocation reasons escaped.
func TestDeviceCalibration(t *testing.T) {
	ctx := t.Context()
	st, err := sqlite.Open(ctx, filepath.Join(t.TempDir(), "c.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	rs, err := registrystore.Of(st)
	if err != nil {
		t.Fatal(err)
	}
	key, cert, err := registry.LoadKey(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	reg, err := registry.New(ctx, rs, registry.Options{Key: key, Cert: cert})
	if err != nil {
		t.Fatal(err)
	}
	a, b := dcctest.NewLab(t, "Lab A", false), dcctest.NewLab(t, `Lab <b>B</b> & "Co"`, false)
	for _, l := range []*dcctest.Lab{a, b} {
		if err := reg.AddIssuer(ctx, l.Name, []*x509.Certificate{l.Root}); err != nil {
			t.Fatal(err)
		}
	}
	const acmeSerial, globexSerial = `SN-<i>7</i>`, "SN-GLOBEX-9"
	for _, d := range []struct {
		lab                        *dcctest.Lab
		id, serial, performed, due string
	}{
		{a, "DCC-A1", `SN-&lt;i&gt;7&lt;/i&gt;`, "2024-01-10", "2025-01-10"},
		{b, "DCC-B2", `SN-&lt;i&gt;7&lt;/i&gt;`, "2025-03-01", "2026-03-01"},
		{a, "DCC-A3", `SN-&lt;i&gt;7&lt;/i&gt;`, "2026-06-01", "2027-06-01"},
		{a, "DCC-GLOBEX", globexSerial, "2026-05-01", "2027-05-01"},
	} {
		src := dcctest.Dated(dcctest.Sample(t, "../dcc/testdata", d.id, d.serial), d.performed, d.due)
		signed, err := dcc.Sign(src, d.lab.Key, []*x509.Certificate{d.lab.Leaf, d.lab.Sub}, d.lab.Leaf.NotBefore.Add(time.Minute))
		if err != nil {
			t.Fatal(err)
		}
		if _, rep, err := reg.SubmitDCC(ctx, signed); err != nil {
			t.Fatalf("%s: %v %+v", d.id, err, rep)
		}
	}
	stmt, _ := json.Marshal(registry.Statement{Action: "revoke", DCCID: "DCC-B2", Reason: "<script>alert(1)</script> out of tolerance"})
	sd, err := envelope.Sign(stmt, &envelope.Signer{Cert: b.Leaf, Key: b.Key, Chain: []*x509.Certificate{b.Sub}, EmbedCerts: true}, b.Leaf.NotBefore.Add(time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := reg.SubmitStatement(ctx, sd); err != nil {
		t.Fatal(err)
	}
	now := time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)
	link := &calibration.Link{Bindings: rs, Registry: func() calibration.Registry { return reg }, Now: func() time.Time { return now }}
	const acmeGW, globexGW = "acme/berlin/gw-1", "globex/munich/gw-1"
	for _, bd := range []struct {
		gw, dev, serial string
	}{{acmeGW, "pump-1", acmeSerial}, {globexGW, "pump-1", globexSerial}} {
		if err := link.Bind(ctx, bd.gw, bd.dev, dcc.EquipmentID{Issuer: "manufacturer", Value: bd.serial}, time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC), bd.gw); err != nil {
			t.Fatal(err)
		}
	}
	// globex's binding was proven (the gateway's own enrollment identity,
	// calibration.Link.Bind): the same binding with the platform's proof.
	if err := rs.PutBinding(ctx, registrystore.Binding{Gateway: globexGW, Device: "pump-1", SinceMs: time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC).UnixMilli(),
		Issuer: "manufacturer", Value: globexSerial, SetBy: globexGW, SetAtMs: now.UnixMilli(), Proof: "EST claim serial <SN-GLOBEX-9>"}); err != nil {
		t.Fatal(err)
	}
	var idx uint64
	var recs []store.SnapshotRecord
	for _, d := range []struct{ gw, dev string }{{acmeGW, "pump-1"}, {acmeGW, "pump-2"}, {globexGW, "pump-1"}} {
		recs = append(recs, record(t, &snapshot.Builder{Device: d.dev, DeviceType: "pump"}, d.gw, now.Add(-time.Hour), &idx, 1))
	}
	if _, err := st.InsertSnapshots(ctx, recs); err != nil {
		t.Fatal(err)
	}
	handler := func(l web.Calibration) http.Handler {
		c, err := console.New(console.Options{Store: st, Grants: tacs.DefaultGrants(), Hosts: []string{"localhost"}, Calibration: l})
		if err != nil {
			t.Fatal(err)
		}
		mux := http.NewServeMux()
		c.Register(mux)
		return mux
	}
	mux := handler(link)
	acme := newPerson(t, st, "viewer@acme.example", "acme", store.RoleViewer)
	get := func(h http.Handler, p person, path string) (int, string) {
		t.Helper()
		req := httptest.NewRequestWithContext(ctx, "GET", "https://localhost"+path, nil)
		req.AddCookie(p.cookie)
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		return rec.Code, rec.Body.String()
	}

	code, page := get(mux, acme, "/devices/"+acmeGW+"/pump-1")
	if code != http.StatusOK {
		t.Fatalf("acme's device: %d %.500s", code, page)
	}
	_, card, _ := strings.Cut(page, `id="calibration"`)
	card, _, _ = strings.Cut(card, "<h2>Chart</h2>")
	for _, want := range []string{
		`<code>manufacturer</code> <code>SN-&lt;i&gt;7&lt;/i&gt;</code>`, // the instrument, escaped
		`data-calibration>valid</span>`,                                  // now: DCC-A3, due 2027-06-01
		"<dd>2027-06-01</dd>",
		"<code>DCC-A3</code> by Lab A",
		"<td>Lab A</td><td>2024-01-10</td>", "<td>2026-06-01</td>", // history with dates
		"<td>Lab &lt;b&gt;B&lt;/b&gt; &amp; &#34;Co&#34;</td><td>2025-03-01</td>", // the lab's name escaped
		">revoked</span>", "&lt;script&gt;alert(1)&lt;/script&gt; out of tolerance", // the revocation, escaped
		">superseded</span> by <code>DCC-A3</code>",
		"<code>DCC-A1</code>", "<code>DCC-B2</code>",
		"<code>acme/berlin/gw-1</code>",                                           // who declared the binding
		`data-binding>declared</span>`, `<span class="pill warn">declared</span>`, // not proven
	} {
		if !strings.Contains(card, want) {
			t.Errorf("the calibration card lacks %q:\n%s", want, card)
		}
	}
	for _, leak := range []string{"<script>", "<b>B</b>", "<i>7</i>", "DCC-GLOBEX", globexSerial} {
		if strings.Contains(page, leak) {
			t.Errorf("acme's device page contains %q", leak)
		}
	}

	// Another customer's device, and a device that does not exist: the
	// same 404, nothing of the instrument, on the page and the API copy.
	_, missing := get(mux, acme, "/devices/"+acmeGW+"/pump-9")
	for _, path := range []string{"/devices/" + globexGW + "/pump-1", "/devices/" + acmeGW + "/pump-9"} {
		code, body := get(mux, acme, path)
		if code != http.StatusNotFound || strings.Contains(body, "DCC-GLOBEX") || strings.Contains(body, globexSerial) || strings.Contains(body, `id="calibration"`) {
			t.Errorf("GET %s as acme: %d %.300s", path, code, body)
		}
		if body != missing {
			t.Errorf("GET %s as acme differs from a missing device's 404", path)
		}
	}
	if code, body := get(mux, acme, "/ui/api/v1/devices/"+globexGW+"/pump-1/calibration"); code != http.StatusNotFound || strings.Contains(body, "GLOBEX") {
		t.Errorf("globex's calibration through the console's API as acme: %d %.300s", code, body)
	}
	code, body := get(mux, acme, "/ui/api/v1/devices/"+acmeGW+"/pump-1/calibration")
	var rep calibration.Report
	if err := json.Unmarshal([]byte(body), &rep); code != http.StatusOK || err != nil || rep.Calibration == nil || rep.Calibration.DCCID != "DCC-A3" || len(rep.Records) != 3 {
		t.Errorf("acme's calibration through the console's API: %d %v %.300s", code, err, body)
	}
	globex := newPerson(t, st, "viewer@globex.example", "globex", store.RoleViewer)
	if code, body := get(mux, globex, "/devices/"+globexGW+"/pump-1"); code != http.StatusOK || !strings.Contains(body, "<code>DCC-GLOBEX</code> by Lab A") || strings.Contains(body, "DCC-A3") {
		t.Errorf("globex's own device: %d %.300s", code, body)
	} else if !strings.Contains(body, `data-binding>proven</span>`) || !strings.Contains(body, `<span class="pill ok">proven</span> EST claim serial &lt;SN-GLOBEX-9&gt;`) {
		t.Errorf("globex's proven binding is not shown as proven, with its proof escaped")
	}

	// A device without an instrument, and a registry not open yet.
	if _, body := get(mux, acme, "/devices/"+acmeGW+"/pump-2"); !strings.Contains(body, "No instrument is declared for this device") {
		t.Errorf("pump-2 (no binding): %.2000s", body)
	}
	closed := handler(&calibration.Link{Bindings: rs, Registry: func() calibration.Registry { return nil }, Now: func() time.Time { return now }})
	if code, body := get(closed, acme, "/devices/"+acmeGW+"/pump-1"); code != http.StatusOK || !strings.Contains(body, "The DCC registry is not available yet") || strings.Contains(body, "DCC-A3") {
		t.Errorf("with the registry closed: %d %.2000s", code, body)
	}
	// Without a fleet link the page has no card.
	if _, body := get(handler(nil), acme, "/devices/"+acmeGW+"/pump-1"); strings.Contains(body, `id="calibration"`) {
		t.Error("a console without a fleet link shows a calibration card")
	}
}
