// Package mail sends the platform's notification emails over SMTP with
// github.com/wneessen/go-mail: STARTTLS or implicit TLS, authentication,
// and a stable Message-ID per notification, so that a message sent again
// after a crash is recognizable as the same one.
package mail

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/mail"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"

	gomail "github.com/wneessen/go-mail"
)

// URLEnv names the environment variable with the SMTP URL.
const URLEnv = "FIELDTRUST_SMTP_URL"

// Config is an SMTP server to send through.
type Config struct {
	Host     string
	Port     int
	Implicit bool // smtps: TLS from the first byte
	User     string
	Password string
	From     string
	// TLS, if set, replaces the default TLS configuration (the system
	// roots, ServerName Host): tests and private CAs.
	TLS *tls.Config
	// Dial, if set, connects instead of the default dialer (tests reach
	// a server named like a remote one on this machine).
	Dial func(ctx context.Context, network, addr string) (net.Conn, error)
}

// ParseURL reads smtp://[user:pass@]host:port?from=ADDR[&ca=FILE] (STARTTLS
// when the server offers it, and required unless the host is a loopback
// address) or smtps://... (implicit TLS). ca names a PEM file of roots to
// trust instead of the system's.
func ParseURL(s string) (Config, error) {
	bad := func(why string) (Config, error) {
		return Config{}, fmt.Errorf("SMTP URL: %s (use smtp://[user:password@]host:port?from=alerts@example.com, or smtps://...)", why)
	}
	u, err := url.Parse(s)
	if err != nil {
		return bad("not a URL")
	}
	c := Config{Host: u.Hostname(), Implicit: u.Scheme == "smtps"}
	if u.Scheme != "smtp" && u.Scheme != "smtps" {
		return bad("the scheme must be smtp or smtps")
	}
	if c.Host == "" {
		return bad("no host")
	}
	c.Port = 25
	if c.Implicit {
		c.Port = 465
	}
	if p := u.Port(); p != "" {
		if c.Port, err = strconv.Atoi(p); err != nil || c.Port < 1 || c.Port > 65535 {
			return bad("bad port")
		}
	}
	if u.User != nil {
		c.User = u.User.Username()
		c.Password, _ = u.User.Password()
	}
	q := u.Query()
	for k := range q {
		if k != "from" && k != "ca" {
			return bad("unknown parameter " + strconv.Quote(k))
		}
	}
	c.From = q.Get("from")
	if a, err := mail.ParseAddress(c.From); err != nil || a.Name != "" {
		return bad("from= must be a plain sender address")
	}
	if ca := q.Get("ca"); ca != "" {
		pem, err := os.ReadFile(ca)
		if err != nil {
			return Config{}, fmt.Errorf("SMTP URL: ca=%s: %w", ca, err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return Config{}, fmt.Errorf("SMTP URL: ca=%s: no PEM certificates", ca)
		}
		c.TLS = &tls.Config{RootCAs: pool, ServerName: c.Host, MinVersion: tls.VersionTLS12}
	}
	return c, nil
}

// String is the server without its password, for logs.
func (c Config) String() string {
	scheme := "smtp"
	if c.Implicit {
		scheme = "smtps"
	}
	user := ""
	if c.User != "" {
		user = c.User + ":***@"
	}
	return fmt.Sprintf("%s://%s%s from %s", scheme, user, net.JoinHostPort(c.Host, strconv.Itoa(c.Port)), c.From)
}

func (c Config) loopback() bool {
	if c.Host == "localhost" {
		return true
	}
	ip := net.ParseIP(c.Host)
	return ip != nil && ip.IsLoopback()
}

// Message is one email.
type Message struct {
	ID      string // becomes the Message-ID <ID@fieldtrust>
	To      []string
	Subject string
	Body    string
	Headers map[string]string
}

// PermanentError is a refusal a retry cannot fix (a 5xx answer).
type PermanentError struct{ Err error }

func (e *PermanentError) Error() string { return e.Err.Error() }
func (e *PermanentError) Unwrap() error { return e.Err }

// Permanent marks the error as one a retry cannot fix.
func (e *PermanentError) Permanent() bool { return true }

// Send delivers m, one connection per message.
func (c Config) Send(ctx context.Context, m Message) error {
	msg := gomail.NewMsg()
	if err := msg.From(c.From); err != nil {
		return &PermanentError{fmt.Errorf("mail from %s: %w", c.From, err)}
	}
	if err := msg.To(m.To...); err != nil {
		return &PermanentError{fmt.Errorf("mail to %v: %w", m.To, err)}
	}
	msg.Subject(m.Subject)
	msg.SetMessageIDWithValue(m.ID + "@fieldtrust")
	msg.SetDate()
	msg.SetBulk()
	for k, v := range m.Headers {
		msg.SetGenHeader(gomail.Header(k), v)
	}
	msg.SetBodyString(gomail.TypeTextPlain, m.Body)

	opts := []gomail.Option{gomail.WithPort(c.Port), gomail.WithTimeout(30 * time.Second), gomail.WithHELO("fieldtrust")}
	tc := c.TLS
	if tc == nil {
		tc = &tls.Config{ServerName: c.Host, MinVersion: tls.VersionTLS12}
	}
	opts = append(opts, gomail.WithTLSConfig(tc))
	switch {
	case c.Implicit:
		opts = append(opts, gomail.WithSSL())
	case c.loopback():
		// A mail catcher on this machine: STARTTLS if offered, else plain.
		opts = append(opts, gomail.WithTLSPolicy(gomail.TLSOpportunistic))
	default:
		opts = append(opts, gomail.WithTLSPolicy(gomail.TLSMandatory))
	}
	if c.Dial != nil {
		opts = append(opts, gomail.WithDialContextFunc(c.Dial))
	}
	if c.User != "" {
		opts = append(opts, gomail.WithSMTPAuth(gomail.SMTPAuthAutoDiscover), gomail.WithUsername(c.User), gomail.WithPassword(c.Password))
	}
	client, err := gomail.NewClient(c.Host, opts...)
	if err != nil {
		return &PermanentError{fmt.Errorf("smtp %s: %w", c, err)}
	}
	if err := client.DialAndSendWithContext(ctx, msg); err != nil {
		text := err.Error()
		if c.Password != "" {
			text = strings.ReplaceAll(text, c.Password, "***")
		}
		// The server refused the recipients or the message itself (5xx):
		// sending again would be refused again.
		var se *gomail.SendError
		if errors.As(err, &se) && !se.IsTemp() && (se.Reason == gomail.ErrSMTPRcptTo || se.Reason == gomail.ErrSMTPData || se.Reason == gomail.ErrSMTPDataClose) {
			return &PermanentError{fmt.Errorf("smtp %s: %s", c, text)}
		}
		return fmt.Errorf("smtp %s: %s", c, text)
	}
	return nil
}
