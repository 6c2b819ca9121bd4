package mail

import (
	"context"
	"crypto/tls"
	"errors"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/fieldtrust/fieldtrust/internal/mailcatcher"
)

func catcher(t *testing.T, cfg mailcatcher.Config) *mailcatcher.Catcher {
	t.Helper()
	cfg.Addr = "127.0.0.1:0"
	c, err := mailcatcher.Start(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return c
}

// TestSendSTARTTLSAuth: a message goes over STARTTLS with AUTH PLAIN to a
// real SMTP server, with its stable Message-ID, subject and body.
func TestSendSTARTTLSAuth(t *testing.T) {
	srvTLS, roots, err := mailcatcher.SelfSigned("127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	c := catcher(t, mailcatcher.Config{TLS: srvTLS, User: "alerts", Password: "s3cret pass"})
	cfg, err := ParseURL("smtp://alerts:s3cret%20pass@" + c.Addr() + "?from=alerts@fieldtrust.example")
	if err != nil {
		t.Fatal(err)
	}
	cfg.TLS = &tls.Config{RootCAs: roots, ServerName: "127.0.0.1"}
	if strings.Contains(cfg.String(), "s3cret") {
		t.Fatalf("String() shows the password: %s", cfg)
	}
	err = cfg.Send(ctx(t), Message{ID: "m-42", To: []string{"service@acme.example", "lead@acme.example"}, Subject: "[fieldtrust] critical: overheat", Body: "too hot\n"})
	if err != nil {
		t.Fatal(err)
	}
	msgs, err := c.Wait(ctx(t), 1)
	if err != nil {
		t.Fatal(err)
	}
	m := msgs[0]
	if !m.TLS || m.AuthUser != "alerts" || m.From != "alerts@fieldtrust.example" || len(m.To) != 2 ||
		m.Header.Get("Message-Id") != "<m-42@fieldtrust>" || m.Header.Get("Subject") != "[fieldtrust] critical: overheat" || !strings.Contains(m.Body, "too hot") {
		t.Fatalf("received %+v", m)
	}
}

// TestSendImplicitTLS: smtps:// speaks TLS from the first byte.
func TestSendImplicitTLS(t *testing.T) {
	srvTLS, roots, err := mailcatcher.SelfSigned("127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	c := catcher(t, mailcatcher.Config{TLS: srvTLS, Implicit: true})
	cfg, err := ParseURL("smtps://" + c.Addr() + "?from=a@fieldtrust.example")
	if err != nil {
		t.Fatal(err)
	}
	cfg.TLS = &tls.Config{RootCAs: roots, ServerName: "127.0.0.1"}
	if err := cfg.Send(ctx(t), Message{ID: "m-1", To: []string{"b@x.example"}, Subject: "s", Body: "b"}); err != nil {
		t.Fatal(err)
	}
	if msgs, err := c.Wait(ctx(t), 1); err != nil || !msgs[0].TLS {
		t.Fatalf("%+v %v", msgs, err)
	}
}

// TestPlainOnlyToLoopback: without STARTTLS, mail goes in plain text only
// to a loopback host; a remote host (here dialed on this machine under a
// remote name) is refused, and so is a server whose certificate does not
// verify.
func TestPlainOnlyToLoopback(t *testing.T) {
	c := catcher(t, mailcatcher.Config{})
	local, err := ParseURL("smtp://" + c.Addr() + "?from=a@fieldtrust.example")
	if err != nil {
		t.Fatal(err)
	}
	if err := local.Send(ctx(t), Message{ID: "m-1", To: []string{"b@x.example"}, Subject: "s", Body: "b"}); err != nil {
		t.Fatalf("plain to loopback: %v", err)
	}
	_, port, _ := net.SplitHostPort(c.Addr())
	remote, err := ParseURL("smtp://mail.example:" + port + "?from=a@fieldtrust.example")
	if err != nil {
		t.Fatal(err)
	}
	remote.Dial = func(ctx context.Context, network, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, network, c.Addr())
	}
	if err := remote.Send(ctx(t), Message{ID: "m-2", To: []string{"b@x.example"}, Subject: "s", Body: "b"}); err == nil {
		t.Fatal("plain text to a remote host was sent")
	}
	srvTLS, _, _ := mailcatcher.SelfSigned("127.0.0.1")
	c2 := catcher(t, mailcatcher.Config{TLS: srvTLS})
	untrusted, _ := ParseURL("smtp://" + c2.Addr() + "?from=a@fieldtrust.example")
	if err := untrusted.Send(ctx(t), Message{ID: "m-3", To: []string{"b@x.example"}, Subject: "s", Body: "b"}); err == nil {
		t.Fatal("sent over STARTTLS to a server whose certificate does not verify")
	}
	if n := len(c.Messages()) + len(c2.Messages()); n != 1 {
		t.Fatalf("%d messages arrived, want only the loopback one", n)
	}
}

// TestSendRefused: a 5xx refusal of the message is permanent, a 4xx one
// and an unreachable server are not.
func TestSendRefused(t *testing.T) {
	c := catcher(t, mailcatcher.Config{})
	cfg, _ := ParseURL("smtp://" + c.Addr() + "?from=a@fieldtrust.example")
	var pe *PermanentError
	c.SetRefuse(&smtp.SMTPError{Code: 554, EnhancedCode: smtp.EnhancedCode{5, 6, 0}, Message: "content refused"})
	if err := cfg.Send(ctx(t), Message{ID: "m", To: []string{"b@x.example"}, Subject: "s", Body: "b"}); !errors.As(err, &pe) {
		t.Errorf("554: %v, want permanent", err)
	}
	c.SetRefuse(&smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 3, 0}, Message: "try later"})
	if err := cfg.Send(ctx(t), Message{ID: "m", To: []string{"b@x.example"}, Subject: "s", Body: "b"}); err == nil || errors.As(err, &pe) {
		t.Errorf("451: %v, want a temporary error", err)
	}
	c.Close()
	if err := cfg.Send(ctx(t), Message{ID: "m", To: []string{"b@x.example"}, Subject: "s", Body: "b"}); err == nil || errors.As(err, &pe) {
		t.Errorf("server gone: %v, want a temporary error", err)
	}
}

// TestParseURL: the URL forms and their refusals.
func TestParseURL(t *testing.T) {
	for _, bad := range []string{"", "http://x?from=a@b.example", "smtp://?from=a@b.example", "smtp://h:99999?from=a@b.example", "smtp://h:25", "smtp://h:25?from=Bob%20<a@b.example>", "smtp://h?from=a@b.example&x=1"} {
		if _, err := ParseURL(bad); err == nil {
			t.Errorf("ParseURL(%q) accepted", bad)
		}
	}
	c, err := ParseURL("smtps://u:p@mail.example?from=a@b.example")
	if err != nil || c.Port != 465 || !c.Implicit || c.User != "u" || c.Password != "p" {
		t.Fatalf("%+v %v", c, err)
	}
}

// FuzzParseURL: no SMTP URL makes ParseURL panic, and an accepted one has
// a host, a port in range and a plain sender address.
func FuzzParseURL(f *testing.F) {
	for _, s := range []string{"smtp://u:p@mail.example:587?from=a@b.example", "smtps://h?from=a@b.example", "smtp://[::1]:25?from=a@b.example", "smtp://h:0?from=a", "smtp://%zz"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		c, err := ParseURL(s)
		if err != nil {
			return
		}
		if c.Host == "" || c.Port < 1 || c.Port > 65535 || c.From == "" {
			t.Fatalf("accepted %q as %+v", s, c)
		}
		if c.Password != "" && strings.Contains(c.String(), ":"+c.Password+"@") {
			t.Fatalf("String() of %q shows the password", s)
		}
	})
}
