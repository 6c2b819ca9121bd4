package broker

import (
	"context"
	"crypto/tls"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/mochi-mqtt/server/v2/listeners"
)

// tlsListener is a mochi listener that completes the TLS handshake itself,
// under a deadline, before handing the connection to mochi. mochi's own TCP
// listener lets the handshake happen lazily on the first read with no
// deadline, so a peer that opens a socket and stays silent would hold a
// goroutine forever. The same deadline also covers reading CONNECT; mochi
// replaces it with the keepalive deadline once CONNECT is accepted.
type tlsListener struct {
	id      string
	addr    string
	cfg     *tls.Config
	timeout time.Duration
	log     *slog.Logger
	metrics *metrics
	// ended, if set, is called once mochi is done with a connection
	// (attachClient returned, cleanup included). Set before Serve.
	ended func(net.Conn)

	ln         net.Listener // set by Init
	end        atomic.Bool
	handshakes sync.WaitGroup
	closeOnce  sync.Once
}

var _ listeners.Listener = (*tlsListener)(nil)

func newTLSListener(id, addr string, cfg *tls.Config, timeout time.Duration, log *slog.Logger, m *metrics) *tlsListener {
	return &tlsListener{id: id, addr: addr, cfg: cfg, timeout: timeout, log: log, metrics: m}
}

func (l *tlsListener) ID() string       { return l.id }
func (l *tlsListener) Protocol() string { return "mqtts" }

func (l *tlsListener) Address() string {
	if l.ln != nil {
		return l.ln.Addr().String()
	}
	return l.addr
}

// Init binds the address. mochi calls it from AddListener.
func (l *tlsListener) Init(*slog.Logger) error {
	ln, err := net.Listen("tcp", l.addr)
	if err != nil {
		return err
	}
	l.ln = ln
	return nil
}

// Serve accepts until Close.
func (l *tlsListener) Serve(establish listeners.EstablishFn) {
	for {
		conn, err := l.ln.Accept()
		if err != nil {
			return
		}
		if l.end.Load() {
			_ = conn.Close()
			return
		}
		l.handshakes.Add(1)
		go l.handle(conn, establish)
	}
}

func (l *tlsListener) handle(conn net.Conn, establish listeners.EstablishFn) {
	tc := tls.Server(conn, l.cfg)
	_ = conn.SetDeadline(time.Now().Add(l.timeout))
	ctx, cancel := context.WithTimeout(context.Background(), l.timeout)
	err := tc.HandshakeContext(ctx)
	cancel()
	if err != nil || l.end.Load() {
		if err != nil {
			l.metrics.refusals.WithLabelValues("connect", "tls_handshake").Inc()
			l.log.Warn("mqtt refused", "stage", "connect", "reason", "tls_handshake", "remote", conn.RemoteAddr().String(), "error", err)
		}
		_ = tc.Close()
		l.handshakes.Done()
		return
	}
	l.handshakes.Done()
	if err := establish(l.id, tc); err != nil {
		l.log.Debug("mqtt connection ended", "remote", conn.RemoteAddr().String(), "error", err)
	}
	if l.ended != nil {
		l.ended(tc)
	}
}

// Close stops accepting, lets pending handshakes give up, then closes the
// listener's clients.
func (l *tlsListener) Close(closeClients listeners.CloseFn) {
	l.closeOnce.Do(func() {
		l.end.Store(true)
		if l.ln != nil {
			_ = l.ln.Close()
		}
		l.handshakes.Wait()
		closeClients(l.id)
	})
}
