package console_test

import (
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/fieldtrust/fieldtrust/internal/console"
	"github.com/fieldtrust/fieldtrust/internal/snapshot"
	"github.com/fieldtrust/fieldtrust/internal/store"
	"github.com/fieldtrust/fieldtrust/internal/store/sqlite"
	"github.com/fieldtrust/fieldtrust/internal/tacs"
)

// TestAgentProvenance: snapshots an HTTPS agent posted (issue 13) are
// told apart from sealed ones on "What left my site" and the device page:
// they arrived at the agents' exchange, TLS-protected, not signed end to
// end.
func TestAgentProvenance(t *testing.T) {
	st, err := sqlite.Open(t.Context(), filepath.Join(t.TempDir(), "p.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	at := time.Now().UTC().Add(-time.Hour).Truncate(time.Second)
	var idx uint64
	sealed := record(t, &snapshot.Builder{Device: "pump-1", DeviceType: "pump"}, "acme/berlin/gw-1", at, &idx, 1)
	posted := record(t, &snapshot.Builder{Device: "motor-1", DeviceType: "motor"}, "acme/berlin/agent-1", at.Add(time.Second), &idx, 2)
	posted.Signer = store.AgentSignerPrefix + "acme-berlin-agent-1"
	if _, err := st.InsertSnapshots(t.Context(), []store.SnapshotRecord{sealed, posted}); err != nil {
		t.Fatal(err)
	}
	c, err := console.New(console.Options{Store: st, Grants: tacs.DefaultGrants(), Hosts: []string{"localhost"}})
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	c.Register(mux)
	cookie := benchSession(t, st)
	get := func(path string) string {
		t.Helper()
		req := httptest.NewRequestWithContext(t.Context(), "GET", "https://localhost"+path, nil)
		req.AddCookie(cookie)
		rec := httptest.NewRecorder()
		mux.ServeHTTP(rec, req)
		if rec.Code != http.StatusOK {
			t.Fatalf("GET %s: %d %.300s", path, rec.Code, rec.Body.String())
		}
		return rec.Body.String()
	}
	audit := get("/audit")
	rows := map[string]string{}
	for _, row := range strings.Split(audit, "<tr>")[1:] {
		for _, dev := range []string{"pump-1", "motor-1"} {
			if strings.Contains(row, dev+" #") {
				rows[dev] = row
			}
		}
	}
	if r := rows["motor-1"]; !strings.Contains(r, "posted by HTTPS agent") || !strings.Contains(r, "/api/mindconnect/v3/exchange") {
		t.Errorf("the agent's row: %q", r)
	}
	if r := rows["pump-1"]; !strings.Contains(r, "sent by device") || !strings.Contains(r, "acme/berlin/gw-1/") || strings.Contains(r, "agent") {
		t.Errorf("the gateway's row: %q", r)
	}
	if p := get("/devices/acme/berlin/agent-1/motor-1"); !strings.Contains(p, "HTTPS agent: TLS-protected, not signed end to end (agent:acme-berlin-agent-1)") {
		t.Errorf("the agent device's page lacks its provenance")
	}
	if p := get("/devices/acme/berlin/gw-1/pump-1"); !strings.Contains(p, "sealed end to end by the gateway") {
		t.Errorf("the gateway device's page lacks its provenance")
	}
}
