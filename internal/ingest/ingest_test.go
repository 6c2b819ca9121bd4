package ingest_test

import (
	"crypto/elliptic"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/fieldtrust/fieldtrust/internal/datadir"
	"github.com/fieldtrust/fieldtrust/internal/envelope"
	"github.com/fieldtrust/fieldtrust/internal/ledger"
	"github.com/fieldtrust/fieldtrust/internal/pki"
	"github.com/fieldtrust/fieldtrust/internal/platform"
	"github.com/fieldtrust/fieldtrust/internal/platform/platformtest"
	"github.com/fieldtrust/fieldtrust/internal/snapshot"
	"github.com/fieldtrust/fieldtrust/internal/topic"
	"github.com/fieldtrust/fieldtrust/internal/web"
)

func seal(t *testing.T, content []byte, signer *envelope.Signer, to ...*x509.Certificate) []byte {
	t.Helper()
	env, err := envelope.Seal(content, envelope.SealOptions{Recipients: to, Signer: signer})
	if err != nil {
		t.Fatal(err)
	}
	return env
}

func publish(t *testing.T, c mqtt.Client, topic string, payload []byte) {
	t.Helper()
	if tok := c.Publish(topic, 1, false, payload); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("publish: %v", tok.Error())
	}
}

// TestIngestRejectsAndIsolation drives ingest with good and hostile
// snapshots through the real broker, then reads the outcome through the
// API as the operator, as the owning customer and as another customer.
func TestIngestRejectsAndIsolation(t *testing.T) {
	e := platformtest.Start(t, platform.Config{})
	ctx := t.Context()
	gw := e.Identity(t, "ms-1/acc-1/gw-1", true)
	gw2 := e.Identity(t, "ms-1/acc-1/gw-2", true)
	gw3 := e.Identity(t, "ms-1/acc-1/gw-3", true)
	customer := e.Identity(t, "ms-1", false)
	other := e.Identity(t, "ms-2/acc-1", false)
	admin := e.Service(t, "ops", "admin")
	// A signer from a foreign PKI that copies gw-1's key id.
	foreignDir := t.TempDir()
	fdb, _ := datadir.Open(ctx, foreignDir, nil)
	defer fdb.Close()
	fk, _ := pki.GenerateKey(elliptic.P256())
	fiss, _ := fdb.E2E.Issue(ctx, pki.LeafRequest{Path: pki.Path{"ms-1", "acc-1", "gw-1"}, PublicKey: fk.Public()})
	foreign := &envelope.Signer{Cert: fiss.Cert, Key: fk, Chain: fiss.Chain[1:], EmbedCerts: true}
	time.Sleep(1500 * time.Millisecond) // the platform picks up the admin role

	c := e.MQTT(t, gw)
	c2 := e.MQTT(t, gw2)
	c3 := e.MQTT(t, gw3)
	topic, topic2, topic3 := topic.SnapshotsOf("ms-1/acc-1/gw-1"), topic.SnapshotsOf("ms-1/acc-1/gw-2"), topic.SnapshotsOf("ms-1/acc-1/gw-3")
	b := &snapshot.Builder{Device: "pump-1", DeviceType: "pump"}
	var encs [][]byte
	for i := range 4 {
		enc, _, err := b.Next(time.Now().Add(time.Duration(i)*time.Second).UnixMilli(), []snapshot.Value{{Channel: "pressure", Value: float64(i), Unit: "bar"}})
		if err != nil {
			t.Fatal(err)
		}
		encs = append(encs, enc)
	}
	fork, _, _ := (&snapshot.Builder{Device: "pump-1", Head: &snapshot.Head{Seq: 1, Hash: snapshot.Hash(encs[0])}}).Next(1, []snapshot.Value{{Channel: "pressure", Value: 99}})

	good1 := seal(t, encs[0], gw.E2E, e.IngestCert)
	publish(t, c, topic, good1)
	publish(t, c, topic, seal(t, encs[1], gw.E2E, e.IngestCert))
	publish(t, c, topic, good1)                                  // replayed envelope: stored once
	publish(t, c, topic, seal(t, encs[3], gw.E2E, e.IngestCert)) // seq 4: a gap
	tampered := seal(t, encs[2], gw.E2E, e.IngestCert)
	tampered[len(tampered)-20] ^= 1
	publish(t, c, topic, tampered)
	publish(t, c2, topic2, seal(t, encs[2], gw.E2E, e.IngestCert)) // gw-1's snapshot on gw-2's topic
	publish(t, c, topic, seal(t, encs[2], foreign, e.IngestCert))  // foreign PKI
	publish(t, c, topic, seal(t, fork, gw.E2E, e.IngestCert))      // another seq 2
	publish(t, c, topic, seal(t, encs[2], gw.E2E, gw2.E2ECert))    // not for ingest
	publish(t, c, topic, []byte("garbage"))
	if _, err := e.D.E2E.RevokeName(ctx, "ms-1/acc-1/gw-3", false, 1); err != nil {
		t.Fatal(err)
	}
	time.Sleep(1500 * time.Millisecond)
	b3 := &snapshot.Builder{Device: "d"}
	enc3, _, _ := b3.Next(1, []snapshot.Value{{Channel: "c", Value: 1}})
	publish(t, c3, topic3, seal(t, enc3, gw3.E2E, e.IngestCert))

	wantRejects := map[string]bool{"tampered": true, "wrong_device": true, "untrusted_signer": true, "fork": true, "not_for_me": true, "malformed_envelope": true, "revoked_signer": true}
	var rej struct {
		Rejects []struct{ Reason, Topic, SHA256 string }
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		rej.Rejects = nil
		if code := e.Get(t, admin, "/api/v1/rejects", &rej); code != 200 {
			t.Fatalf("rejects as admin: %d", code)
		}
		got := map[string]bool{}
		for _, r := range rej.Rejects {
			got[r.Reason] = true
		}
		if len(got) == len(wantRejects) || time.Now().After(deadline) {
			for r := range wantRejects {
				if !got[r] {
					t.Errorf("no reject with reason %s; got %+v", r, rej.Rejects)
				}
			}
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	for _, r := range rej.Rejects {
		if len(r.SHA256) != 64 {
			t.Errorf("reject without the raw message's hash: %+v", r)
		}
	}

	var snaps struct {
		Snapshots []struct {
			Seq         uint64
			Hash        string
			LedgerIndex uint64 `json:"ledger_index"`
		}
	}
	dev := "/api/v1/devices/ms-1/acc-1/gw-1/pump-1/snapshots"
	if code := e.Get(t, customer, dev, &snaps); code != 200 {
		t.Fatalf("owner reads its device: %d", code)
	}
	if len(snaps.Snapshots) != 3 || snaps.Snapshots[0].Seq != 1 || snaps.Snapshots[1].Seq != 2 || snaps.Snapshots[2].Seq != 4 {
		t.Fatalf("stored snapshots = %+v, want seq 1, 2, 4 once each", snaps.Snapshots)
	}
	var evs struct{ Events []struct{ Kind string } }
	e.Get(t, customer, "/api/v1/integrity-events", &evs)
	kinds := map[string]bool{}
	for _, ev := range evs.Events {
		kinds[ev.Kind] = true
	}
	if !kinds["gap"] || !kinds["fork"] {
		t.Fatalf("integrity events = %+v, want a gap and a fork", evs.Events)
	}

	// Another customer sees nothing of it, through any route.
	var devs struct{ Devices []any }
	if code := e.Get(t, other, "/api/v1/devices", &devs); code != 200 || len(devs.Devices) != 0 {
		t.Fatalf("other customer's device list: %d %v", code, devs.Devices)
	}
	if code := e.Get(t, other, dev, nil); code != 404 {
		t.Fatalf("other customer reading the device: %d", code)
	}
	if code := e.Get(t, other, "/api/v1/status", &devs); code != 200 || len(devs.Devices) != 0 {
		t.Fatalf("other customer's status: %d %v", code, devs.Devices)
	}
	evs.Events = nil
	if e.Get(t, other, "/api/v1/integrity-events", &evs); len(evs.Events) != 0 {
		t.Fatalf("other customer sees events: %v", evs.Events)
	}
	if code := e.Get(t, other, "/api/v1/ledger/proof/"+snaps.Snapshots[0].Hash, nil); code != 404 {
		t.Fatalf("other customer gets a proof: %d", code)
	}
	if code := e.Get(t, other, "/api/v1/rejects", nil); code != 403 {
		t.Fatalf("customer reads rejects: %d", code)
	}
	for _, bad := range []string{"/api/v1/devices/ms-1/acc-1/gw-1/pump-1/snapshots?from=yesterday", "/api/v1/devices/ms-1/acc-1/gw-1/pump-1/snapshots?limit=0", "/api/v1/devices/ms-1/%2B/gw-1/pump-1/snapshots", "/api/v1/ledger/proof/zz"} {
		if code := e.Get(t, customer, bad, nil); code != 400 {
			t.Errorf("%s: %d, want 400", bad, code)
		}
	}

	// The ledger proves what arrived, offline, against a signed head.
	var head web.TreeHeadJSON
	deadline = time.Now().Add(20 * time.Second)
	for head.Size < 3 {
		if time.Now().After(deadline) {
			t.Fatalf("no signed tree head covering the snapshots: %+v", head)
		}
		e.Get(t, customer, "/api/v1/ledger/head", &head)
		time.Sleep(200 * time.Millisecond)
	}
	chain, err := pki.ParseCertsPEM([]byte(head.CertChain))
	if err != nil {
		t.Fatal(err)
	}
	sig, _ := base64.StdEncoding.DecodeString(head.Signature)
	ev, _ := e.D.E2E.Verifier(ctx)
	cp, err := ledger.VerifyCheckpoint([]byte(head.Checkpoint), sig, chain, ev)
	if err != nil {
		t.Fatalf("signed head: %v", err)
	}
	var proof web.ProofJSON
	if code := e.Get(t, customer, "/api/v1/ledger/proof/"+snaps.Snapshots[0].Hash, &proof); code != 200 {
		t.Fatalf("proof: %d", code)
	}
	var hashes [][]byte
	for _, h := range proof.Proof {
		b, _ := hex.DecodeString(h)
		hashes = append(hashes, b)
	}
	var sh [32]byte
	copy(sh[:], mustHex(t, snaps.Snapshots[0].Hash))
	if snapshot.Hash(encs[0]) != sh {
		t.Fatal("stored hash is not the hash of what the gateway sent")
	}
	if err := ledger.VerifyInclusion(ledger.LeafData("ms-1/acc-1/gw-1", sh), proof.LeafIndex, cp.Size, hashes, cp.Root); err != nil {
		t.Fatalf("inclusion proof against the signed head: %v", err)
	}
}

func mustHex(t *testing.T, s string) []byte {
	b, err := hex.DecodeString(s)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
