//go:build unix

package broker

import (
	"bufio"
	"crypto/tls"
	"fmt"
	"io"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/fieldtrust/fieldtrust/internal/broker/packet"
)

// BenchmarkDeliver is the benchmark's publish → route → deliver → PUBACK
// path in one process, over real TLS: one MQTT 3.1.1 publisher sends 1 KiB
// QoS 1 messages with a window of 16 to subscribers of its account's
// `+/snapshots`, each acknowledging every delivery, like
// scripts/bench-broker.sh's paced phase (docs/benchmarks.md). allocs/op
// is per published message, the clients' own (a few fixed ones: the
// decoded packets) included, and so is cpu-µs/op (the process's CPU
// time: ns/op is latency, the window's round trips, not work); compare
// builds in the same run:
//
//	go test -run '^$' -bench BenchmarkDeliver -benchmem -count 5 ./internal/broker
func BenchmarkDeliver(b *testing.B) {
	for _, c := range []struct {
		name       string
		persistent bool
		subs       int
	}{
		{"persistent/4", true, 4},
		{"clean/4", false, 4},
	} {
		b.Run(c.name, func(b *testing.B) { benchDeliver(b, c.persistent, c.subs) })
	}
}

// benchConn is a client reading with a reused buffer.
type benchConn struct {
	c    *tls.Conn
	r    *bufio.Reader
	body []byte
}

func dialBench(b *testing.B, e *env, cert tls.Certificate, cid string, clean bool) *benchConn {
	b.Helper()
	conn, err := tls.DialWithDialer(&netDialer, "tcp", e.b.Addr(), e.clientTLS(cert))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = conn.Close() })
	bc := &benchConn{c: conn, r: bufio.NewReaderSize(conn, 32<<10)}
	bc.write(packet.AppendConnect(nil, &packet.Connect{Version: packet.V311, ClientID: cid, CleanStart: clean, KeepAlive: 60}))
	if p, err := bc.next(); err != nil {
		b.Fatal(err)
	} else if ca, ok := p.(*packet.Connack); !ok || ca.Reason != 0 {
		b.Fatalf("CONNACK %+v", p)
	}
	return bc
}

func (bc *benchConn) write(p []byte) error {
	_, err := bc.c.Write(p)
	return err
}

func (bc *benchConn) next() (any, error) {
	h, err := packet.ReadHeader(bc.r, 0)
	if err != nil {
		return nil, err
	}
	if cap(bc.body) < h.Remaining {
		bc.body = make([]byte, h.Remaining)
	}
	body := bc.body[:h.Remaining]
	if _, err := io.ReadFull(bc.r, body); err != nil {
		return nil, err
	}
	return packet.Decode(packet.V311, h, body, true)
}

func benchDeliver(b *testing.B, persistent bool, nsubs int) {
	e := newEnvWith(b, nil)
	acc := e.pki.identity("ms-acc-1/acc-1")
	const filter = "ms-acc-1/acc-1/+/snapshots"
	subs := make([]*benchConn, nsubs)
	for i := range subs {
		s := dialBench(b, e, acc, fmt.Sprintf("sub-%d", i), !persistent)
		if err := s.write(packet.AppendSubscribe(nil, packet.V311, &packet.Subscribe{PacketID: 1, Subs: []packet.Subscription{{Filter: filter, QoS: 1}}})); err != nil {
			b.Fatal(err)
		}
		if p, err := s.next(); err != nil {
			b.Fatal(err)
		} else if sa, ok := p.(*packet.Suback); !ok || sa.Reasons[0] != 1 {
			b.Fatalf("SUBACK %+v", p)
		}
		subs[i] = s
	}
	pub := dialBench(b, e, e.pki.identity("ms-acc-1/acc-1/dev-1"), "pub", true)
	payload := make([]byte, 1024)
	const window = 16
	credit := make(chan struct{}, window)
	for range window {
		credit <- struct{}{}
	}
	n := b.N
	errs := make(chan error, nsubs+1)
	var wg sync.WaitGroup
	for _, s := range subs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var ack []byte
			for got := 0; got < n; {
				p, err := s.next()
				if err != nil {
					errs <- err
					return
				}
				d, ok := p.(*packet.Publish)
				if !ok {
					continue
				}
				got++
				ack = packet.AppendAck(ack[:0], packet.V311, &packet.Ack{Type: packet.PUBACK, PacketID: d.PacketID})
				if err := s.write(ack); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Add(1)
	go func() { // the publisher's PUBACKs
		defer wg.Done()
		for got := 0; got < n; {
			p, err := pub.next()
			if err != nil {
				errs <- err
				return
			}
			if a, ok := p.(*packet.Ack); ok && a.Type == packet.PUBACK {
				got++
				credit <- struct{}{}
			}
		}
	}()
	b.ReportAllocs()
	b.SetBytes(int64(len(payload)))
	cpu0 := processCPU(b)
	b.ResetTimer()
	var buf []byte
	timeout := time.NewTimer(time.Minute)
	defer timeout.Stop()
	for i := range n {
		select {
		case <-credit:
		case err := <-errs:
			b.Fatal(err)
		case <-timeout.C:
			b.Fatalf("no PUBACK for a minute after %d publishes", i)
		}
		buf = packet.AppendPublish(buf[:0], packet.V311, &packet.Publish{Topic: "ms-acc-1/acc-1/dev-1/snapshots", QoS: 1, PacketID: uint16(i%60000 + 1), Payload: payload})
		if err := pub.write(buf); err != nil {
			b.Fatal(err)
		}
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case err := <-errs:
		b.Fatal(err)
	}
	b.StopTimer()
	b.ReportMetric(float64((processCPU(b)-cpu0).Microseconds())/float64(n), "cpu-µs/op")
}

// processCPU is the process's user and system CPU time so far.
func processCPU(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
