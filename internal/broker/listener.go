package broker

import (
	"context"
	"crypto/tls"
	"errors"
	"net"
	"sync"
	"time"
)

// tlsListener accepts TCP connections and completes the TLS handshake
// itself, under a deadline, before the connection is served. The same
// deadline also covers reading CONNECT; the keepalive deadline replaces
// it once CONNECT is accepted. A peer that opens a socket and stays silent
// is gone after the timeout.
type tlsListener struct {
	ln      net.Listener
	cfg     *tls.Config
	timeout time.Duration
	b       *Broker

	closeOnce sync.Once
}

func newTLSListener(addr string, cfg *tls.Config, timeout time.Duration, b *Broker) (*tlsListener, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	return &tlsListener{ln: ln, cfg: cfg, timeout: timeout, b: b}, nil
}

func (l *tlsListener) Addr() string { return l.ln.Addr().String() }

// serve accepts until close.
func (l *tlsListener) serve() error {
	for {
		nc, err := l.ln.Accept()
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				time.Sleep(10 * time.Millisecond) // out of descriptors: back off, do not spin
				continue
			}
			return err
		}
		if l.b.closing.Load() {
			_ = nc.Close()
			continue
		}
		l.b.connWG.Add(1)
		go l.handle(nc)
	}
}

func (l *tlsListener) handle(nc net.Conn) {
	defer l.b.connWG.Done()
	// With a parker, the TLS layer reads through a pollConn, so the reader
	// can probe without blocking and park (park.go).
	var pc *pollConn
	if tcp, ok := nc.(*net.TCPConn); ok && l.b.parker != nil {
		var err error
		if pc, err = newPollConn(tcp); err != nil {
			l.b.log.Warn("broker: connection cannot park; its reader blocks", "remote", nc.RemoteAddr().String(), "error", err)
		} else {
			nc = pc
		}
	}
	tc := tls.Server(nc, l.cfg)
	_ = nc.SetDeadline(time.Now().Add(l.timeout))
	ctx, cancel := context.WithTimeout(l.b.timersCtx, l.timeout)
	err := tc.HandshakeContext(ctx)
	cancel()
	if err != nil {
		l.b.metrics.refusals.WithLabelValues("connect", "tls_handshake").Inc()
		l.b.log.Warn("mqtt refused", "stage", "connect", "reason", "tls_handshake", "remote", nc.RemoteAddr().String(), "error", err)
		_ = tc.Close()
		return
	}
	_ = nc.SetWriteDeadline(time.Time{})
	c := newConn(l.b, tc, pc)
	if !c.accept() {
		return
	}
	// The connection lives on a fresh goroutine: the handshake and CONNECT
	// (ECDSA, chain building, identification) grew this one's stack to
	// tens of KiB, which an idle connection would otherwise keep. serve
	// calls connWG.Done when the connection ends (it may park and resume
	// on other goroutines in between).
	l.b.connWG.Add(1)
	go c.serve()
}

func (l *tlsListener) close() {
	l.closeOnce.Do(func() { _ = l.ln.Close() })
}
