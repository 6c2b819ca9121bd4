package gateway_test

import (
	"context"
	"crypto/x509"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/fieldtrust/fieldtrust/internal/datadir"
	"github.com/fieldtrust/fieldtrust/internal/demo"
	"github.com/fieldtrust/fieldtrust/internal/gateway"
	"github.com/fieldtrust/fieldtrust/internal/logbuf"
	"github.com/fieldtrust/fieldtrust/internal/platform"
)

func freePort(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// proxy forwards TCP connections on addr to target and counts what it
// carried from clients.
type proxy struct {
	ln      net.Listener
	carried atomic.Int64
}

type countingWriter struct {
	w io.Writer
	n *atomic.Int64
}

func (c countingWriter) Write(b []byte) (int, error) {
	n, err := c.w.Write(b)
	c.n.Add(int64(n))
	return n, err
}

func startProxy(t *testing.T, addr, target string) *proxy {
	t.Helper()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	p := &proxy{ln: ln}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				u, err := net.Dial("tcp", target)
				if err != nil {
					return
				}
				defer u.Close()
				go io.Copy(c, u)
				io.Copy(countingWriter{u, &p.carried}, c)
			}()
		}
	}()
	return p
}

// TestFailback: a gateway whose first broker (bootstrap order) is down
// connects to the second; once the first takes connections again the
// gateway moves back to it (the rebalancing after a node returns), and
// its snapshots keep being stored.
func TestFailback(t *testing.T) {
	first, second := freePort(t), freePort(t)
	dir := t.TempDir()
	ctx, cancel := context.WithCancel(context.Background())
	ready := make(chan struct{})
	var httpAddr string
	done := make(chan error, 1)
	go func() {
		// The weights put the first broker first in every gateway's list
		// (weighted rendezvous).
		done <- platform.Run(ctx, platform.Config{DataDir: dir, HTTPAddr: "127.0.0.1:0", MQTTAddr: second,
			BrokerURLs:      []string{"mqtts://" + first + ";1000000", "mqtts://" + second + ";0.000001"},
			PublishInterval: 200 * time.Millisecond, Logger: logger(), Ready: func(h, m string) { httpAddr = h; close(ready) }})
	}()
	select {
	case <-ready:
	case err := <-done:
		t.Fatal(err)
	}
	t.Cleanup(func() { cancel(); <-done })
	d, err := datadir.Open(t.Context(), dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	fleet, err := demo.Setup(t.Context(), d)
	if err != nil {
		t.Fatal(err)
	}
	e := &env{httpAddr: httpAddr, mqttAddr: second, d: d, fleet: fleet}
	logs := &logbuf.Buffer{}
	e.runGateway(t, t.TempDir(), func(c *gateway.Config) {
		c.Failback = 200 * time.Millisecond
		c.Logger = slog.New(slog.NewTextHandler(logs, nil))
		c.CA = []*x509.Certificate{d.Transport.Root()}
	})
	waitUntil(t, 30*time.Second, "connected to the second broker", func() bool {
		return strings.Contains(logs.String(), "broker=mqtts://"+second)
	})
	waitUntil(t, 30*time.Second, "a snapshot stored", func() bool { return e.stored(t) > 0 })
	p := startProxy(t, first, second)
	waitUntil(t, 30*time.Second, "moved back to the first broker", func() bool {
		return strings.Contains(logs.String(), "moving back to it") && strings.Contains(logs.String(), "msg=\"connected to broker\" identity="+fleet.Gateways[0].Path+" broker=mqtts://"+first)
	})
	before, carried := e.stored(t), p.carried.Load()
	waitUntil(t, 30*time.Second, "snapshots stored through the first broker", func() bool {
		return e.stored(t) >= before+3 && p.carried.Load() > carried
	})
}
