package loadtest

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// IdleResult is what idle mutual-TLS MQTT connections cost a broker.
type IdleResult struct {
	Broker      string
	Conns       int // connections open when RSSAfter was read
	Failed      int
	RSSBefore   int64 // after start and a small warm-up
	RSSAfter    int64 // with Conns idle connections open, after Settle
	Elapsed     time.Duration
	ConnectRate float64 // connections (TLS + CONNECT/CONNACK) per second
	// CPUIdle is the broker's CPU time per second of wall time while the
	// connections sat idle for Hold, pinging every KeepAlive.
	CPUIdle   float64
	Pings     int64
	PingFails int64
	LeafOnly  bool
}

// PerConn is the RSS growth per open connection in bytes.
func (r IdleResult) PerConn() float64 {
	if r.Conns == 0 {
		return 0
	}
	return float64(r.RSSAfter-r.RSSBefore) / float64(r.Conns)
}

// IdleOptions shape an idle run.
type IdleOptions struct {
	Conns, Workers int
	// LeafOnly clients present their leaf without intermediates (the
	// broker must know the account CAs: brokerd -intermediates).
	LeafOnly bool
	// SourceIPs > 0 spreads connections over 127.0.0.2 … 127.0.0.(1+n):
	// each source address has about 28,000 ephemeral ports towards one
	// listener.
	SourceIPs int
	// KeepAlive is what the clients ask for and how often they ping while
	// idle; Hold is how long they stay idle after Settle (CPU is measured
	// over it; 0: no hold).
	KeepAlive    time.Duration
	Settle, Hold time.Duration
	Progress     func(string)
	// Inspect, if set, runs once RSSBefore is read (stage "before") and
	// once RSSAfter is (stage "after", every connection open).
	Inspect func(stage string) error
}

// Idle opens o.Conns idle MQTT 3.1.1 connections over mutual TLS to b, each
// with its own client ID and certificate certs[i%len(certs)], with
// o.Workers parallel dialers; measures b's RSS before and after, and its
// CPU while the connections idle with keepalive pings; then closes them.
func Idle(ctx context.Context, b Target, p *PKI, certs []tls.Certificate, o IdleOptions) (IdleResult, error) {
	res := IdleResult{Broker: b.Label(), LeafOnly: o.LeafOnly}
	if o.KeepAlive <= 0 {
		o.KeepAlive = 60 * time.Second
	}
	cfgs := make([]*tls.Config, len(certs))
	for i, c := range certs {
		if o.LeafOnly {
			c = LeafOnly(c)
		}
		cfgs[i] = p.ClientTLS(c)
	}
	dial := func(i int, id string) (net.Conn, error) {
		var src net.IP
		if o.SourceIPs > 0 {
			src = net.IPv4(127, 0, 0, byte(2+i%o.SourceIPs))
		}
		return dialIdle(ctx, b.Address(), cfgs[i%len(cfgs)], id, src, uint16(o.KeepAlive/time.Second))
	}
	// Warm-up: the first handshakes page in code and fill caches that
	// every later connection shares; they are not per-connection costs.
	for i := range 20 {
		c, err := dial(i, fmt.Sprintf("warm-%d", i))
		if err != nil {
			return res, fmt.Errorf("warm-up: %w", err)
		}
		_ = c.Close()
	}
	time.Sleep(o.Settle)
	var err error
	if res.RSSBefore, err = b.RSS(); err != nil {
		return res, err
	}
	if o.Inspect != nil {
		if err := o.Inspect("before"); err != nil {
			return res, err
		}
	}

	start := time.Now()
	conns := make([]net.Conn, o.Conns)
	// Every connection pings from the moment it is up: connecting all of
	// them takes longer than a keepalive.
	pctx, stopPings := context.WithCancel(ctx)
	defer stopPings()
	var pings, pingFails atomic.Int64
	var pingers sync.WaitGroup
	defer pingers.Wait()
	var next, done, failed atomic.Int64
	var firstErr error
	var errOnce sync.Once
	var wg sync.WaitGroup
	for range o.Workers {
		wg.Go(func() {
			for {
				i := int(next.Add(1) - 1)
				if i >= o.Conns || ctx.Err() != nil {
					return
				}
				c, err := dial(i, fmt.Sprintf("idle-%d", i))
				if err != nil {
					failed.Add(1)
					errOnce.Do(func() { firstErr = err })
					continue
				}
				conns[i] = c
				pingers.Go(func() { keepAlive(pctx, c, o.KeepAlive/2, &pings, &pingFails) })
				if d := done.Add(1); d%5000 == 0 && o.Progress != nil {
					o.Progress(fmt.Sprintf("%s: %d/%d idle connections (%.0f/s)", b.Label(), d, o.Conns, float64(d)/time.Since(start).Seconds()))
				}
			}
		})
	}
	wg.Wait()
	res.Elapsed = time.Since(start)
	res.Conns, res.Failed = int(done.Load()), int(failed.Load())
	res.ConnectRate = float64(res.Conns) / res.Elapsed.Seconds()
	defer func() {
		stopPings()
		for _, c := range conns {
			if c != nil {
				_ = c.Close()
			}
		}
	}()
	if res.Failed > 0 {
		return res, fmt.Errorf("%s: %d connections failed, first: %w", b.Label(), res.Failed, firstErr)
	}
	time.Sleep(o.Settle)
	if res.RSSAfter, err = b.RSS(); err != nil {
		return res, err
	}
	if o.Inspect != nil {
		if err := o.Inspect("after"); err != nil {
			return res, err
		}
	}
	if o.Hold > 0 {
		cpu0, err := cpuTime(b)
		if err != nil {
			return res, err
		}
		t0 := time.Now()
		select {
		case <-time.After(o.Hold):
		case <-ctx.Done():
			return res, ctx.Err()
		}
		cpu1, err := cpuTime(b)
		if err != nil {
			return res, err
		}
		res.CPUIdle = (cpu1 - cpu0).Seconds() / time.Since(t0).Seconds()
	}
	// Every connection must still be open and answering its pings: a
	// broker that dropped some would look cheaper than it is.
	res.Pings, res.PingFails = pings.Load(), pingFails.Load()
	if res.PingFails > 0 {
		return res, fmt.Errorf("%s: %d of %d keepalive pings failed (connections closed by the broker?)", b.Label(), res.PingFails, res.Pings)
	}
	return res, nil
}

// keepAlive pings c every interval until ctx ends, counting pings and
// failures. It is the connection's only reader.
func keepAlive(ctx context.Context, c net.Conn, interval time.Duration, pings, fails *atomic.Int64) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
		var resp [2]byte
		_, err := c.Write([]byte{0xc0, 0})
		if err == nil {
			_, err = io.ReadFull(c, resp[:])
		}
		if ctx.Err() != nil {
			return
		}
		pings.Add(1)
		if err != nil || resp != [2]byte{0xd0, 0} {
			fails.Add(1)
			return
		}
	}
}

// cpuTime returns the broker process's user+system CPU time.
func cpuTime(b Target) (time.Duration, error) {
	pb, ok := b.(interface{ PID() int })
	if !ok {
		return 0, errors.New("no process to measure")
	}
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pb.PID()))
	if err != nil {
		return 0, err
	}
	// Fields after the parenthesised command: state is field 3; utime and
	// stime are fields 14 and 15, in clock ticks (100 per second on Linux).
	s := string(data)
	rest := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	if len(rest) < 13 {
		return 0, fmt.Errorf("short /proc stat: %q", s)
	}
	ut, err1 := strconv.ParseInt(rest[11], 10, 64)
	st, err2 := strconv.ParseInt(rest[12], 10, 64)
	if err := errors.Join(err1, err2); err != nil {
		return 0, err
	}
	return time.Duration(ut+st) * time.Second / 100, nil
}

// FileLimit returns the process's open-file limit (soft, hard).
func FileLimit() (uint64, uint64) {
	var l syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &l); err != nil {
		return 0, 0
	}
	return l.Cur, l.Max
}

// dialIdle performs the TLS handshake and the MQTT 3.1.1 CONNECT/CONNACK
// exchange by hand: a full MQTT client per idle connection would cost the
// harness far more memory than the connection costs the broker.
func dialIdle(ctx context.Context, addr string, cfg *tls.Config, clientID string, src net.IP, keepAlive uint16) (net.Conn, error) {
	nd := &net.Dialer{Timeout: 30 * time.Second}
	if src != nil {
		nd.LocalAddr = &net.TCPAddr{IP: src}
	}
	d := tls.Dialer{NetDialer: nd, Config: cfg}
	ctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	_ = c.SetDeadline(time.Now().Add(60 * time.Second))
	if _, err := c.Write(connectPacket(clientID, keepAlive)); err != nil {
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
