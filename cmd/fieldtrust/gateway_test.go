package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"math/big"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/fieldtrust/fieldtrust/internal/envelope"
	"github.com/fieldtrust/fieldtrust/internal/pki"
	"github.com/fieldtrust/fieldtrust/internal/snapshot"
	"github.com/fieldtrust/fieldtrust/internal/topic"
)

// manufacturer makes a manufacturer CA and one onboarding (IDevID)
// certificate, as a device maker would, and writes them to dir.
func manufacturer(t *testing.T, dir, deviceCN string) (caFile, certFile, keyFile string, serial *big.Int) {
	t.Helper()
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "ACME Devices Manufacturing CA", Organization: []string{"ACME"}},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(10 * 365 * 24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, caKey.Public(), caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(caDER)
	devKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	serial, _ = rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 64))
	devTmpl := &x509.Certificate{
		SerialNumber: serial, Subject: pkix.Name{CommonName: deviceCN, Organization: []string{"ACME"}},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(20 * 365 * 24 * time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	devDER, err := x509.CreateCertificate(rand.Reader, devTmpl, ca, devKey.Public(), caKey)
	if err != nil {
		t.Fatal(err)
	}
	dev, _ := x509.ParseCertificate(devDER)
	keyPEM, _ := pki.MarshalKeyPEM(devKey, nil)
	caFile, certFile, keyFile = filepath.Join(dir, "mfg-ca.pem"), filepath.Join(dir, "idevid.pem"), filepath.Join(dir, "idevid.key")
	os.WriteFile(caFile, pki.EncodeCertsPEM(ca), 0o644)
	os.WriteFile(certFile, pki.EncodeCertsPEM(dev), 0o644)
	os.WriteFile(keyFile, keyPEM, 0o600)
	return caFile, certFile, keyFile, serial
}

// collector subscribes to an account's snapshots with a persistent session
// and opens each with the ingest service's e2e key, as ingest would.
type collector struct {
	mu     sync.Mutex
	status []string            // payloads seen on the gateway's status topic
	seqs   map[string][]uint64 // device -> sequence numbers in arrival order
	errs   []error
	opener *envelope.Opener
}

func (c *collector) handle(_ mqtt.Client, m mqtt.Message) {
	if _, ch, err := topic.Parse(m.Topic()); err == nil && ch == topic.Status {
		c.mu.Lock()
		c.status = append(c.status, string(m.Payload()))
		c.mu.Unlock()
		return
	}
	opened, err := c.opener.Open(context.Background(), m.Payload())
	c.mu.Lock()
	defer c.mu.Unlock()
	if err != nil {
		c.errs = append(c.errs, err)
		return
	}
	s, err := snapshot.Decode(opened.Content)
	if err != nil {
		c.errs = append(c.errs, err)
		return
	}
	if opened.Signer != "ms-demo/acc-1/gw-1" {
		c.errs = append(c.errs, fmt.Errorf("signed by %q", opened.Signer))
	}
	c.seqs[s.Device] = append(c.seqs[s.Device], s.Seq)
}

func (c *collector) total() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := 0
	for _, s := range c.seqs {
		n += len(s)
	}
	return n
}

// TestGatewayOnboardsAndSurvivesOutage: a gateway with nothing but its
// onboarding certificate enrolls, bootstraps and delivers sealed, signed,
// hash-chained snapshots; the platform is then stopped during the load and
// restarted, and every device's sequence arrives complete and in order.
func TestGatewayOnboardsAndSurvivesOutage(t *testing.T) {
	data, work := t.TempDir(), t.TempDir()
	httpAddr, mqttAddr := freeAddr(t), freeAddr(t)
	p := startUp(t, data, httpAddr, mqttAddr)
	caFile, certFile, keyFile, serial := manufacturer(t, work, "ACME-SN-0001")
	for _, args := range [][]string{
		{"manufacturer", "trust", "--data", data, caFile},
		{"device", "claim", "--data", data, "--onboarding-serial", fmt.Sprintf("%X", serial), "--path", "ms-demo/acc-1/gw-1"},
		{"pki", "issue", "--data", data, "ms-demo/acc-1", "--out", filepath.Join(work, "customer")},
	} {
		if o, code := run(t, args...); code != 0 {
			t.Fatalf("%v: %s", args, o)
		}
	}
	ingestCert, err := pki.ReadCertsFile(filepath.Join(data, "platform", "ingest-e2e.crt"))
	if err != nil {
		t.Fatal(err)
	}
	ingestKey, err := pki.ReadKeyFile(filepath.Join(data, "platform", "ingest-e2e.key"), nil)
	if err != nil {
		t.Fatal(err)
	}
	d := openData(t, data) // the verifier reads the store: keep it open
	t.Cleanup(func() { d.Close() })
	v, err := d.E2E.Verifier(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	opener, err := envelope.NewOpener(ingestCert[0], ingestKey, envelope.OpenOptions{VerifyOptions: envelope.VerifyOptions{Signers: signerLookup{v}, Verifier: v}})
	if err != nil {
		t.Fatal(err)
	}
	col := &collector{seqs: map[string][]uint64{}, opener: opener}
	rootPEM := filepath.Join(work, "customer", "ca.pem")
	roots, _ := pki.ReadCertsFile(rootPEM)
	pool := x509.NewCertPool()
	pool.AddCert(roots[0])
	custCert, err := tls.LoadX509KeyPair(filepath.Join(work, "customer", "cert.pem"), filepath.Join(work, "customer", "key.pem"))
	if err != nil {
		t.Fatal(err)
	}
	subscribe := func() mqtt.Client {
		opts := mqtt.NewClientOptions().AddBroker("ssl://" + mqttAddr).SetClientID("customer-app").SetCleanSession(false).
			SetTLSConfig(&tls.Config{RootCAs: pool, Certificates: []tls.Certificate{custCert}}).SetAutoReconnect(false).
			SetDefaultPublishHandler(col.handle).SetOrderMatters(true)
		c := mqtt.NewClient(opts)
		if tok := c.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
			t.Fatalf("customer connect: %v", tok.Error())
		}
		if tok := c.SubscribeMultiple(map[string]byte{topic.Of("ms-demo/acc-1/+", topic.Snapshots): 1, topic.Of("ms-demo/acc-1/+", topic.Status): 1}, nil); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
			t.Fatalf("customer subscribe: %v", tok.Error())
		}
		return c
	}
	sub := subscribe()

	state := filepath.Join(work, "gw-state")
	gw := exec.Command(binary, "gateway", "--platform", "https://"+httpAddr, "--ca", rootPEM,
		"--onboarding-cert", certFile, "--onboarding-key", keyFile, "--state", state,
		"--simulate", "3", "--simulate-every", "100ms", "--log-format", "json")
	gwLog, _ := os.Create(filepath.Join(work, "gateway.log"))
	gw.Stdout, gw.Stderr = gwLog, gwLog
	if err := gw.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { gw.Process.Kill(); gw.Wait() })
	dump := func() string { b, _ := os.ReadFile(filepath.Join(work, "gateway.log")); return string(b) }

	waitFor := func(n int, within time.Duration) {
		deadline := time.Now().Add(within)
		for col.total() < n {
			if time.Now().After(deadline) {
				col.mu.Lock()
				errs := col.errs[:min(3, len(col.errs))]
				col.mu.Unlock()
				t.Fatalf("only %d snapshots after %v (want %d); first errors %v\ngateway log:\n%s\nplatform log:\n%s", col.total(), within, n, errs, dump(), p.logs())
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	waitFor(15, 60*time.Second)
	// The gateway's private keys never left it and are private.
	for _, f := range []string{"transport.key", "e2e.key"} {
		st, err := os.Stat(filepath.Join(state, f))
		if err != nil || st.Mode().Perm() != 0o600 {
			t.Fatalf("%s: %v %v", f, st, err)
		}
	}

	// Outage: the platform (broker included) goes away during the load.
	sub.Disconnect(100)
	p.cmd.Process.Signal(syscall.SIGTERM)
	p.cmd.Wait()
	time.Sleep(2 * time.Second) // the gateway keeps measuring and queues
	p = startUp(t, data, httpAddr, mqttAddr)
	sub = subscribe()
	defer sub.Disconnect(100)
	before := col.total()
	waitFor(before+30, 90*time.Second)
	// The gateway dies hard: the broker publishes its last will.
	gw.Process.Kill()
	gw.Wait()
	deadline := time.Now().Add(90 * time.Second) // the broker notices at the keepalive deadline at the latest
	for {
		col.mu.Lock()
		st := strings.Join(col.status, "|")
		col.mu.Unlock()
		if strings.Contains(st, `"state":"online"`) && strings.Contains(st, `"state":"offline"`) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("status messages %q: want the retained birth and the will", st)
		}
		time.Sleep(100 * time.Millisecond)
	}
	// Through the restart nothing was lost in the store either: every
	// device's stored sequence is complete, and ingest saw no integrity
	// problem.
	time.Sleep(time.Second)
	devs, err := d.Store.ListDevices(t.Context(), "")
	if err != nil || len(devs) != 3 {
		t.Fatalf("stored devices: %v %v", devs, err)
	}
	for _, dv := range devs {
		if dv.Snapshots != dv.LastSeq {
			t.Errorf("device %s: %d snapshots stored up to seq %d", dv.Device, dv.Snapshots, dv.LastSeq)
		}
	}
	if evs, err := d.Store.IntegrityEvents(t.Context(), "", time.Time{}, time.Time{}, 10); err != nil || len(evs) != 0 {
		t.Fatalf("integrity events after the restart: %+v %v", evs, err)
	}

	col.mu.Lock()
	defer col.mu.Unlock()
	if len(col.errs) > 0 {
		t.Fatalf("%d snapshots did not open or verify, first: %v", len(col.errs), col.errs[0])
	}
	if len(col.seqs) != 3 {
		t.Fatalf("devices seen: %v", col.seqs)
	}
	for dev, seqs := range col.seqs {
		// QoS 1 may repeat a snapshot; dropping repeats, each device's
		// sequence must run 1, 2, 3, ... without gaps and in order.
		want := uint64(1)
		for _, s := range seqs {
			switch {
			case s == want:
				want++
			case s < want: // a QoS 1 redelivery
			default:
				t.Fatalf("device %s: got seq %d, expected %d: lost or reordered (all: %v)", dev, s, want, seqs)
			}
		}
		t.Logf("device %s: %d snapshots in order (%d deliveries)", dev, want-1, len(seqs))
	}
}

// signerLookup finds e2e signer certificates by key ID through the
// platform's verifier, as ingest does.
type signerLookup struct{ v *pki.Verifier }

func (s signerLookup) LookupSigner(ctx context.Context, id envelope.SignerID) (*x509.Certificate, error) {
	return s.v.LeafBySKI(ctx, id.SubjectKeyID)
}
