package loadtest

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// IdleResult is the broker memory cost of idle mutual-TLS MQTT connections.
type IdleResult struct {
	Broker    string
	Conns     int // connections open when RSSAfter was read
	Failed    int
	RSSBefore int64 // after start and a small warm-up
	RSSAfter  int64 // with Conns idle connections open, after Settle
	Elapsed   time.Duration
}

// PerConn is the RSS growth per open connection in bytes.
func (r IdleResult) PerConn() float64 {
	if r.Conns == 0 {
		return 0
	}
	return float64(r.RSSAfter-r.RSSBefore) / float64(r.Conns)
}

// Idle opens n idle MQTT 3.1.1 connections over mutual TLS to t, each
// with its own client ID and with the certificate certs[i%len(certs)],
// using workers parallel dialers; measures t's RSS before and after; and
// closes them. Each connection sends CONNECT (clean session, keepalive
// 300 s, so no PINGREQ during the run), reads a successful CONNACK, then
// stays silent. progress, if set, is called every 1000 connections.
func Idle(ctx context.Context, b Target, p *PKI, certs []tls.Certificate, n, workers int, settle time.Duration, progress func(string)) (IdleResult, error) {
	res := IdleResult{Broker: b.Label()}
	// Warm-up: the first handshakes page in code and fill caches that
	// every later connection shares; they are not per-connection costs.
	for i := range 20 {
		c, err := dialIdle(ctx, b.Address(), p.ClientTLS(certs[i%len(certs)]), fmt.Sprintf("warm-%d", i))
		if err != nil {
			return res, fmt.Errorf("warm-up: %w", err)
		}
		_ = c.Close()
	}
	time.Sleep(settle)
	var err error
	if res.RSSBefore, err = b.RSS(); err != nil {
		return res, err
	}

	start := time.Now()
	conns := make([]net.Conn, n)
	var next, done, failed atomic.Int64
	var firstErr error
	var errOnce sync.Once
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for {
				i := int(next.Add(1) - 1)
				if i >= n || ctx.Err() != nil {
					return
				}
				c, err := dialIdle(ctx, b.Address(), p.ClientTLS(certs[i%len(certs)]), fmt.Sprintf("idle-%d", i))
				if err != nil {
					failed.Add(1)
					errOnce.Do(func() { firstErr = err })
					continue
				}
				conns[i] = c
				if d := done.Add(1); d%1000 == 0 && progress != nil {
					progress(fmt.Sprintf("%s: %d/%d idle connections (%.0f/s)", b.Label(), d, n, float64(d)/time.Since(start).Seconds()))
				}
			}
		})
	}
	wg.Wait()
	res.Elapsed = time.Since(start)
	res.Conns, res.Failed = int(done.Load()), int(failed.Load())
	defer func() {
		for _, c := range conns {
			if c != nil {
				_ = c.Close()
			}
		}
	}()
	time.Sleep(settle)
	if res.RSSAfter, err = b.RSS(); err != nil {
		return res, err
	}
	// Every connection must still be open: a broker that dropped some
	// would look cheaper than it is.
	alive := 0
	for _, c := range conns {
		if c == nil {
			continue
		}
		_ = c.SetReadDeadline(time.Now().Add(time.Millisecond))
		var one [1]byte
		if _, err := c.Read(one[:]); err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				alive++
			}
		}
	}
	if alive != res.Conns {
		return res, fmt.Errorf("%s: %d of %d idle connections were closed by the broker", b.Label(), res.Conns-alive, res.Conns)
	}
	if res.Failed > 0 {
		return res, fmt.Errorf("%s: %d connections failed, first: %w", b.Label(), res.Failed, firstErr)
	}
	return res, nil
}

// dialIdle performs the TLS handshake and the MQTT 3.1.1 CONNECT/CONNACK
// exchange by hand: a full MQTT client per idle connection would cost the
// harness far more memory than the connection costs the broker.
func dialIdle(ctx context.Context, addr string, cfg *tls.Config, clientID string) (net.Conn, error) {
	d := tls.Dialer{NetDialer: &net.Dialer{Timeout: 30 * time.Second}, Config: cfg}
	ctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	_ = c.SetDeadline(time.Now().Add(60 * time.Second))
	if _, err := c.Write(connectPacket(clientID, 300)); err != nil {
		_ = c.Close()
		return nil, err
	}
	var ack [4]byte
	if _, err := io.ReadFull(c, ack[:]); err != nil {
		_ = c.Close()
		return nil, fmt.Errorf("read CONNACK: %w", err)
	}
	if ack[0] != 0x20 || ack[1] != 2 || ack[3] != 0 {
		_ = c.Close()
		return nil, fmt.Errorf("CONNACK % x: refused", ack)
	}
	_ = c.SetDeadline(time.Time{})
	return c, nil
}

// connectPacket encodes an MQTT 3.1.1 CONNECT with a clean session and no
// username, password or will. clientID must be shorter than 100 bytes.
func connectPacket(clientID string, keepalive uint16) []byte {
	vh := []byte{0, 4, 'M', 'Q', 'T', 'T', 4, 0x02, byte(keepalive >> 8), byte(keepalive)}
	rem := len(vh) + 2 + len(clientID)
	pk := append([]byte{0x10, byte(rem)}, vh...)
	pk = append(pk, byte(len(clientID)>>8), byte(len(clientID)))
	return append(pk, clientID...)
}
