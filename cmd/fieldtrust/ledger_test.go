package main

import (
	"bytes"
	"context"
	"crypto/elliptic"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/fieldtrust/fieldtrust/internal/envelope"
	"github.com/fieldtrust/fieldtrust/internal/ledger"
	"github.com/fieldtrust/fieldtrust/internal/pki"
	"github.com/fieldtrust/fieldtrust/internal/platform"
	"github.com/fieldtrust/fieldtrust/internal/snapshot"
	"github.com/fieldtrust/fieldtrust/internal/topic"
)

// TestLedgerVerifyCLI runs the platform in-process, publishes sealed
// snapshots as a gateway, fetches what a customer keeps (the e2e root, an
// early head, the export, a consistency proof, one inclusion proof) and
// runs 'fieldtrust ledger verify' on them as the customer would: the
// untouched files verify, every tampered one fails with exit 1 and a
// message naming the snapshot and the check.
func TestLedgerVerifyCLI(t *testing.T) {
	dir := t.TempDir()
	ctx, cancel := context.WithCancel(context.Background())
	ready := make(chan [2]string, 1)
	done := make(chan error, 1)
	go func() {
		done <- platform.Run(ctx, platform.Config{DataDir: dir, HTTPAddr: "127.0.0.1:0", MQTTAddr: "127.0.0.1:0", Logger: slog.New(slog.DiscardHandler),
			Ready: func(h, m string) { ready <- [2]string{h, m} }})
	}()
	var addrs [2]string
	select {
	case addrs = <-ready:
	case err := <-done:
		t.Fatal(err)
	case <-time.After(60 * time.Second):
		t.Fatal("platform did not start")
	}
	t.Cleanup(func() {
		cancel()
		select {
		case <-done:
		case <-time.After(30 * time.Second):
			t.Error("platform did not stop")
		}
	})
	d := openData(t, dir)
	defer d.Close()
	roots := x509.NewCertPool()
	roots.AddCert(d.Transport.Root())
	issue := func(path string) tls.Certificate {
		key, _ := pki.GenerateKey(elliptic.P256())
		p, _ := pki.ParsePath(path)
		iss, err := d.Transport.Issue(t.Context(), pki.LeafRequest{Path: p, PublicKey: key.Public()})
		if err != nil {
			t.Fatal(err)
		}
		c := tls.Certificate{PrivateKey: key, Leaf: iss.Cert}
		for _, x := range iss.Chain {
			c.Certificate = append(c.Certificate, x.Raw)
		}
		return c
	}
	gwTLS, customerTLS := issue("ms-1/acc-1/gw-1"), issue("ms-1")
	ek, _ := pki.GenerateKey(elliptic.P256())
	eiss, err := d.E2E.Issue(t.Context(), pki.LeafRequest{Path: pki.Path{"ms-1", "acc-1", "gw-1"}, PublicKey: ek.Public()})
	if err != nil {
		t.Fatal(err)
	}
	signer := &envelope.Signer{Cert: eiss.Cert, Key: ek, Chain: eiss.Chain[1:]}
	ingest, err := pki.ReadCertsFile(filepath.Join(dir, "platform", "ingest-e2e.crt"))
	if err != nil {
		t.Fatal(err)
	}
	mc := mqtt.NewClient(mqtt.NewClientOptions().AddBroker("ssl://" + addrs[1]).SetClientID("ledger-cli-test").
		SetTLSConfig(&tls.Config{RootCAs: roots, Certificates: []tls.Certificate{gwTLS}}).SetAutoReconnect(false))
	if tok := mc.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("connect: %v", tok.Error())
	}
	defer mc.Disconnect(100)
	b := &snapshot.Builder{Device: "pump-1", DeviceType: "pump"}
	publish := func(n int) {
		for i := range n {
			enc, _, err := b.Next(time.Now().Add(time.Duration(i)*time.Millisecond).UnixMilli(), []snapshot.Value{{Channel: "pressure", Value: 1.5 + float64(i), Unit: "bar"}})
			if err != nil {
				t.Fatal(err)
			}
			env, err := envelope.Seal(enc, envelope.SealOptions{Recipients: ingest[:1], Signer: signer})
			if err != nil {
				t.Fatal(err)
			}
			if tok := mc.Publish(topic.SnapshotsOf("ms-1/acc-1/gw-1"), 1, false, env); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
				t.Fatalf("publish: %v", tok.Error())
			}
		}
	}
	client := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots, Certificates: []tls.Certificate{customerTLS}}}, Timeout: 30 * time.Second}
	get := func(path string) []byte {
		t.Helper()
		resp, err := client.Get("https://" + addrs[0] + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, err := io.ReadAll(resp.Body)
		if err != nil || resp.StatusCode != 200 {
			t.Fatalf("GET %s: %d %v %s", path, resp.StatusCode, err, body)
		}
		return body
	}
	waitHead := func(size uint64) ([]byte, ledger.SignedHead) {
		t.Helper()
		deadline := time.Now().Add(30 * time.Second)
		for time.Now().Before(deadline) {
			resp, err := client.Get("https://" + addrs[0] + "/api/v1/ledger/head")
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			var h ledger.SignedHead
			if resp.StatusCode == 200 && json.Unmarshal(body, &h) == nil && h.Size >= size {
				return body, h
			}
			time.Sleep(250 * time.Millisecond)
		}
		t.Fatalf("no signed tree head of size %d", size)
		return nil, ledger.SignedHead{}
	}

	files := t.TempDir()
	write := func(name string, b []byte) string {
		t.Helper()
		p := filepath.Join(files, name)
		if err := os.WriteFile(p, b, 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	rootFile := write("e2e.pem", get("/ca/e2e.pem"))
	publish(3)
	oldRaw, old := waitHead(3)
	oldFile := write("head-old.json", oldRaw)
	publish(4)
	headRaw, head := waitHead(7)
	headFile := write("head.json", headRaw)
	exportRaw := get("/api/v1/export")
	exportFile := write("export.json", exportRaw)
	consFile := write("consistency.json", get(fmt.Sprintf("/api/v1/ledger/consistency?from=%d&to=%d", old.Size, head.Size)))
	var doc ltExport
	if err := json.Unmarshal(exportRaw, &doc); err != nil {
		t.Fatal(err)
	}
	if doc.TreeHead != head || len(doc.Snapshots) != 7 {
		t.Fatalf("export head %+v with %d snapshots; want the latest head %+v and 7", doc.TreeHead, len(doc.Snapshots), head)
	}
	// The same export in pages of 3, following next.
	var pageFiles []string
	for after := ""; ; {
		q := "/api/v1/export?limit=3"
		if after != "" {
			q += "&after=" + after
		}
		raw := get(q)
		pageFiles = append(pageFiles, write(fmt.Sprintf("page-%d.json", len(pageFiles)+1), raw))
		var p struct{ Next string }
		if err := json.Unmarshal(raw, &p); err != nil {
			t.Fatal(err)
		}
		if after = p.Next; after == "" {
			break
		}
	}
	if len(pageFiles) != 3 {
		t.Fatalf("%d pages of 3 of 7 snapshots; want 3", len(pageFiles))
	}
	third := doc.Snapshots[2]
	proofFile := write("proof.json", get(fmt.Sprintf("/api/v1/ledger/proof/%s?size=%d", third.Hash, head.Size)))
	snap3, _ := base64.StdEncoding.DecodeString(third.Snapshot)
	snap4, _ := base64.StdEncoding.DecodeString(doc.Snapshots[3].Snapshot)
	snapFile := write("snap3.cbor", snap3)
	otherSnapFile := write("snap4.cbor", snap4)

	// Tampered copies.
	tamper := func(name string, f func(d *ltExport)) string {
		var c ltExport
		json.Unmarshal(exportRaw, &c)
		f(&c)
		out, _ := json.Marshal(c)
		return write(name, out)
	}
	gapFile := tamper("gap.json", func(d *ltExport) { d.Snapshots = append(d.Snapshots[:2], d.Snapshots[3:]...); d.Count-- })
	strippedFile := tamper("stripped.json", func(d *ltExport) { d.DeviceMessages, d.MessageCount, d.MessagesNotYetCovered = nil, nil, nil })
	alteredFile := tamper("altered.json", func(d *ltExport) {
		s, _ := snapshot.Decode(snap3)
		s.Values[0].Value = 1000
		enc, _ := snapshot.Encode(s)
		h := snapshot.Hash(enc)
		d.Snapshots[2].Snapshot, d.Snapshots[2].Hash = base64.StdEncoding.EncodeToString(enc), hex.EncodeToString(h[:])
	})
	swappedSig := head
	swappedSig.Signature = old.Signature
	swappedSigFile := writeJSON(t, write, "head-swapped.json", swappedSig)
	otherKey, _ := pki.GenerateKey(elliptic.P256())
	otherIss, err := d.E2E.Issue(t.Context(), pki.LeafRequest{Service: "platform-x", PublicKey: otherKey.Public()})
	if err != nil {
		t.Fatal(err)
	}
	cp, _ := ledger.ParseCheckpoint([]byte(head.Checkpoint))
	_, otherSig, _ := ledger.Sign(cp, otherKey)
	otherSigned := head
	otherSigned.Signature, otherSigned.CertChain = base64.StdEncoding.EncodeToString(otherSig), string(pki.EncodeCertsPEM(otherIss.Chain...))
	otherSignedFile := writeJSON(t, write, "head-other.json", otherSigned)
	var proof ledger.InclusionProof
	json.Unmarshal(get(fmt.Sprintf("/api/v1/ledger/proof/%s?size=%d", third.Hash, head.Size)), &proof)
	proof.LeafIndex = doc.Snapshots[3].LeafIndex
	otherIndexFile := writeJSON(t, write, "proof-other-index.json", proof)
	var cons ledger.ConsistencyProof
	json.Unmarshal(get(fmt.Sprintf("/api/v1/ledger/consistency?from=%d&to=%d", old.Size, head.Size)), &cons)
	cons.Proof[0] = strings.Repeat("ab", 32)
	forgedConsFile := writeJSON(t, write, "consistency-forged.json", cons)

	tests := []struct {
		name string
		args []string
		code int
		want []string
	}{
		{"export", []string{"--export", exportFile},
			0, []string{fmt.Sprintf("verified 7 snapshots of 1 devices against tree head of size %d signed at %s by service:ledger", head.Size, cp.Time.Format(time.RFC3339))}},
		{"export and consistency", []string{"--export", exportFile, "--previous-head", oldFile, "--consistency", consFile},
			0, []string{"verified 7 snapshots", fmt.Sprintf("previous tree head of size %d", old.Size), "nothing was altered or removed"}},
		{"export in pages", []string{"--export", pageFiles[0], "--export", pageFiles[1], "--export", pageFiles[2]},
			0, []string{"verified 7 snapshots of 1 devices in 3 pages against tree head"}},
		{"first page", []string{"--export", pageFiles[0]},
			0, []string{"verified 3 snapshots of 1 devices against", "note: the export continues after " + pageFiles[0] + ": fetch the next page with after="}},
		{"pages out of order", []string{"--export", pageFiles[1], "--export", pageFiles[0], "--export", pageFiles[2]},
			1, []string{"page-1.json: export: page 2 starts after", "pages are missing, repeated or out of order"}},
		{"page missing", []string{"--export", pageFiles[0], "--export", pageFiles[2]},
			1, []string{"page-3.json: export: page 2", "pages are missing"}},
		{"head only", []string{"--head", headFile}, 0, []string{fmt.Sprintf("tree head of size %d", head.Size), "verifies"}},
		{"one snapshot", []string{"--head", headFile, "--proof", proofFile, "--snapshot", snapFile},
			0, []string{"verified snapshot ms-1/acc-1/gw-1/pump-1 seq 3"}},
		{"gap", []string{"--export", gapFile}, 1, []string{"hash chain gaps", "ms-1/acc-1/gw-1/pump-1: seq 3 is missing"}},
		{"device messages stripped", []string{"--export", strippedFile}, 1, []string{"device messages were removed"}},
		{"gap allowed", []string{"--export", gapFile, "--allow-gaps"}, 0, []string{"verified 6 snapshots", "gap: ms-1/acc-1/gw-1/pump-1: seq 3 is missing"}},
		{"altered value", []string{"--export", alteredFile},
			1, []string{"snapshot #3 (ms-1/acc-1/gw-1/pump-1 seq 3): inclusion proof of leaf", "does not verify"}},
		{"swapped signature", []string{"--head", swappedSigFile}, 1, []string{"head-swapped.json: tree head: checkpoint signature does not verify"}},
		{"signed by another service", []string{"--head", otherSignedFile}, 1, []string{"signed by service:platform-x, want service:ledger"}},
		{"proof of another snapshot", []string{"--head", headFile, "--proof", proofFile, "--snapshot", otherSnapFile},
			1, []string{"snap4.cbor", "snapshot has seq 4, not 3"}},
		{"proof for another index", []string{"--head", headFile, "--proof", otherIndexFile, "--snapshot", snapFile},
			1, []string{"snap3.cbor (ms-1/acc-1/gw-1/pump-1 seq 3): inclusion proof of leaf", "does not verify"}},
		{"forged consistency", []string{"--head", headFile, "--previous-head", oldFile, "--consistency", forgedConsFile},
			1, []string{"consistency-forged.json", "does not verify"}},
		{"heads swapped", []string{"--head", oldFile, "--previous-head", headFile, "--consistency", consFile},
			1, []string{"the previous head (size 7) is larger than the current one (size 3)"}},
		{"transport root", []string{"--export", exportFile, "--e2e-root", filepath.Join(dir, "pki", "transport", "root.crt")},
			1, []string{"not directly under the e2e root"}},
		{"no mode", nil, 2, []string{"exactly one of --export"}},
		{"both modes", []string{"--export", exportFile, "--head", headFile}, 2, []string{"exactly one of --export"}},
		{"proof without snapshot", []string{"--head", headFile, "--proof", proofFile}, 2, []string{"--proof and --snapshot go together"}},
		{"consistency without previous head", []string{"--export", exportFile, "--consistency", consFile}, 2, []string{"--previous-head and --consistency go together"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			args := append([]string{"ledger", "verify", "--e2e-root", rootFile}, tt.args...)
			out, code := run(t, args...)
			t.Logf("exit %d: %s", code, out)
			if code != tt.code {
				t.Fatalf("exit %d, want %d:\n%s", code, tt.code, out)
			}
			for _, w := range tt.want {
				if !strings.Contains(out, w) {
					t.Errorf("output does not say %q:\n%s", w, out)
				}
			}
		})
	}
	if out, code := run(t, "ledger", "verify", "--export", exportFile); code != 2 || !strings.Contains(out, "--e2e-root") {
		t.Fatalf("without --e2e-root: exit %d\n%s", code, out)
	}
	if bytes.Contains(exportRaw, []byte("\"leaf_data\"")) {
		t.Fatal("exports carry no leaf data: the verifier recomputes it")
	}
}

// ltExport is an export decoded whole, to tamper with.
type ltExport struct {
	Version   int                     `json:"version"`
	Scope     string                  `json:"scope"`
	TreeHead  ledger.SignedHead       `json:"tree_head"`
	Snapshots []ledger.ExportSnapshot `json:"snapshots"`
	Count     uint64                  `json:"count"`
	// Version 2: the device messages of the last page.
	DeviceMessages        *[]ledger.ExportMessage `json:"device_messages,omitempty"`
	MessageCount          *uint64                 `json:"message_count,omitempty"`
	MessagesNotYetCovered *uint64                 `json:"messages_not_yet_covered,omitempty"`
	NotYetCovered         uint64                  `json:"not_yet_covered"`
}

func writeJSON(t *testing.T, write func(string, []byte) string, name string, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return write(name, b)
}
