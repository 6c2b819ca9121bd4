package ledger

import (
	"bytes"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"math/big"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/fieldtrust/fieldtrust/internal/pki"
	"github.com/fieldtrust/fieldtrust/internal/snapshot"
	"github.com/fieldtrust/fieldtrust/internal/store/sqlite"
)

// exportFixture is a small signed log of real snapshots and its export,
// built without the platform.
type exportFixture struct {
	dir  string
	e2e  *pki.Authority
	root *x509.Certificate
	head SignedHead
	snap []ExportSnapshot
	msgs []ExportMessage
}

func newExportFixture(t testing.TB) *exportFixture { return newFixture(t, nil) }

// newFixture is newExportFixture with device messages of ms/acc/gw
// logged after the snapshots.
func newFixture(t testing.TB, msgs []MessageRecord) *exportFixture {
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
	l, err := Open(ctx, db)
	if err != nil {
		t.Fatal(err)
	}
	f := &exportFixture{dir: dir, e2e: e2e, root: e2e.Root()}
	// Two devices of one gateway, interleaved: a, b, a, b, a.
	builders := map[string]*snapshot.Builder{"a": {Device: "a"}, "b": {Device: "b"}}
	var encs [][]byte
	for i, dev := range []string{"a", "b", "a", "b", "a"} {
		enc, _, err := builders[dev].Next(int64(1000+i), []snapshot.Value{{Channel: "c", Value: float64(i)}})
		if err != nil {
			t.Fatal(err)
		}
		encs = append(encs, enc)
		if _, _, _, err := l.Append(ctx, [][]byte{LeafData("ms/acc/gw", snapshot.Hash(enc))}); err != nil {
			t.Fatal(err)
		}
	}
	for _, m := range msgs {
		if _, _, _, err := l.Append(ctx, [][]byte{LeafData("ms/acc/gw", m.Hash())}); err != nil {
			t.Fatal(err)
		}
	}
	size, root, _ := l.Size()
	key, _ := pki.GenerateKey(elliptic.P256())
	iss, err := e2e.Issue(ctx, pki.LeafRequest{Service: "ledger", PublicKey: key.Public()})
	if err != nil {
		t.Fatal(err)
	}
	text, sig, err := Sign(Checkpoint{Size: size, Root: root, Time: time.Now().UTC().Truncate(time.Second)}, key)
	if err != nil {
		t.Fatal(err)
	}
	f.head = SignedHead{Size: size, Root: hex.EncodeToString(root), Checkpoint: string(text), Signature: base64.StdEncoding.EncodeToString(sig),
		CertChain: string(pki.EncodeCertsPEM(iss.Chain...))}
	for i, enc := range encs {
		p, err := l.InclusionProof(ctx, uint64(i), size)
		if err != nil {
			t.Fatal(err)
		}
		s, _ := snapshot.Decode(enc)
		h := snapshot.Hash(enc)
		var ph []string
		for _, x := range p {
			ph = append(ph, hex.EncodeToString(x))
		}
		f.snap = append(f.snap, ExportSnapshot{Path: "ms/acc/gw/" + s.Device, Seq: s.Seq, Hash: hex.EncodeToString(h[:]),
			Snapshot: base64.StdEncoding.EncodeToString(enc), LeafIndex: uint64(i), Proof: ph})
	}
	for i, m := range msgs {
		idx := uint64(len(encs) + i)
		p, err := l.InclusionProof(ctx, idx, size)
		if err != nil {
			t.Fatal(err)
		}
		f.msgs = append(f.msgs, ExportMessageOf("ms/acc/gw", m, idx, p))
	}
	return f
}

// export writes the fixture as an export, with the members given
// replacing the defaults in place (unknown ones go last); a nil value
// leaves a member out.
func (f *exportFixture) export(t testing.TB, members ...any) []byte {
	t.Helper()
	m := map[string]any{"version": ExportVersionSnapshots, "scope": "ms", "from": nil, "to": nil, "tree_head": f.head, "snapshots": f.snap, "count": len(f.snap), "not_yet_covered": 0}
	order := []string{"version", "scope", "from", "to", "after", "tree_head", "snapshots", "count", "device_messages", "message_count", "messages_not_yet_covered", "not_yet_covered", "next"}
	for i := 0; i+1 < len(members); i += 2 {
		k := members[i].(string)
		if !slices.Contains(order, k) {
			order = append(order, k)
		}
		m[k] = members[i+1]
	}
	var b bytes.Buffer
	b.WriteByte('{')
	first := true
	for _, k := range order {
		if m[k] == nil {
			continue
		}
		if !first {
			b.WriteByte(',')
		}
		first = false
		v, err := json.Marshal(m[k])
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(&b, "%q:%s", k, v)
	}
	b.WriteByte('}')
	return b.Bytes()
}

func TestVerifyExportFormat(t *testing.T) {
	f := newExportFixture(t)
	rep, err := VerifyExport(bytes.NewReader(f.export(t)), ExportOptions{Root: f.root})
	if err != nil || rep.Snapshots != 5 || rep.Devices != 2 || rep.Head.Size != 5 || rep.Header.Scope != "ms" {
		t.Fatalf("VerifyExport = %+v, %v", rep, err)
	}
	var progress []int
	if _, err := VerifyExport(bytes.NewReader(f.export(t)), ExportOptions{Root: f.root, Progress: func(n int) { progress = append(progress, n) }}); err != nil || len(progress) != 0 {
		t.Fatalf("progress below ProgressEvery: %v %v", progress, err)
	}
	unknownEntry := append([]ExportSnapshot(nil), f.snap...)
	tests := []struct {
		name string
		doc  []byte
		want string
	}{
		{"version not first", append([]byte(`{"scope":"ms",`), f.export(t)[1:]...), `first member must be "version"`},
		{"member out of order", append(f.export(t)[:len(f.export(t))-1], `,"scope":"x"}`...), `"scope" repeated or out of order`},
		{"unknown member", f.export(t, "signature", "x"), `unknown member "signature"`},
		{"unknown snapshot field", bytes.Replace(f.export(t, "snapshots", unknownEntry), []byte(`"leaf_index"`), []byte(`"leaf":1,"leaf_index"`), 1), `unknown field "leaf"`},
		{"no count", f.export(t, "count", nil, "not_yet_covered", nil), "no count: the export is truncated"},
		{"no snapshots", f.export(t, "snapshots", nil), "no snapshots member"},
		{"snapshots before tree_head", f.export(t, "tree_head", nil), "snapshots before tree_head"},
		{"trailing data", append(f.export(t), "{}"...), "data after the end"},
		{"truncated", f.export(t)[:200], ""},
		{"bad from", f.export(t, "from", "yesterday"), "export from"},
		{"proof too long", f.export(t, "snapshots", []ExportSnapshot{{Path: "ms/acc/gw/a", Seq: 1, Snapshot: f.snap[0].Snapshot, Proof: make([]string, 65)}}, "count", 1), "65 hashes"},
		{"path of two elements", f.export(t, "snapshots", []ExportSnapshot{{Path: "ms/a", Seq: 1, Snapshot: f.snap[0].Snapshot}}, "count", 1), "want master/account/gateway/device"},
		{"snapshot of another device", f.export(t, "snapshots", []ExportSnapshot{{Path: "ms/acc/gw/b", Seq: 1, Snapshot: f.snap[0].Snapshot}}, "count", 1), `device "a", not "b"`},
		{"seq disagrees", f.export(t, "snapshots", []ExportSnapshot{{Path: "ms/acc/gw/a", Seq: 2, Snapshot: f.snap[0].Snapshot}}, "count", 1), "has seq 1, not 2"},
		{"empty after", f.export(t, "after", ""), "export after: empty"},
		{"empty next", f.export(t, "next", ""), "export next: empty"},
		{"next before count", bytes.Replace(f.export(t, "next", "n"), []byte(`"count"`), []byte(`"next":"m","count"`), 1), `"count" repeated or out of order`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := VerifyExport(bytes.NewReader(tt.doc), ExportOptions{Root: f.root})
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("VerifyExport = %v; want an error with %q", err, tt.want)
			}
		})
	}
}

// TestVerifyHeadServicesCA: only the e2e services CA directly under the
// root may vouch for the ledger signer. A master-account CA is also
// directly under the root; a leaf "ledger" below it must not pass.
func TestVerifyHeadServicesCA(t *testing.T) {
	f := newExportFixture(t)
	ctx := t.Context()
	if _, err := VerifyHead(f.head, f.root); err != nil {
		t.Fatal(err)
	}
	// A master CA "ms" exists after issuing a leaf below it.
	k, _ := pki.GenerateKey(elliptic.P256())
	iss, err := f.e2e.Issue(ctx, pki.LeafRequest{Path: pki.Path{"ms", "acc", "dev"}, PublicKey: k.Public()})
	if err != nil {
		t.Fatal(err)
	}
	master := iss.Chain[len(iss.Chain)-1]
	if master.Subject.CommonName != "ms" || !bytes.Equal(master.RawIssuer, f.root.RawSubject) {
		t.Fatalf("expected the master CA directly under the root, got %q", master.Subject.CommonName)
	}
	masterKey, err := pki.ReadKeyFile(filepath.Join(f.dir, "pki", "e2e", "ca", "ms.key"), nil)
	if err != nil {
		t.Fatal(err)
	}
	// The master CA's holder mints a leaf named "ledger" and signs a head.
	leafKey, _ := pki.GenerateKey(elliptic.P256())
	tmpl := &x509.Certificate{SerialNumber: bigSerial(), Subject: pkix.Name{CommonName: "ledger"}, NotBefore: time.Now().Add(-time.Hour),
		NotAfter: time.Now().Add(time.Hour), KeyUsage: x509.KeyUsageDigitalSignature}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, master, leafKey.Public(), masterKey)
	if err != nil {
		t.Fatal(err)
	}
	leaf, _ := x509.ParseCertificate(der)
	cp, _ := ParseCheckpoint([]byte(f.head.Checkpoint))
	text, sig, _ := Sign(cp, leafKey)
	forged := f.head
	forged.Checkpoint, forged.Signature, forged.CertChain = string(text), base64.StdEncoding.EncodeToString(sig), string(pki.EncodeCertsPEM(leaf, master))
	if _, err := VerifyHead(forged, f.root); err == nil || !strings.Contains(err.Error(), `issuer is "ms", not the "fieldtrust e2e services CA"`) {
		t.Fatalf("head signed below a master CA: %v", err)
	}
	// Without the name check the forgery would pass: the check is needed.
	if _, err := VerifyCheckpoint(text, sig, []*x509.Certificate{leaf, master}, pki.NewVerifier(pki.E2E, f.root, master, nil)); err != nil {
		t.Fatalf("the forged chain should verify when its CA is taken for the services CA (else this test proves nothing): %v", err)
	}
	// A self-made CA with the services CA's name is not under the root.
	fakeKey, _ := pki.GenerateKey(elliptic.P384())
	fakeTmpl := &x509.Certificate{SerialNumber: bigSerial(), Subject: pkix.Name{CommonName: ServicesCAName}, NotBefore: time.Now().Add(-time.Hour),
		NotAfter: time.Now().Add(time.Hour), IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	fder, _ := x509.CreateCertificate(rand.Reader, fakeTmpl, fakeTmpl, fakeKey.Public(), fakeKey)
	fake, _ := x509.ParseCertificate(fder)
	forged.CertChain = string(pki.EncodeCertsPEM(leaf, fake))
	if _, err := VerifyHead(forged, f.root); err == nil || !strings.Contains(err.Error(), "not directly under the e2e root") {
		t.Fatalf("head below a self-made services CA: %v", err)
	}
	// A chain of the ledger leaf alone.
	chain, _ := pki.ParseCertsPEM([]byte(f.head.CertChain))
	alone := f.head
	alone.CertChain = string(pki.EncodeCertsPEM(chain[0]))
	if _, err := VerifyHead(alone, f.root); err == nil || !strings.Contains(err.Error(), "has 1 certificates") {
		t.Fatalf("head with a one-certificate chain: %v", err)
	}
}

func bigSerial() *big.Int {
	n, _ := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	return n
}

// TestChainChecker runs sequences of (device, seq, linked?) through the
// checker: in order, out of order, gaps, forks, repeats.
func TestChainChecker(t *testing.T) {
	type step struct {
		dev    string
		seq    uint64
		broken bool // prev does not name the previous seq's hash
	}
	hashOf := func(dev string, seq uint64) [32]byte { return sha256.Sum256(fmt.Appendf(nil, "%s/%d", dev, seq)) }
	tests := []struct {
		name      string
		fromStart bool
		steps     []step
		gaps      []Gap
		err       string
	}{
		{"in order", true, []step{{"a", 1, false}, {"b", 1, false}, {"a", 2, false}, {"a", 3, false}}, nil, ""},
		{"out of order", true, []step{{"a", 1, false}, {"a", 3, false}, {"a", 2, false}, {"a", 4, false}}, nil, ""},
		{"gap in the middle", true, []step{{"a", 1, false}, {"a", 2, false}, {"a", 5, false}, {"a", 6, false}}, []Gap{{"a", 3, 4}}, ""},
		{"missing start", true, []step{{"a", 3, false}, {"a", 4, false}}, []Gap{{"a", 1, 2}}, ""},
		{"range starts inside", false, []step{{"a", 3, false}, {"a", 4, false}}, nil, ""},
		{"two gaps", true, []step{{"a", 1, false}, {"a", 3, false}, {"a", 6, false}}, []Gap{{"a", 2, 2}, {"a", 4, 5}}, ""},
		{"fork", true, []step{{"a", 1, false}, {"a", 2, true}}, nil, "prev hash"},
		{"fork after reorder", true, []step{{"a", 1, false}, {"a", 3, true}, {"a", 2, false}}, nil, "a seq 3: prev hash"},
		{"repeat", true, []step{{"a", 1, false}, {"a", 2, false}, {"a", 2, false}}, nil, "seq 2 after seq 2"},
		{"repeat ahead", true, []step{{"a", 1, false}, {"a", 3, false}, {"a", 3, false}}, nil, "seq 3 appears twice"},
		{"fork at the end", true, []step{{"a", 1, false}, {"a", 3, false}, {"a", 5, true}, {"a", 4, false}}, []Gap{{"a", 2, 2}}, "a seq 5: prev hash"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := newChainChecker(tt.fromStart)
			var err error
			for _, s := range tt.steps {
				snap := &snapshot.Snapshot{Device: s.dev, Seq: s.seq}
				if s.seq > 1 {
					prev := hashOf(s.dev, s.seq-1)
					if s.broken {
						prev[0] ^= 1
					}
					snap.Prev = prev[:]
				}
				if err = c.add(s.dev, snap, hashOf(s.dev, s.seq)); err != nil {
					break
				}
			}
			var gaps []Gap
			if err == nil {
				gaps, _, err = c.finish()
			}
			if (err != nil) != (tt.err != "") || err != nil && !strings.Contains(err.Error(), tt.err) {
				t.Fatalf("error %v, want %q", err, tt.err)
			}
			if tt.err == "" && fmt.Sprint(gaps) != fmt.Sprint(tt.gaps) {
				t.Fatalf("gaps %v, want %v", gaps, tt.gaps)
			}
		})
	}
	// A device with a long gap is held only up to maxPending snapshots.
	c := newChainChecker(true)
	for seq := uint64(10); seq < 10+2*maxPending; seq++ {
		prev := sha256.Sum256(fmt.Appendf(nil, "a/%d", seq-1))
		if err := c.add("a", &snapshot.Snapshot{Seq: seq, Prev: prev[:]}, sha256.Sum256(fmt.Appendf(nil, "a/%d", seq))); err != nil {
			t.Fatal(err)
		}
		if n := len(c.chains["a"].pending); n > maxPending {
			t.Fatalf("%d pending", n)
		}
	}
	if gaps, _, err := c.finish(); err != nil || len(gaps) != 1 || gaps[0] != (Gap{"a", 1, 9}) {
		t.Fatalf("long gap: %v %v", gaps, err)
	}
}

// FuzzVerifyExport: whatever a file holds, verification fails cleanly or
// succeeds, never panics.
func FuzzVerifyExport(f *testing.F) {
	fx := newFixture(f, []MessageRecord{{Kind: "command", ID: "c1", Ref: "c1", Sender: "service:platform", Name: "reboot", At: time.UnixMilli(1e12), Body: []byte("x")}})
	f.Add(fx.export(f))
	f.Add(fx.export(f, "version", ExportVersion, "device_messages", fx.msgs, "message_count", 1, "messages_not_yet_covered", 0))
	f.Add([]byte(`{"version":2,"snapshots":[],"count":0,"device_messages":[{}],"message_count":1}`))
	f.Add([]byte(`{"version":1,"snapshots":[]}`))
	f.Add([]byte(`{"version":1,"tree_head":{},"snapshots":[{}],"count":1}`))
	f.Add(fx.export(f, "after", "a", "next", "b"))
	f.Add([]byte(`{"version":1,"scope":"","after":"","snapshots":[],"count":0,"next":""}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		rep, err := VerifyExport(bytes.NewReader(b), ExportOptions{Root: fx.root})
		if err == nil && (rep.Snapshots > 0 || rep.Messages > 0) && rep.Head.Size == 0 {
			t.Fatal("snapshots verified against an empty tree")
		}
		var se *SnapshotError
		if errors.As(err, &se) && se.Index < 0 {
			t.Fatal("negative snapshot index")
		}
	})
}

// TestVerifyExportMessages: a version 2 export carries the scope's device
// messages, each proved against the tree head; a removed, added, altered,
// repeated or misplaced message is refused, and so is a last page whose
// messages were stripped.
func TestVerifyExportMessages(t *testing.T) {
	at := time.Now().UTC().Truncate(time.Millisecond)
	f := newFixture(t, []MessageRecord{
		{Kind: "command", ID: "c1", Ref: "c1", Sender: "service:platform for console:ops@vendor.example", Name: "reboot", At: at, Body: []byte("sealed command")},
		{Kind: "result", ID: "r1", Ref: "c1", Sender: "ms/acc/gw", Name: "ok", At: at.Add(time.Second), Body: []byte("signed result")},
		{Kind: "download", ID: "d1", Ref: "camp-1", Sender: "ms/acc/gw", Name: "bytes=0-", At: at.Add(2 * time.Second), Body: []byte(`{"range":"bytes=0-"}`)},
	})
	v2 := func(msgs []ExportMessage, members ...any) []byte {
		return f.export(t, append([]any{"version", ExportVersion, "device_messages", msgs, "message_count", len(msgs), "messages_not_yet_covered", 0}, members...)...)
	}
	rep, err := VerifyExport(bytes.NewReader(v2(f.msgs)), ExportOptions{Root: f.root})
	if err != nil || rep.Messages != 3 || rep.MessageKinds["command"] != 1 || rep.MessageKinds["download"] != 1 || rep.Snapshots != 5 {
		t.Fatalf("a version 2 export: %+v %v", rep, err)
	}
	if rep, err := VerifyExport(bytes.NewReader(v2([]ExportMessage{})), ExportOptions{Root: f.root}); err != nil || rep.Messages != 0 {
		t.Fatalf("a version 2 export without messages: %+v %v", rep, err)
	}
	alter := func(i int, fn func(*ExportMessage)) []ExportMessage {
		out := slices.Clone(f.msgs)
		fn(&out[i])
		return out
	}
	for _, tt := range []struct {
		name string
		doc  []byte
		want string
	}{
		{"messages stripped", f.export(t, "version", ExportVersion), "no device_messages"},
		{"a message removed", v2(f.msgs[1:], "message_count", 3), "message_count says 3"},
		{"a message added twice", v2(append(slices.Clone(f.msgs), f.msgs[0])), "twice"},
		{"an altered body", v2(alter(0, func(m *ExportMessage) { m.Body = base64.StdEncoding.EncodeToString([]byte("other")) })), "not the record hash"},
		{"an altered sender, hash recomputed", v2(alter(0, func(m *ExportMessage) { m.Sender, m.RecordHash = "service:evil", "" })), "does not verify"},
		{"another gateway", v2(alter(1, func(m *ExportMessage) { m.Gateway = "ms/acc/gw2" })), "does not verify"},
		{"another time", v2(alter(2, func(m *ExportMessage) { m.At = at.Add(time.Hour).Format(time.RFC3339Nano); m.RecordHash = "" })), "does not verify"},
		{"a leaf outside the tree", v2(alter(2, func(m *ExportMessage) { m.LeafIndex = 99 })), "outside the tree"},
		{"not a gateway", v2(alter(0, func(m *ExportMessage) { m.Gateway = "ms/acc" })), "want master/account/gateway"},
		{"a bad time", v2(alter(0, func(m *ExportMessage) { m.At = "yesterday" })), "RFC 3339"},
		{"messages in version 1", f.export(t, "device_messages", f.msgs, "message_count", 3), "version 1"},
		{"messages on a page with next", v2(f.msgs, "next", "cursor"), "not the last"},
		{"messages before snapshots", f.export(t, "version", ExportVersion, "snapshots", nil, "device_messages", f.msgs), "before snapshots"},
	} {
		_, err := VerifyExport(bytes.NewReader(tt.doc), ExportOptions{Root: f.root})
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: %v, want %q", tt.name, err, tt.want)
		}
	}
}
