// Package mailcatcher is a small SMTP server (github.com/emersion/go-smtp)
// that keeps what it receives: the demo's local mail catcher, which writes
// each message to a directory as an .eml file, and the real SMTP peer of
// the notification tests (STARTTLS, implicit TLS and AUTH PLAIN on
// request). It relays nothing.
package mailcatcher

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/big"
	"net"
	"net/mail"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
)

// Config configures a catcher.
type Config struct {
	Addr string // listen address, e.g. 127.0.0.1:0
	// TLS, if set, is offered with STARTTLS (or, with Implicit, from the
	// first byte).
	TLS      *tls.Config
	Implicit bool
	// User and Password, if set, are required (AUTH PLAIN, over TLS).
	User, Password string
	// Dir, if set, receives each message as NNNN-<message-id>.eml.
	Dir    string
	Logger *slog.Logger
}

// Message is one received message.
type Message struct {
	From     string
	To       []string
	Raw      []byte
	Header   mail.Header
	Body     string
	At       time.Time
	TLS      bool
	AuthUser string
}

// Catcher is a running SMTP server.
type Catcher struct {
	cfg  Config
	srv  *smtp.Server
	ln   net.Listener
	mu   sync.Mutex
	msgs []Message
	// changed is closed and replaced on every message.
	changed chan struct{}
	// Refuse, if set, answers every DATA with this error (tests of
	// retries and dead letters).
	refuse error
}

// Start listens on cfg.Addr and serves until Close.
func Start(cfg Config) (*Catcher, error) {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	c := &Catcher{cfg: cfg, changed: make(chan struct{})}
	s := smtp.NewServer(c)
	s.Domain = "fieldtrust-mailcatcher"
	s.TLSConfig = cfg.TLS
	s.MaxMessageBytes = 4 << 20
	s.MaxRecipients = 100
	s.ReadTimeout, s.WriteTimeout = time.Minute, time.Minute
	var ln net.Listener
	var err error
	if cfg.Implicit {
		ln, err = tls.Listen("tcp", cfg.Addr, cfg.TLS)
	} else {
		ln, err = net.Listen("tcp", cfg.Addr)
	}
	if err != nil {
		return nil, fmt.Errorf("mail catcher: listen on %s: %w", cfg.Addr, err)
	}
	if cfg.Dir != "" {
		if err := os.MkdirAll(cfg.Dir, 0o700); err != nil {
			ln.Close()
			return nil, fmt.Errorf("mail catcher: %w", err)
		}
	}
	c.srv, c.ln = s, ln
	go s.Serve(ln)
	return c, nil
}

// Addr is the listening address.
func (c *Catcher) Addr() string { return c.ln.Addr().String() }

// Close stops the server.
func (c *Catcher) Close() error { return c.srv.Close() }

// SetRefuse makes the server refuse (err != nil) or accept messages.
func (c *Catcher) SetRefuse(err error) {
	c.mu.Lock()
	c.refuse = err
	c.mu.Unlock()
}

// Messages returns what was received so far.
func (c *Catcher) Messages() []Message {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]Message(nil), c.msgs...)
}

// Wait waits until at least n messages arrived or ctx ends.
func (c *Catcher) Wait(ctx context.Context, n int) ([]Message, error) {
	for {
		c.mu.Lock()
		msgs, ch := append([]Message(nil), c.msgs...), c.changed
		c.mu.Unlock()
		if len(msgs) >= n {
			return msgs, nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return msgs, fmt.Errorf("mail catcher: %d of %d messages: %w", len(msgs), n, ctx.Err())
		}
	}
}

// NewSession implements smtp.Backend.
func (c *Catcher) NewSession(conn *smtp.Conn) (smtp.Session, error) {
	_, isTLS := conn.TLSConnectionState()
	return &session{c: c, conn: conn, tls: isTLS}, nil
}

type session struct {
	c    *Catcher
	conn *smtp.Conn
	tls  bool
	user string
	from string
	to   []string
}

var errAuthRequired = &smtp.SMTPError{Code: 530, EnhancedCode: smtp.EnhancedCode{5, 7, 0}, Message: "authentication required"}

func (s *session) AuthMechanisms() []string {
	if s.c.cfg.User == "" {
		return nil
	}
	return []string{sasl.Plain}
}

func (s *session) Auth(mech string) (sasl.Server, error) {
	return sasl.NewPlainServer(func(identity, user, pass string) error {
		if user != s.c.cfg.User || pass != s.c.cfg.Password {
			return errors.New("invalid credentials")
		}
		s.user = user
		return nil
	}), nil
}

func (s *session) Mail(from string, _ *smtp.MailOptions) error {
	if s.c.cfg.User != "" && s.user == "" {
		return errAuthRequired
	}
	s.from = from
	return nil
}

func (s *session) Rcpt(to string, _ *smtp.RcptOptions) error {
	s.to = append(s.to, to)
	return nil
}

func (s *session) Data(r io.Reader) error {
	raw, err := io.ReadAll(r)
	if err != nil {
		return err
	}
	s.c.mu.Lock()
	refuse := s.c.refuse
	s.c.mu.Unlock()
	if refuse != nil {
		return refuse
	}
	m := Message{From: s.from, To: s.to, Raw: raw, At: time.Now(), AuthUser: s.user}
	_, m.TLS = s.conn.TLSConnectionState()
	if pm, err := mail.ReadMessage(bytes.NewReader(raw)); err == nil {
		m.Header = pm.Header
		b, _ := io.ReadAll(pm.Body)
		m.Body = string(b)
	}
	s.c.mu.Lock()
	s.c.msgs = append(s.c.msgs, m)
	n := len(s.c.msgs)
	close(s.c.changed)
	s.c.changed = make(chan struct{})
	s.c.mu.Unlock()
	if s.c.cfg.Dir != "" {
		id := strings.Trim(m.Header.Get("Message-Id"), "<>")
		id = strings.Map(func(r rune) rune {
			if r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '.' {
				return r
			}
			return '_'
		}, id)
		file := filepath.Join(s.c.cfg.Dir, fmt.Sprintf("%04d-%s.eml", n, id))
		if err := os.WriteFile(file, raw, 0o600); err != nil {
			s.c.cfg.Logger.Warn("mail catcher: cannot write the message", "file", file, "err", err)
		} else {
			s.c.cfg.Logger.Info("mail caught", "to", strings.Join(m.To, ","), "subject", m.Header.Get("Subject"), "file", file)
		}
	}
	return nil
}

func (s *session) Reset()        { s.from, s.to = "", nil }
func (s *session) Logout() error { return nil }

// SelfSigned returns a server TLS configuration with a fresh self-signed
// certificate for hosts (names or IP addresses), and the pool a client
// trusts it with.
func SelfSigned(hosts ...string) (*tls.Config, *x509.CertPool, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: hosts[0]},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true, IsCA: true,
	}
	for _, h := range hosts {
		if ip := net.ParseIP(h); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else {
			tmpl.DNSNames = append(tmpl.DNSNames, h)
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, nil, err
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, nil, err
	}
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	return &tls.Config{Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key, Leaf: cert}}, MinVersion: tls.VersionTLS12}, pool, nil
}
