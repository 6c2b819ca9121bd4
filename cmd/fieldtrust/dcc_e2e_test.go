package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/fieldtrust/fieldtrust/internal/dcc"
	"github.com/fieldtrust/fieldtrust/internal/dcc/dcctest"
	"github.com/fieldtrust/fieldtrust/internal/dcc/registry"
	"github.com/fieldtrust/fieldtrust/internal/pki"
)

// registryProcess is a 'fieldtrust registry' the test started.
type registryProcess struct {
	url  string
	logs *bytes.Buffer
}

func startRegistry(t *testing.T, args ...string) *registryProcess {
	t.Helper()
	addr := freeAddr(t)
	ctx, cancel := context.WithCancel(context.Background())
	cmd := exec.CommandContext(ctx, binary, append([]string{"registry", "--http-addr", addr}, args...)...)
	logs := &bytes.Buffer{}
	cmd.Stdout, cmd.Stderr = logs, logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cancel()
		cmd.Wait()
		if t.Failed() {
			t.Logf("registry %v:\n%s", args, logs)
		}
	})
	waitListening(t, addr)
	return &registryProcess{url: "http://" + addr, logs: logs}
}

// curl runs curl and returns its body and HTTP status.
func curl(t *testing.T, args ...string) ([]byte, int) {
	t.Helper()
	out, err := exec.CommandContext(t.Context(), "curl", append([]string{"-sS", "--max-time", "30", "-w", "\n%{http_code}"}, args...)...).Output()
	if err != nil {
		t.Fatalf("curl %v: %v", args, err)
	}
	i := bytes.LastIndexByte(out, '\n')
	code := 0
	for _, c := range out[i+1:] {
		code = code*10 + int(c-'0')
	}
	return out[:i], code
}

// cli runs the binary and fails the test unless it exits 0.
func cli(t *testing.T, args ...string) string {
	t.Helper()
	out, code := run(t, args...)
	if code != 0 {
		t.Fatalf("fieldtrust %s: exit %d: %s", strings.Join(args, " "), code, out)
	}
	return out
}

// TestDCCEndToEnd: three labs issue, sign, seal and register DCCs of one
// instrument with the CLI (the real binary) on a standalone registry; the
// client opens and verifies each; one lab revokes its DCC; anyone (curl)
// gets the instrument's history with proofs that verify offline against
// the pinned checkpoint certificate; a mirror started afterwards serves
// the same history, provably, and refuses writes.
func TestDCCEndToEnd(t *testing.T) {
	need(t, "curl")
	dir := t.TempDir()
	regDir := filepath.Join(dir, "registry")
	src := startRegistry(t, "--data", regDir)
	pinPath := filepath.Join(regDir, "registry", "checkpoint.crt")
	pins, err := pki.ReadCertsFile(pinPath)
	if err != nil {
		t.Fatal(err)
	}
	pin := pins[0]

	type lab struct {
		*dcctest.Lab
		chain, key, root string
	}
	labs := map[string]*lab{}
	for _, n := range []string{"Lab A", "Lab B", "Lab C"} {
		l := &lab{Lab: dcctest.NewLab(t, n, false)} // ECDSA: the envelope (seal, statements) needs it
		d := filepath.Join(dir, strings.ReplaceAll(n, " ", ""))
		os.MkdirAll(d, 0o700)
		l.chain = dcctest.WritePEM(t, d, "chain.pem", l.Leaf, l.Sub)
		l.key = dcctest.WritePEM(t, d, "key.pem", l.Key)
		l.root = dcctest.WritePEM(t, d, "root.pem", l.Root)
		cli(t, "registry", "issuer", "--data", regDir, "--lab", n, "--root", l.root)
		labs[n] = l
	}
	clientCert, clientKey := labs["Lab A"].Recipient(t, "client e2e")
	clientPEM := dcctest.WritePEM(t, dir, "client.pem", clientCert)
	clientKeyPEM := dcctest.WritePEM(t, dir, "client.key", clientKey)

	const serial = "SN-E2E-7"
	versions := []struct{ id, lab, performed, due string }{
		{"CAL-A-2023", "Lab A", "2023-03-01", "2024-03-01"},
		{"CAL-B-2024", "Lab B", "2024-03-05", "2025-03-05"},
		{"CAL-C-2025", "Lab C", "2025-03-03", "2026-03-03"},
		{"CAL-A-2026", "Lab A", "2026-02-20", "2099-02-20"},
	}
	signedOf := map[string][]byte{}
	for _, v := range versions {
		l := labs[v.lab]
		d := filepath.Join(dir, v.id)
		os.MkdirAll(d, 0o700)
		in := filepath.Join(d, "dcc.xml")
		if err := os.WriteFile(in, dcctest.Dated(dcctest.Sample(t, "../../internal/dcc/testdata", v.id, serial), v.performed, v.due), 0o600); err != nil {
			t.Fatal(err)
		}
		signed, sealed, opened := filepath.Join(d, "signed.xml"), filepath.Join(d, "signed.cms"), filepath.Join(d, "opened.xml")
		// The lab: validate, sign, seal for the client, register.
		cli(t, "dcc", "validate", "--in", in)
		cli(t, "dcc", "sign", "--cert", l.chain, "--key", l.key, "--in", in, "--out", signed)
		cli(t, "dcc", "seal", "--to", clientPEM, "--sign-cert", l.chain, "--sign-key", l.key, "--in", signed, "--out", sealed)
		body, code := curl(t, "-H", "Content-Type: application/xml", "--data-binary", "@"+signed, src.url+"/api/v1/registry/dcc")
		if code != 200 {
			t.Fatalf("register %s: %d %s", v.id, code, body)
		}
		// The client: open (both signatures checked), verify.
		cli(t, "dcc", "open", "--cert", clientPEM, "--key", clientKeyPEM, "--trust", l.root, "--in", sealed, "--out", opened)
		a, _ := os.ReadFile(signed)
		b, _ := os.ReadFile(opened)
		if !bytes.Equal(a, b) {
			t.Fatalf("%s: the opened DCC differs from the signed one", v.id)
		}
		signedOf[v.id] = a
		var rep struct {
			Result string `json:"result"`
		}
		out := cli(t, "dcc", "verify", "--trust", l.root, "--in", opened, "--json")
		// The JSON report first (stdout), then the summary (stderr).
		if err := json.NewDecoder(strings.NewReader(out[strings.Index(out, "{"):])).Decode(&rep); err != nil || rep.Result != "valid" {
			t.Fatalf("%s: verify: %v %s", v.id, err, out)
		}
		// Another lab's root does not make it valid.
		if out, code := run(t, "dcc", "verify", "--trust", labs["Lab C"].root, "--in", opened, "--json"); v.lab != "Lab C" && (code == 0 || !strings.Contains(out, "untrusted")) {
			t.Fatalf("%s verified under Lab C's root: %d %s", v.id, code, out)
		}
	}

	// Lab A may not revoke Lab C's DCC; Lab C may.
	revoke := func(l *lab, id string) ([]byte, int) {
		p := filepath.Join(dir, "revoke-"+id+"-"+strings.ReplaceAll(l.Name, " ", "")+".cms")
		cli(t, "registry", "revoke", "--cert", l.chain, "--key", l.key, "--dcc-id", id, "--reason", "reference standard out of tolerance", "--out", p)
		return curl(t, "-H", "Content-Type: application/pkcs7-mime", "--data-binary", "@"+p, src.url+"/api/v1/registry/dcc")
	}
	if body, code := revoke(labs["Lab A"], "CAL-C-2025"); code != 403 {
		t.Fatalf("Lab A revoking Lab C's DCC: %d %s", code, body)
	}
	if body, code := revoke(labs["Lab C"], "CAL-C-2025"); code != 200 {
		t.Fatalf("revoke: %d %s", code, body)
	}

	want := []struct{ id, status, supersededBy string }{
		{"CAL-A-2023", "superseded", "CAL-B-2024"},
		{"CAL-B-2024", "superseded", "CAL-A-2026"},
		{"CAL-C-2025", "revoked", ""},
		{"CAL-A-2026", "valid", ""},
	}
	// history looks the instrument up at base and checks it offline.
	history := func(base string) registry.Lookup {
		t.Helper()
		body, code := curl(t, base+"/api/v1/registry/equipment?issuer=manufacturer&value="+serial)
		var l registry.Lookup
		if err := json.Unmarshal(body, &l); code != 200 || err != nil {
			t.Fatalf("lookup at %s: %d %v %s", base, code, err, body)
		}
		if len(l.History) != len(want) {
			t.Fatalf("history at %s: %d records, want %d", base, len(l.History), len(want))
		}
		for i, w := range want {
			rec := l.History[i]
			if rec.DCC.ID != w.id || rec.Status != w.status || rec.SupersededBy != w.supersededBy {
				t.Errorf("%s record %d: %s %s (by %q), want %+v", base, i, rec.DCC.ID, rec.Status, rec.SupersededBy, w)
			}
			if err := registry.VerifyRecord(l.Head, pin, &rec); err != nil {
				t.Errorf("%s record %s does not verify offline: %v", base, rec.DCC.ID, err)
			}
		}
		if r := l.History[2]; r.RevokeReason != "reference standard out of tolerance" || len(r.Proofs) != 2 {
			t.Errorf("revoked record: reason %q, %d proofs", r.RevokeReason, len(r.Proofs))
		}
		return l
	}
	srcView := history(src.url)
	// The content is served exactly as signed.
	if body, code := curl(t, src.url+"/api/v1/registry/dcc/CAL-B-2024/content"); code != 200 || !bytes.Equal(body, signedOf["CAL-B-2024"]) {
		t.Fatalf("content: %d, equal %v", code, bytes.Equal(body, signedOf["CAL-B-2024"]))
	}
	// A record altered after the lookup (another lab, another document)
	// no longer verifies.
	for _, alter := range []func(*registry.Record){
		func(r *registry.Record) { r.Lab = "Lab A" },
		func(r *registry.Record) { r.DCC.ContentHash = srcView.History[0].DCC.ContentHash },
		func(r *registry.Record) { r.RevokeReason = "none" },
	} {
		r := srcView.History[2]
		r.DCC.Equipment = append([]dcc.EquipmentID(nil), r.DCC.Equipment...)
		alter(&r)
		if err := registry.VerifyRecord(srcView.Head, pin, &r); err == nil {
			t.Errorf("an altered record verifies: %+v", r)
		}
	}

	// A mirror started now catches up and serves the same, provable history.
	mir := startRegistry(t, "--data", filepath.Join(dir, "mirror"), "--mirror", src.url, "--pin", pinPath)
	deadline := time.Now().Add(30 * time.Second)
	for {
		body, code := curl(t, mir.url+"/api/v1/registry/log/head")
		var h registry.Head
		if code == 200 && json.Unmarshal(body, &h) == nil && h.Size == srcView.Head.Size {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the mirror did not catch up: %d %s", code, body)
		}
		time.Sleep(50 * time.Millisecond) // polling a condition with a deadline
	}
	mirView := history(mir.url)
	if mirView.Head.Root != srcView.Head.Root {
		t.Errorf("mirror root %s, source %s", mirView.Head.Root, srcView.Head.Root)
	}
	if body, code := curl(t, "-H", "Content-Type: application/xml", "--data-binary", "@"+filepath.Join(dir, "CAL-A-2026", "signed.xml"), mir.url+"/api/v1/registry/dcc"); code != 403 {
		t.Errorf("a write to the mirror: %d %s", code, body)
	}
}
