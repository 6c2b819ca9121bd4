package web_test

import (
	"bytes"
	"context"
	"crypto"
	"crypto/elliptic"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/fieldtrust/fieldtrust/internal/envelope"
	"github.com/fieldtrust/fieldtrust/internal/ledger"
	"github.com/fieldtrust/fieldtrust/internal/pki"
	"github.com/fieldtrust/fieldtrust/internal/platform"
	"github.com/fieldtrust/fieldtrust/internal/platform/platformtest"
	"github.com/fieldtrust/fieldtrust/internal/snapshot"
	"github.com/fieldtrust/fieldtrust/internal/store"
	"github.com/fieldtrust/fieldtrust/internal/store/sqlite"
	"github.com/fieldtrust/fieldtrust/internal/tacs"
	"github.com/fieldtrust/fieldtrust/internal/topic"
	"github.com/fieldtrust/fieldtrust/internal/web"
)

// The helpers below run the real platform in-process and act as gateways
// and customers, as internal/ingest's tests do.

type env struct{ *platformtest.Env }

type identity = platformtest.Identity

func startPlatform(t *testing.T) *env { return &env{platformtest.Start(t, platform.Config{})} }

func (e *env) getRaw(t *testing.T, id identity, path string) (int, []byte) {
	t.Helper()
	c := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: e.Roots, Certificates: []tls.Certificate{id.TLS}}}, Timeout: 30 * time.Second}
	resp, err := c.Get("https://" + e.HTTPAddr + path)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return resp.StatusCode, b
}

// publishSnapshots seals n consecutive snapshots of device dev (continuing
// b) for ingest and publishes them on gw's topic.
func (e *env) publishSnapshots(t *testing.T, c mqtt.Client, gw identity, gwPath string, b *snapshot.Builder, n int) {
	t.Helper()
	for i := range n {
		enc, _, err := b.Next(time.Now().Add(time.Duration(i)*time.Millisecond).UnixMilli(), []snapshot.Value{
			{Channel: "pressure", Value: float64(i) + 0.5, Unit: "bar"}, {Channel: "temp", Value: 20 + float64(i), Unit: "Cel", Group: "env"}})
		if err != nil {
			t.Fatal(err)
		}
		env, err := envelope.Seal(enc, envelope.SealOptions{Recipients: []*x509.Certificate{e.IngestCert}, Signer: gw.E2E})
		if err != nil {
			t.Fatal(err)
		}
		if tok := c.Publish(topic.SnapshotsOf(gwPath), 1, false, env); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
			t.Fatalf("publish: %v", tok.Error())
		}
	}
}

// waitHead waits for a signed tree head covering at least size leaves.
func (e *env) waitHead(t *testing.T, id identity, size uint64) web.TreeHeadJSON {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		var h web.TreeHeadJSON
		if e.Get(t, id, "/api/v1/ledger/head", &h) == 200 && h.Size >= size {
			return h
		}
		if time.Now().After(deadline) {
			t.Fatalf("no signed tree head of size %d within 30 s (have %d)", size, h.Size)
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// exportDoc is an export decoded whole, to tamper with in tests; its
// fields are in the order of the format.
type exportDoc struct {
	Version   int                     `json:"version"`
	Scope     string                  `json:"scope"`
	From      string                  `json:"from,omitempty"`
	To        string                  `json:"to,omitempty"`
	TreeHead  ledger.SignedHead       `json:"tree_head"`
	Snapshots []ledger.ExportSnapshot `json:"snapshots"`
	Count     uint64                  `json:"count"`
	// Version 2 (with a message store): present on the last page.
	DeviceMessages        *[]ledger.ExportMessage `json:"device_messages,omitempty"`
	MessageCount          *uint64                 `json:"message_count,omitempty"`
	MessagesNotYetCovered *uint64                 `json:"messages_not_yet_covered,omitempty"`
	NotYetCovered         uint64                  `json:"not_yet_covered"`
}

func decodeExport(t *testing.T, b []byte) exportDoc {
	t.Helper()
	var d exportDoc
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&d); err != nil {
		t.Fatalf("export: %v\n%.2000s", err, b)
	}
	return d
}

func (d exportDoc) clone() exportDoc {
	c := d
	c.Snapshots = append([]ledger.ExportSnapshot(nil), d.Snapshots...)
	return c
}

func (d exportDoc) bytes(t *testing.T) []byte {
	t.Helper()
	b, err := json.Marshal(d)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestExportVerifiesOffline publishes sealed snapshots through the real
// broker, then acts as a customer: it fetches its export and checks it
// offline against the e2e root, then checks that every kind of tampering
// fails with a message naming the snapshot and the check.
func TestExportVerifiesOffline(t *testing.T) {
	e := startPlatform(t)
	ctx := t.Context()
	gw1 := e.Identity(t, "ms-1/acc-1/gw-1", true)
	gw2 := e.Identity(t, "ms-1/acc-2/gw-1", true)
	gwOther := e.Identity(t, "ms-2/acc-1/gw-1", true)
	customer := e.Identity(t, "ms-1", false)
	other := e.Identity(t, "ms-2", false)
	root := e.D.E2E.Root()

	c1, c2, c3 := e.MQTT(t, gw1), e.MQTT(t, gw2), e.MQTT(t, gwOther)
	pump := &snapshot.Builder{Device: "pump-1", DeviceType: "pump"}
	valve := &snapshot.Builder{Device: "valve-1"}
	meter := &snapshot.Builder{Device: "meter-1"}
	foreign := &snapshot.Builder{Device: "pump-1"}
	e.publishSnapshots(t, c1, gw1, "ms-1/acc-1/gw-1", pump, 2)
	e.publishSnapshots(t, c3, gwOther, "ms-2/acc-1/gw-1", foreign, 2)
	early := e.waitHead(t, customer, 4)

	e.publishSnapshots(t, c1, gw1, "ms-1/acc-1/gw-1", pump, 3)
	e.publishSnapshots(t, c1, gw1, "ms-1/acc-1/gw-1", valve, 3)
	e.publishSnapshots(t, c2, gw2, "ms-1/acc-2/gw-1", meter, 2)
	e.publishSnapshots(t, c3, gwOther, "ms-2/acc-1/gw-1", foreign, 1)
	const total = 2 + 2 + 3 + 3 + 2 + 1
	head := e.waitHead(t, customer, total)

	code, raw := e.getRaw(t, customer, "/api/v1/export")
	if code != 200 {
		t.Fatalf("export: %d %s", code, raw)
	}
	rep, err := ledger.VerifyExport(bytes.NewReader(raw), ledger.ExportOptions{Root: root})
	if err != nil {
		t.Fatalf("the customer's untouched export does not verify: %v", err)
	}
	if rep.Snapshots != 10 || rep.Devices != 3 || rep.Head.Size != head.Size || len(rep.Gaps) != 0 || rep.Header.Scope != "ms-1" {
		t.Fatalf("report = %+v; want 10 snapshots of 3 devices against size %d", rep, head.Size)
	}
	if bytes.Contains(raw, []byte("ms-2/")) {
		t.Fatal("the export of ms-1 contains ms-2's snapshots")
	}
	doc := decodeExport(t, raw)
	// The encoding is exactly what the gateway signed: the hash the API
	// lists for the device is the hash of the exported bytes.
	var snaps struct {
		Snapshots []struct {
			Seq  uint64
			Hash string
		}
	}
	e.Get(t, customer, "/api/v1/devices/ms-1/acc-1/gw-1/pump-1/snapshots", &snaps)
	for _, s := range doc.Snapshots {
		enc, _ := base64.StdEncoding.DecodeString(s.Snapshot)
		h := snapshot.Hash(enc)
		if s.Path == "ms-1/acc-1/gw-1/pump-1" && snaps.Snapshots[s.Seq-1].Hash != hex.EncodeToString(h[:]) {
			t.Fatalf("exported seq %d hashes to %x; the API says %s", s.Seq, h, snaps.Snapshots[s.Seq-1].Hash)
		}
	}

	// Another customer's export holds only its own device; admin's all.
	code, otherRaw := e.getRaw(t, other, "/api/v1/export")
	if code != 200 {
		t.Fatalf("other export: %d", code)
	}
	if rep, err := ledger.VerifyExport(bytes.NewReader(otherRaw), ledger.ExportOptions{Root: root}); err != nil || rep.Snapshots != 3 || rep.Devices != 1 {
		t.Fatalf("ms-2's export: %+v %v", rep, err)
	}
	if bytes.Contains(otherRaw, []byte("ms-1/")) {
		t.Fatal("ms-2's export contains ms-1's snapshots")
	}

	// A time range: the chains start inside the range, which is no gap.
	mid := time.UnixMilli(mustSnap(t, doc.Snapshots[1]).TimeMillis).UTC().Format(time.RFC3339Nano)
	code, ranged := e.getRaw(t, customer, "/api/v1/export?from="+mid)
	if code != 200 {
		t.Fatalf("ranged export: %d %s", code, ranged)
	}
	if rep, err := ledger.VerifyExport(bytes.NewReader(ranged), ledger.ExportOptions{Root: root}); err != nil || rep.Snapshots != 9 {
		t.Fatalf("export from %s: %+v %v", mid, rep, err)
	}
	for _, bad := range []string{"?from=yesterday", "?from=2026-01-02T00:00:00Z&to=2026-01-01T00:00:00Z"} {
		if code, _ := e.getRaw(t, customer, "/api/v1/export"+bad); code != 400 {
			t.Errorf("export%s: %d, want 400", bad, code)
		}
	}

	// Tampering. Index of pump-1 seq 3, in the middle of its chain.
	mi := -1
	for i, s := range doc.Snapshots {
		if s.Path == "ms-1/acc-1/gw-1/pump-1" && s.Seq == 3 {
			mi = i
		}
	}
	if mi < 0 {
		t.Fatal("pump-1 seq 3 not exported")
	}
	earlySig := early.Signature
	auditor := signAs(t, e, "auditor", doc.TreeHead)
	masterCA := func() string {
		k, _ := pki.GenerateKey(elliptic.P256())
		iss, err := e.D.E2E.Issue(ctx, pki.LeafRequest{Path: pki.Path{"ms-1", "acc-1", "x"}, PublicKey: k.Public()})
		if err != nil {
			t.Fatal(err)
		}
		chain, _ := pki.ParseCertsPEM([]byte(doc.TreeHead.CertChain))
		return string(pki.EncodeCertsPEM(chain[0], iss.Chain[len(iss.Chain)-1]))
	}()

	tests := []struct {
		name   string
		tamper func(d *exportDoc)
		want   []string
		index  int // of the SnapshotError, -1 if none
	}{
		{"altered value", func(d *exportDoc) {
			s := mustSnap(t, d.Snapshots[mi])
			s.Values[0].Value += 1
			enc, err := snapshot.Encode(s)
			if err != nil {
				t.Fatal(err)
			}
			h := snapshot.Hash(enc)
			d.Snapshots[mi].Snapshot, d.Snapshots[mi].Hash = base64.StdEncoding.EncodeToString(enc), hex.EncodeToString(h[:])
		}, []string{"pump-1 seq 3", "inclusion proof of leaf", "does not verify"}, mi},
		{"altered value, hash kept", func(d *exportDoc) {
			s := mustSnap(t, d.Snapshots[mi])
			s.Values[1].Value = 99
			enc, _ := snapshot.Encode(s)
			d.Snapshots[mi].Snapshot = base64.StdEncoding.EncodeToString(enc)
		}, []string{"pump-1 seq 3", "snapshot hashes to"}, mi},
		{"non-canonical encoding", func(d *exportDoc) {
			enc, _ := base64.StdEncoding.DecodeString(d.Snapshots[mi].Snapshot)
			d.Snapshots[mi].Snapshot = base64.StdEncoding.EncodeToString(append(enc, 0))
		}, []string{"pump-1 seq 3", "snapshot encoding", "malformed"}, mi},
		{"dropped from the middle", func(d *exportDoc) {
			d.Snapshots = append(d.Snapshots[:mi], d.Snapshots[mi+1:]...)
			d.Count--
		}, []string{"gaps", "ms-1/acc-1/gw-1/pump-1: seq 3 is missing"}, -1},
		{"dropped, count kept", func(d *exportDoc) {
			d.Snapshots = append(d.Snapshots[:mi], d.Snapshots[mi+1:]...)
		}, []string{"count says 10", "holds 9"}, -1},
		{"dropped first", func(d *exportDoc) {
			d.Snapshots = d.Snapshots[1:]
			d.Count--
		}, []string{"seq 1 is missing"}, -1},
		{"swapped head signature", func(d *exportDoc) {
			d.TreeHead.Signature = earlySig
		}, []string{"tree head", "signature does not verify"}, -1},
		{"head signed by another service", func(d *exportDoc) {
			d.TreeHead = auditor
		}, []string{"signed by service:auditor, want service:ledger"}, -1},
		{"head signer under an account CA", func(d *exportDoc) {
			d.TreeHead.CertChain = masterCA
		}, []string{`issuer is "ms-1"`, "fieldtrust e2e services CA"}, -1},
		{"head size disagrees", func(d *exportDoc) {
			d.TreeHead.Size++
		}, []string{"disagree with the signed checkpoint"}, -1},
		{"proof of another snapshot", func(d *exportDoc) {
			d.Snapshots[mi].Proof = d.Snapshots[mi-1].Proof
		}, []string{"pump-1 seq 3", "inclusion proof", "does not verify"}, mi},
		{"another leaf index", func(d *exportDoc) {
			d.Snapshots[mi].LeafIndex = d.Snapshots[mi-1].LeafIndex
		}, []string{"pump-1 seq 3", "inclusion proof of leaf", "does not verify"}, mi},
		{"leaf index outside the tree", func(d *exportDoc) {
			d.Snapshots[mi].LeafIndex = d.TreeHead.Size
		}, []string{"outside the tree"}, mi},
		{"moved to another gateway", func(d *exportDoc) {
			d.Snapshots[mi].Path = "ms-1/acc-2/gw-1/pump-1"
		}, []string{"inclusion proof", "does not verify"}, mi},
		{"duplicated", func(d *exportDoc) {
			d.Snapshots = append(d.Snapshots, d.Snapshots[mi])
			d.Count++
		}, []string{"seq 3 after seq 5", "repeated or out of order"}, 10},
		{"unsupported version", func(d *exportDoc) {
			d.Version = 3
		}, []string{"export version 3"}, -1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := doc.clone()
			tt.tamper(&d)
			_, err := ledger.VerifyExport(bytes.NewReader(d.bytes(t)), ledger.ExportOptions{Root: root})
			if err == nil {
				t.Fatal("tampered export verifies")
			}
			t.Logf("%v", err)
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not say %q", err, w)
				}
			}
			var se *ledger.SnapshotError
			if got := errors.As(err, &se); got != (tt.index >= 0) || (got && se.Index != tt.index) {
				t.Errorf("error %q: SnapshotError %v, want index %d", err, se, tt.index)
			}
		})
	}
	// Gaps may be allowed: they are reported, not hidden.
	d := doc.clone()
	d.Snapshots = append(d.Snapshots[:mi], d.Snapshots[mi+1:]...)
	d.Count--
	rep, err = ledger.VerifyExport(bytes.NewReader(d.bytes(t)), ledger.ExportOptions{Root: root, AllowGaps: true})
	if err != nil || len(rep.Gaps) != 1 || rep.Gaps[0] != (ledger.Gap{Path: "ms-1/acc-1/gw-1/pump-1", From: 3, To: 3}) {
		t.Fatalf("allowed gaps: %+v %v", rep, err)
	}
	// Truncated or padded documents fail.
	for _, b := range [][]byte{raw[:len(raw)/2], raw[:len(raw)-3], append(append([]byte(nil), raw...), "{}"...), []byte(`{"scope":"x"}`)} {
		if _, err := ledger.VerifyExport(bytes.NewReader(b), ledger.ExportOptions{Root: root}); err == nil {
			t.Errorf("export %.40q...%q verifies", b, b[max(0, len(b)-20):])
		}
	}
	// The wrong root: the transport root does not vouch for the signer.
	if _, err := ledger.VerifyExport(bytes.NewReader(raw), ledger.ExportOptions{Root: e.D.Transport.Root()}); err == nil || !strings.Contains(err.Error(), "not directly under the e2e root") {
		t.Fatalf("export against the transport root: %v", err)
	}

	// One snapshot, with the proof route, against the same head.
	var proof web.ProofJSON
	if code := e.Get(t, customer, fmt.Sprintf("/api/v1/ledger/proof/%s?size=%d", doc.Snapshots[mi].Hash, head.Size), &proof); code != 200 {
		t.Fatalf("proof: %d", code)
	}
	cp, err := ledger.VerifyHead(ledger.SignedHead(head), root)
	if err != nil {
		t.Fatal(err)
	}
	enc, _ := base64.StdEncoding.DecodeString(doc.Snapshots[mi].Snapshot)
	if _, err := ledger.VerifySnapshot(cp, ledger.InclusionProof(proof), enc); err != nil {
		t.Fatalf("single snapshot: %v", err)
	}
	if _, err := ledger.VerifySnapshot(cp, ledger.InclusionProof(proof), append(enc[:len(enc):len(enc)], 1)); err == nil {
		t.Fatal("single snapshot with a trailing byte verifies")
	}

	// Consistency: the early head the customer kept is a prefix of today's.
	oldCP, err := ledger.VerifyHead(ledger.SignedHead(early), root)
	if err != nil {
		t.Fatal(err)
	}
	var cons ledger.ConsistencyProof
	if code := e.Get(t, customer, fmt.Sprintf("/api/v1/ledger/consistency?from=%d&to=%d", early.Size, head.Size), &cons); code != 200 {
		t.Fatalf("consistency: %d", code)
	}
	if err := ledger.VerifyHeadConsistency(oldCP, cp, cons); err != nil {
		t.Fatalf("consistency from %d to %d: %v", early.Size, head.Size, err)
	}
	bad := cons
	bad.Proof = append([]string(nil), cons.Proof...)
	bad.Proof[0] = strings.Repeat("00", 32)
	if err := ledger.VerifyHeadConsistency(oldCP, cp, bad); err == nil || !strings.Contains(err.Error(), "rewritten") {
		t.Fatalf("consistency with a forged proof: %v", err)
	}
	if err := ledger.VerifyHeadConsistency(cp, cp, cons); err == nil || !strings.Contains(err.Error(), "from size") {
		t.Fatalf("consistency proof for other sizes: %v", err)
	}
}

// TestJSONFormsAgree checks that the API's head and proof JSON are the
// ledger package's, field names included (the conversion in export.go
// checks only Go names and types).
func TestJSONFormsAgree(t *testing.T) {
	for _, pair := range [][2]any{
		{web.TreeHeadJSON{Size: 1, Root: "r", Checkpoint: "c", Signature: "s", CertChain: "p"}, &ledger.SignedHead{}},
		{web.ProofJSON{Path: "p", Seq: 1, Hash: "h", LeafData: "d", LeafIndex: 2, TreeSize: 3, Proof: []string{"x"}}, &ledger.InclusionProof{}},
	} {
		b, _ := json.Marshal(pair[0])
		dec := json.NewDecoder(bytes.NewReader(b))
		dec.DisallowUnknownFields()
		if err := dec.Decode(pair[1]); err != nil {
			t.Fatalf("%T into %T: %v", pair[0], pair[1], err)
		}
		again, _ := json.Marshal(pair[1])
		if !bytes.Equal(b, again) {
			t.Fatalf("%T and %T differ:\n%s\n%s", pair[0], pair[1], b, again)
		}
	}
}

func mustSnap(t *testing.T, e ledger.ExportSnapshot) *snapshot.Snapshot {
	t.Helper()
	enc, err := base64.StdEncoding.DecodeString(e.Snapshot)
	if err != nil {
		t.Fatal(err)
	}
	s, err := snapshot.Decode(enc)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// signAs re-signs head's checkpoint with a new e2e service certificate of
// another service.
func signAs(t *testing.T, e *env, service string, head ledger.SignedHead) ledger.SignedHead {
	t.Helper()
	key, _ := pki.GenerateKey(elliptic.P256())
	iss, err := e.D.E2E.Issue(t.Context(), pki.LeafRequest{Service: service, PublicKey: key.Public()})
	if err != nil {
		t.Fatal(err)
	}
	cp, err := ledger.ParseCheckpoint([]byte(head.Checkpoint))
	if err != nil {
		t.Fatal(err)
	}
	text, sig, err := ledger.Sign(cp, crypto.Signer(key))
	if err != nil {
		t.Fatal(err)
	}
	return ledger.SignedHead{Size: head.Size, Root: head.Root, Checkpoint: string(text), Signature: base64.StdEncoding.EncodeToString(sig),
		CertChain: string(pki.EncodeCertsPEM(iss.Chain...))}
}

// pagedData serves snapshots from memory with the store's cursor paging
// and records the page sizes asked for.
type pagedData struct {
	web.Data // only the methods below are called
	recs     []store.SnapshotRecord
	failAt   int // fail the query after this many pages; 0: never

	mu     sync.Mutex
	head   store.TreeHead
	limits []int
	// hold, if set, is received from before a query of a caller whose
	// scope is holdScope is answered; entered is sent to when it waits.
	hold      chan struct{}
	holdScope string
	entered   chan struct{}
}

func (p *pagedData) LatestTreeHead(context.Context) (store.TreeHead, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.head, nil
}

func (p *pagedData) setHead(th store.TreeHead) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.head = th
}

func (p *pagedData) QuerySnapshots(ctx context.Context, q store.SnapshotQuery) ([]store.SnapshotRecord, error) {
	p.mu.Lock()
	p.limits = append(p.limits, q.Limit)
	fail := p.failAt > 0 && len(p.limits) > p.failAt
	hold := p.hold
	if q.Scope != p.holdScope {
		hold = nil
	}
	p.mu.Unlock()
	if hold != nil {
		p.entered <- struct{}{}
		select {
		case <-hold:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	if fail {
		return nil, errors.New("database gone")
	}
	start := 0
	if q.After != nil {
		start = int(q.After.Seq) // seqs are 1.. in order: the cursor's seq is the index of the next
	}
	end := min(start+store.EffectiveLimit(q.Limit), len(p.recs))
	return p.recs[start:end], nil
}

func (p *pagedData) queries() []int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return slices.Clone(p.limits)
}

// pagedFixture is n snapshots of one device in memory, recorded in a real
// ledger, and an e2e PKI to sign tree heads with.
type pagedFixture struct {
	data *pagedData
	lg   *ledger.Log
	e2e  *pki.Authority
	key  crypto.Signer
	cert []byte // the ledger service's chain, PEM
}

// newPagedFixture appends the first covered leaves and signs a head of
// them, then appends the rest.
func newPagedFixture(t *testing.T, n, covered int) *pagedFixture {
	t.Helper()
	ctx := t.Context()
	dir := t.TempDir()
	db, err := sqlite.Open(ctx, filepath.Join(dir, "db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	e2e, err := pki.Open(ctx, dir, pki.E2E, db, pki.Options{})
	if err != nil {
		t.Fatal(err)
	}
	lg, err := ledger.Open(ctx, db)
	if err != nil {
		t.Fatal(err)
	}
	f := &pagedFixture{data: &pagedData{}, lg: lg, e2e: e2e}
	b := &snapshot.Builder{Device: "d"}
	var leaves [][]byte
	for i := range n {
		enc, s, err := b.Next(int64(1000+i), []snapshot.Value{{Channel: "c", Value: float64(i)}})
		if err != nil {
			t.Fatal(err)
		}
		h := snapshot.Hash(enc)
		f.data.recs = append(f.data.recs, store.SnapshotRecord{Gateway: "ms/acc/gw", Device: "d", Seq: s.Seq, Time: s.Time(), Hash: h[:], Prev: s.Prev,
			Values: s.Values, LedgerIndex: uint64(i)})
		leaves = append(leaves, ledger.LeafData("ms/acc/gw", h))
	}
	key, _ := pki.GenerateKey(elliptic.P256())
	iss, err := e2e.Issue(ctx, pki.LeafRequest{Service: "ledger", PublicKey: key.Public()})
	if err != nil {
		t.Fatal(err)
	}
	f.key, f.cert = key, pki.EncodeCertsPEM(iss.Chain...)
	if _, _, _, err := lg.Append(ctx, leaves[:covered]); err != nil {
		t.Fatal(err)
	}
	f.data.setHead(f.sign(t))
	if _, _, _, err := lg.Append(ctx, leaves[covered:]); err != nil {
		t.Fatal(err)
	}
	return f
}

// sign signs a tree head of the ledger as it is now.
func (f *pagedFixture) sign(t *testing.T) store.TreeHead {
	t.Helper()
	size, root, _ := f.lg.Size()
	text, sig, err := ledger.Sign(ledger.Checkpoint{Size: size, Root: root, Time: time.Now().UTC().Truncate(time.Second)}, f.key)
	if err != nil {
		t.Fatal(err)
	}
	return store.TreeHead{Size: size, Root: root, Checkpoint: text, Signature: sig, CertChain: f.cert}
}

// TestExportPages streams an export of more snapshots than one store page
// holds, and checks that a failure in the middle of the stream leaves a
// document that does not verify.
func TestExportPages(t *testing.T) {
	const n = 1234
	f := newPagedFixture(t, n, n-4)
	data := f.data
	api := &web.API{Data: data, Proofs: f.lg, Grants: tacs.DefaultGrants(),
		Identify: func(*http.Request) (tacs.Subject, bool) { return tacs.Account("ms"), true }}
	srv := httptest.NewServer(web.New(web.Options{API: api}))
	defer srv.Close()
	fetch := func() ([]byte, error) {
		resp, err := srv.Client().Get(srv.URL + "/api/v1/export")
		if err != nil {
			return nil, err
		}
		defer resp.Body.Close()
		return io.ReadAll(resp.Body)
	}
	raw, err := fetch()
	if err != nil {
		t.Fatal(err)
	}
	rep, err := ledger.VerifyExport(bytes.NewReader(raw), ledger.ExportOptions{Root: f.e2e.Root()})
	if err != nil || rep.Snapshots != n-4 || rep.NotYetCovered != 4 || rep.Next != "" {
		t.Fatalf("export of %d snapshots, 4 not yet under the head: %+v %v", n, rep, err)
	}
	if q := data.queries(); len(q) != 3 || slices.Max(q) > 500 {
		t.Fatalf("store pages asked for: %v; want 3 bounded pages", q)
	}
	// The store fails after the first page: the client gets a truncated
	// document, never one that passes for complete.
	data.failAt = 1
	raw, err = fetch()
	if err == nil {
		if _, verr := ledger.VerifyExport(bytes.NewReader(raw), ledger.ExportOptions{Root: f.e2e.Root()}); verr == nil {
			t.Fatal("an export cut short by a store failure verifies")
		}
	}
}
