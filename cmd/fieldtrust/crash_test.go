package main

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/fieldtrust/fieldtrust/internal/topic"
)

// TestCrashKeepsQoS1 kills the platform with SIGKILL while a device
// publishes QoS 1 messages for an offline subscriber with a persistent
// session, restarts it, and checks that every message the broker
// acknowledged reaches the subscriber (duplicates allowed, as QoS 1 does).
func TestCrashKeepsQoS1(t *testing.T) {
	const total = 300
	data, certs := t.TempDir(), t.TempDir()
	httpAddr, mqttAddr := freeAddr(t), freeAddr(t)
	p := startUp(t, data, httpAddr, mqttAddr)
	for _, id := range []string{"ms-1/acc-1", "ms-1/acc-1/dev-1"} {
		if o, code := run(t, "pki", "issue", "--data", data, id, "--out", filepath.Join(certs, filepath.Base(id))); code != 0 {
			t.Fatalf("issue %s: %s", id, o)
		}
	}
	rootPEM, _ := os.ReadFile(filepath.Join(certs, "acc-1", "ca.pem"))
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(rootPEM)
	client := func(name, id string, clean bool, onMsg mqtt.MessageHandler) mqtt.Client {
		cert, err := tls.LoadX509KeyPair(filepath.Join(certs, name, "cert.pem"), filepath.Join(certs, name, "key.pem"))
		if err != nil {
			t.Fatal(err)
		}
		opts := mqtt.NewClientOptions().AddBroker("ssl://" + mqttAddr).SetClientID(id).SetCleanSession(clean).
			SetTLSConfig(&tls.Config{RootCAs: roots, Certificates: []tls.Certificate{cert}}).
			SetAutoReconnect(false).SetConnectTimeout(5 * time.Second).SetDefaultPublishHandler(onMsg)
		return mqtt.NewClient(opts)
	}
	connect := func(c mqtt.Client) error {
		tok := c.Connect()
		if !tok.WaitTimeout(10 * time.Second) {
			return fmt.Errorf("connect timed out")
		}
		return tok.Error()
	}

	// The subscriber makes its persistent session, then goes offline.
	var mu sync.Mutex
	got := map[int]int{}
	onMsg := func(_ mqtt.Client, m mqtt.Message) {
		n, err := strconv.Atoi(string(m.Payload()))
		if err != nil {
			t.Errorf("unexpected payload %q", m.Payload())
			return
		}
		mu.Lock()
		got[n]++
		mu.Unlock()
	}
	sub := client("acc-1", "customer-app", false, onMsg)
	if err := connect(sub); err != nil {
		t.Fatal(err)
	}
	if tok := sub.Subscribe(topic.Of("ms-1/acc-1/+", topic.Snapshots), 1, nil); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("subscribe: %v", tok.Error())
	}
	sub.Disconnect(250)

	// The device publishes; the platform is killed half-way through.
	pub := client("dev-1", "dev-1", true, nil)
	if err := connect(pub); err != nil {
		t.Fatal(err)
	}
	killed := false
	for i := 0; i < total; {
		if i == total/2 && !killed {
			// Keep a few publishes in flight while the process dies.
			for j := i; j < i+5; j++ {
				pub.Publish(topic.SnapshotsOf("ms-1/acc-1/dev-1"), 1, false, strconv.Itoa(j))
			}
			if err := p.cmd.Process.Kill(); err != nil {
				t.Fatal(err)
			}
			p.cmd.Wait()
			killed = true
			t.Logf("killed the platform (SIGKILL) after %d acknowledged messages", i)
			p = startUp(t, data, httpAddr, mqttAddr)
			pub.Disconnect(0)
			pub = client("dev-1", "dev-1", true, nil)
			if err := connect(pub); err != nil {
				t.Fatalf("reconnect after restart: %v", err)
			}
			continue // republish from i: the unacknowledged ones
		}
		tok := pub.Publish(topic.SnapshotsOf("ms-1/acc-1/dev-1"), 1, false, strconv.Itoa(i))
		if !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
			t.Fatalf("publish %d: %v", i, tok.Error())
		}
		i++
	}
	pub.Disconnect(250)

	// The subscriber comes back to its session and gets everything.
	sub = client("acc-1", "customer-app", false, onMsg)
	if err := connect(sub); err != nil {
		t.Fatal(err)
	}
	defer sub.Disconnect(250)
	deadline := time.Now().Add(30 * time.Second)
	for {
		mu.Lock()
		n := len(got)
		mu.Unlock()
		if n == total {
			break
		}
		if time.Now().After(deadline) {
			var missing []int
			mu.Lock()
			for i := range total {
				if got[i] == 0 {
					missing = append(missing, i)
				}
			}
			mu.Unlock()
			t.Fatalf("after the crash the subscriber got %d of %d messages; missing %v", n, total, missing)
		}
		time.Sleep(100 * time.Millisecond)
	}
	dups := 0
	for _, c := range got {
		dups += c - 1
	}
	t.Logf("all %d messages delivered after kill -9 and restart (%d duplicates)", total, dups)
}
