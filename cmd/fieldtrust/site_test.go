package main

import (
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// wanLink is a TCP forwarder between the site and the platform that the
// test cuts and restores.
type wanLink struct {
	ln     net.Listener
	target string
	mu     sync.Mutex
	cut    bool
	conns  []net.Conn
}

func newWANLink(t *testing.T, target string) *wanLink {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	l := &wanLink{ln: ln, target: target}
	t.Cleanup(func() { ln.Close(); l.setCut(true) })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			l.mu.Lock()
			cut := l.cut
			l.mu.Unlock()
			up, err := net.Dial("tcp", target)
			if cut || err != nil {
				c.Close()
				continue
			}
			l.mu.Lock()
			l.conns = append(l.conns, c, up)
			l.mu.Unlock()
			go func() { io.Copy(up, c); up.Close() }()
			go func() { io.Copy(c, up); c.Close() }()
		}
	}()
	return l
}

func (l *wanLink) setCut(cut bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.cut = cut
	if cut {
		for _, c := range l.conns {
			c.Close()
		}
		l.conns = nil
	}
}

// TestSiteEndToEnd: the real binaries — 'fieldtrust up' (its bootstrap
// points gateways at the site), 'fieldtrust site' with a certificate from
// 'fieldtrust pki issue --site', and a 'fieldtrust gateway' that onboards
// with its manufacturer certificate. The gateway's snapshots reach the
// store through the site, also across a WAN outage (the site's link cut
// and restored), and a command sent with 'fieldtrust command send' reaches
// the gateway behind the site and its signed result comes back.
func TestSiteEndToEnd(t *testing.T) { siteEndToEnd(t) }

// TestSiteEndToEndCluster: the same against 'up --broker cluster' (a node
// of the clustered tier, NATS): the site's upstream session is MQTT 3.1.1
// with its subject's name as client ID, as the cluster requires, and the
// cluster's hook applies rule 5 through tacs.Rights.
func TestSiteEndToEndCluster(t *testing.T) { siteEndToEnd(t, "--broker", "cluster") }

func siteEndToEnd(t *testing.T, upArgs ...string) {
	data, work := t.TempDir(), t.TempDir()
	httpAddr, mqttAddr, siteAddr := freeAddr(t), freeAddr(t), freeAddr(t)
	p := startUp(t, data, httpAddr, mqttAddr, append([]string{"--broker-url", "mqtts://" + siteAddr}, upArgs...)...)
	caFile, certFile, keyFile, serial := manufacturer(t, work, "ACME-SN-0042")
	siteDir := filepath.Join(work, "site")
	for _, args := range [][]string{
		{"manufacturer", "trust", "--data", data, caFile},
		{"device", "claim", "--data", data, "--onboarding-serial", fmt.Sprintf("%X", serial), "--path", "ms-demo/acc-1/gw-1"},
		{"pki", "issue", "--data", data, "ms-demo/acc-1", "--site", "--ip", "127.0.0.1", "--out", siteDir},
	} {
		if o, code := run(t, args...); code != 0 {
			t.Fatalf("%v: %s", args, o)
		}
	}
	if o, code := run(t, "pki", "issue", "--data", data, "ms-demo/acc-1/gw-9", "--site", "--ip", "127.0.0.1", "--out", filepath.Join(work, "bad")); code != 2 || !strings.Contains(o, "not an account") {
		t.Fatalf("a site certificate for a gateway path: %d %s", code, o)
	}

	link := newWANLink(t, mqttAddr)
	site := exec.Command(binary, "site", "--data", siteDir, "--upstream", link.ln.Addr().String(), "--upstream-name", "127.0.0.1", "--mqtt-addr", siteAddr, "--log-format", "json")
	siteLog, _ := os.Create(filepath.Join(work, "site.log"))
	site.Stdout, site.Stderr = siteLog, siteLog
	if err := site.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { site.Process.Kill(); site.Wait() })
	readLog := func(f string) string { b, _ := os.ReadFile(filepath.Join(work, f)); return string(b) }
	waitLog := func(f, what string, n int) {
		t.Helper()
		deadline := time.Now().Add(60 * time.Second)
		for strings.Count(readLog(f), what) < n {
			if time.Now().After(deadline) {
				t.Fatalf("no %q in %s:\n%s\nplatform:\n%s", what, f, readLog(f), p.logs())
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	waitLog("site.log", `"msg":"connected to the platform"`, 1)

	gw := exec.Command(binary, "gateway", "--platform", "https://"+httpAddr, "--ca", filepath.Join(siteDir, "ca.pem"),
		"--onboarding-cert", certFile, "--onboarding-key", keyFile, "--state", filepath.Join(work, "gw"),
		"--simulate", "2", "--simulate-every", "100ms", "--log-format", "json")
	gwLog, _ := os.Create(filepath.Join(work, "gateway.log"))
	gw.Stdout, gw.Stderr = gwLog, gwLog
	if err := gw.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { gw.Process.Kill(); gw.Wait() })

	d := openData(t, data)
	t.Cleanup(func() { d.Close() })
	stored := func() uint64 {
		devs, err := d.Store.ListDevices(t.Context(), "")
		if err != nil {
			t.Fatal(err)
		}
		var n uint64
		for _, dv := range devs {
			n += dv.Snapshots
		}
		return n
	}
	waitStored := func(n uint64) {
		t.Helper()
		deadline := time.Now().Add(90 * time.Second)
		for stored() < n {
			if time.Now().After(deadline) {
				t.Fatalf("%d snapshots stored, want %d\ngateway:\n%s\nsite:\n%s", stored(), n, readLog("gateway.log"), readLog("site.log"))
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	waitStored(10)
	if !strings.Contains(readLog("gateway.log"), siteAddr) {
		t.Fatalf("the gateway did not use the site's broker %s:\n%s", siteAddr, readLog("gateway.log"))
	}

	// A WAN outage: the gateway keeps publishing to the site.
	link.setCut(true)
	waitLog("site.log", `"msg":"platform connection ended; messages stay queued"`, 1)
	waitLog("site.log", `"msg":"platform connection ended; messages stay queued"`, 2) // a reconnect attempt failed too
	before := stored()
	link.setCut(false)
	waitLog("site.log", `"msg":"connected to the platform"`, 2)
	waitStored(before + 20)

	// A command through the site, and its signed result back.
	o, code := run(t, "command", "send", "--data", data, "ms-demo/acc-1/gw-1", "clean", "--wait", "--timeout", "2m")
	if code != 0 || !strings.Contains(o, `"status": "ok"`) {
		t.Fatalf("command send --wait: %d %s\ngateway:\n%s\nsite:\n%s", code, o, readLog("gateway.log"), readLog("site.log"))
	}

	gw.Process.Kill()
	gw.Wait()
	// Complete chains: whatever was stored is each device's prefix 1..n.
	devs, err := d.Store.ListDevices(t.Context(), "")
	if err != nil || len(devs) != 2 {
		t.Fatalf("stored devices: %v %v", devs, err)
	}
	for _, dv := range devs {
		if dv.Snapshots != dv.LastSeq {
			t.Errorf("device %s: %d snapshots stored up to seq %d", dv.Device, dv.Snapshots, dv.LastSeq)
		}
	}
	if evs, err := d.Store.IntegrityEvents(t.Context(), "", time.Time{}, time.Time{}, 10); err != nil || len(evs) != 0 {
		t.Fatalf("integrity events: %+v %v", evs, err)
	}
}
