package platform

import (
	"context"
	"crypto/elliptic"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/fieldtrust/fieldtrust/internal/broker"
	"github.com/fieldtrust/fieldtrust/internal/envelope"
	"github.com/fieldtrust/fieldtrust/internal/ingest"
	"github.com/fieldtrust/fieldtrust/internal/ledger"
	"github.com/fieldtrust/fieldtrust/internal/pki"
	"github.com/fieldtrust/fieldtrust/internal/snapshot"
	"github.com/fieldtrust/fieldtrust/internal/store"
	"github.com/fieldtrust/fieldtrust/internal/supervisor"
	"github.com/fieldtrust/fieldtrust/internal/topic"
)

// breakable wraps ingest's store and the ledger's storage so a test can
// make them fail on purpose.
type breakable struct {
	ingest.Store
	ledger ledger.Storage
	store  atomic.Bool // InsertSnapshots fails
	append atomic.Bool // AppendLedger fails
}

func (b *breakable) InsertSnapshots(ctx context.Context, recs []store.SnapshotRecord) ([]bool, error) {
	if b.store.Load() {
		return nil, errors.New("store failing on purpose")
	}
	return b.Store.InsertSnapshots(ctx, recs)
}

type breakableLedger struct {
	ledger.Storage
	b *breakable
}

func (l breakableLedger) AppendLedger(ctx context.Context, start uint64, leaves [][]byte, nodes []store.LedgerNode) error {
	if l.b.append.Load() {
		return errors.New("ledger failing on purpose")
	}
	return l.Storage.AppendLedger(ctx, start, leaves, nodes)
}

// healthz fetches /healthz (public: no client certificate).
func (r *running) healthz(t *testing.T) (int, healthJSON) {
	t.Helper()
	c := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: r.transport}}, Timeout: 10 * time.Second}
	resp, err := c.Get("https://" + r.httpAddr + "/healthz")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	var h healthJSON
	if err := json.Unmarshal(body, &h); err != nil {
		t.Fatalf("healthz body %q: %v", body, err)
	}
	return resp.StatusCode, h
}

// waitHealth polls /healthz until cond holds.
func (r *running) waitHealth(t *testing.T, what string, cond func(code int, h healthJSON) bool) healthJSON {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		code, h := r.healthz(t)
		if cond(code, h) {
			return h
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s; last /healthz: %d %+v", what, code, h)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// gateway is a device identity that publishes sealed snapshots.
type gateway struct {
	tls    tls.Certificate
	signer *envelope.Signer
	b      snapshot.Builder
}

func (r *running) gateway(t *testing.T, path string) *gateway {
	t.Helper()
	g := &gateway{tls: r.credentials(t, pki.LeafRequest{Path: mustPath(t, path)}), b: snapshot.Builder{Device: "pump"}}
	key, _ := pki.GenerateKey(elliptic.P256())
	iss, err := r.d.E2E.Issue(t.Context(), pki.LeafRequest{Path: mustPath(t, path), PublicKey: key.Public()})
	if err != nil {
		t.Fatal(err)
	}
	g.signer = &envelope.Signer{Cert: iss.Cert, Key: key, Chain: iss.Chain[1:]}
	return g
}

func (r *running) publishSnapshot(t *testing.T, c mqtt.Client, g *gateway, path string) {
	t.Helper()
	ic, err := pki.ReadCertsFile(filepath.Join(r.dir, "platform", "ingest-e2e.crt"))
	if err != nil {
		t.Fatal(err)
	}
	enc, _, err := g.b.Next(time.Now().UnixMilli(), []snapshot.Value{{Channel: "p", Value: 1}})
	if err != nil {
		t.Fatal(err)
	}
	env, err := envelope.Seal(enc, envelope.SealOptions{Recipients: []*x509.Certificate{ic[0]}, Signer: g.signer})
	if err != nil {
		t.Fatal(err)
	}
	if tok := c.Publish(topic.SnapshotsOf(path), 1, false, env); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("publish: %v", tok.Error())
	}
}

func (r *running) stored(t *testing.T) uint64 {
	devs, err := r.d.Store.ListDevices(t.Context(), "")
	if err != nil {
		t.Fatal(err)
	}
	var n uint64
	for _, d := range devs {
		n += d.Snapshots
	}
	return n
}

// TestSupervisedUp: /healthz reports every service and ingest; a store
// that fails and a ledger that fails make it 503 with ingest retrying
// (the snapshot waits, unacknowledged) and 200 again once they work, with
// the snapshot stored; a broker that stops is restarted on its address,
// and ingest reconnects and goes on.
func TestSupervisedUp(t *testing.T) {
	b := &breakable{}
	kill := make(chan struct{}, 1)
	policy := supervisor.Policy{MinBackoff: 10 * time.Millisecond, MaxBackoff: 50 * time.Millisecond, GiveUpAfter: 5}
	r := startWith(t, &testHooks{
		ingestStore:   func(s ingest.Store) ingest.Store { b.Store = s; return b },
		ledgerStorage: func(s ledger.Storage) ledger.Storage { return breakableLedger{s, b} },
		serveBroker: func(ctx context.Context, brk *broker.Broker) error {
			ctx, cancel := context.WithCancel(ctx)
			defer cancel()
			go func() {
				select {
				case <-kill:
					cancel()
				case <-ctx.Done():
				}
			}()
			return brk.Serve(ctx)
		},
		policy: &policy,
	})
	healthy := func(code int, h healthJSON) bool { return code == 200 && h.Status == "ok" && h.Ingest.Connected }
	h := r.waitHealth(t, "healthy", healthy)
	for _, name := range []string{"broker", "ingest", "revocation", "treeheads", "https", "certificates", "registry"} {
		if s, ok := h.Services[name]; !ok || s.State != supervisor.StateRunning {
			t.Errorf("service %s: %+v", name, s)
		}
	}
	g := r.gateway(t, "ms-1/acc-1/gw-1")
	c, err := r.mqttClient(t, "gw-1", g.tls, nil)
	if err != nil {
		t.Fatal(err)
	}
	r.publishSnapshot(t, c, g, "ms-1/acc-1/gw-1")
	waitUntil(t, "first snapshot stored", func() bool { return r.stored(t) == 1 })

	for i, fail := range []*atomic.Bool{&b.store, &b.append} {
		fail.Store(true)
		r.publishSnapshot(t, c, g, "ms-1/acc-1/gw-1")
		h := r.waitHealth(t, "unhealthy while failing", func(code int, h healthJSON) bool {
			return code == http.StatusServiceUnavailable && h.Status == "unhealthy" && h.Ingest.State == "retrying" && h.Ingest.Pending == 1
		})
		if h.Ingest.Connected != true {
			t.Errorf("ingest lost its connection while retrying: %+v", h.Ingest)
		}
		if n := r.stored(t); n != uint64(i+1) {
			t.Fatalf("stored %d while failing", n)
		}
		fail.Store(false)
		r.waitHealth(t, "healthy again", healthy)
		waitUntil(t, "the held snapshot stored", func() bool { return r.stored(t) == uint64(i+2) })
	}

	kill <- struct{}{}
	h = r.waitHealth(t, "broker restarted", func(code int, h healthJSON) bool {
		return healthy(code, h) && h.Services["broker"].Restarts == 1 && h.Services["broker"].State == supervisor.StateRunning
	})
	c2, err := r.mqttClient(t, "gw-1b", g.tls, nil)
	if err != nil {
		t.Fatalf("connect after the broker restart: %v", err)
	}
	r.publishSnapshot(t, c2, g, "ms-1/acc-1/gw-1")
	waitUntil(t, "snapshot after the broker restart stored", func() bool { return r.stored(t) == 4 })
	evs, err := r.d.Store.IntegrityEvents(t.Context(), "", time.Time{}, time.Time{}, 0)
	if err != nil || len(evs) != 0 {
		t.Fatalf("integrity events: %+v, %v", evs, err)
	}
}

// TestUpEndsWhenAServiceKeepsFailing: a broker that cannot be brought back
// ends up with an error naming it, instead of a platform that looks alive.
func TestUpEndsWhenAServiceKeepsFailing(t *testing.T) {
	policy := supervisor.Policy{MinBackoff: time.Millisecond, MaxBackoff: time.Millisecond, GiveUpAfter: 3}
	var runs atomic.Int64
	r := startWith(t, &testHooks{
		serveBroker: func(ctx context.Context, brk *broker.Broker) error {
			stopped, stop := context.WithCancel(ctx)
			stop()
			brk.Serve(stopped) // starts and stops it, releasing its state
			if runs.Add(1) == 1 {
				return errors.New("listener broke")
			}
			return errors.New("address in use")
		},
		policy: &policy,
	})
	var err error
	select {
	case err = <-r.done:
		r.done <- nil // the cleanup waits for Run's result; this one was expected
	case <-time.After(30 * time.Second):
		t.Fatal("up kept running with a dead broker")
	}
	if err == nil || !strings.Contains(err.Error(), "service broker failed 3 times in a row") || !strings.Contains(err.Error(), "address in use") {
		t.Fatalf("up ended with %v", err)
	}
}

func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
