package est

import (
	"bytes"
	"context"
	"crypto"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
)

// maxResponseBody bounds what the client reads from a server: a chain of a
// few certificates is a few KiB.
const maxResponseBody = 1 << 20

// Client is the gateway side of EST. Each call runs on its own TLS
// connection, so that a CSR carries the channel binding of exactly the
// connection it is sent on.
type Client struct {
	// URL is the platform's base URL, e.g. https://platform.example:8443.
	URL string
	// Label selects the PKI: "" for transport, LabelE2E for e2e.
	Label string
	// TLS holds the trusted roots (the transport root) and the client
	// certificate: the onboarding certificate for the first transport
	// enrollment, the operational transport certificate afterwards.
	TLS *tls.Config
}

// StatusError is a refusal by the server.
type StatusError struct {
	Code   int
	Reason string // the server's one-line reason
}

func (e *StatusError) Error() string {
	return fmt.Sprintf("EST server answered %d %s: %s", e.Code, http.StatusText(e.Code), e.Reason)
}

// CACerts fetches the CA certificates (root first).
func (c *Client) CACerts(ctx context.Context) ([]*x509.Certificate, error) {
	return c.do(ctx, http.MethodGet, opCACerts, nil)
}

// Enroll sends a simpleenroll request for key and returns the issued leaf
// followed by its intermediates (root excluded): what a TLS client sends.
// template may be nil: the platform decides the identity.
//
// The enrollment answer holds only the issued certificate (RFC 7030
// §4.2.3), so Enroll then fetches cacerts, which names the CAs of the
// caller's path when it authenticates with its operational certificate: in
// the transport PKI with the certificate just issued, in the e2e PKI (whose
// leaves are no TLS client certificates) with c.TLS's.
func (c *Client) Enroll(ctx context.Context, key crypto.Signer, template *x509.CertificateRequest) ([]*x509.Certificate, error) {
	return c.enroll(ctx, opSimpleEnroll, key, template)
}

// Reenroll sends a simplereenroll request and returns the chain as Enroll
// does; key may be the current key or a new one.
func (c *Client) Reenroll(ctx context.Context, key crypto.Signer, template *x509.CertificateRequest) ([]*x509.Certificate, error) {
	return c.enroll(ctx, opSimpleReenroll, key, template)
}

func (c *Client) enroll(ctx context.Context, op string, key crypto.Signer, template *x509.CertificateRequest) ([]*x509.Certificate, error) {
	certs, err := c.do(ctx, http.MethodPost, op, &csrSpec{key, template})
	if err != nil {
		return nil, err
	}
	leaf := certs[0]
	if pub, ok := leaf.PublicKey.(interface{ Equal(crypto.PublicKey) bool }); !ok || !pub.Equal(key.Public()) {
		return nil, fmt.Errorf("EST %s: the server issued a certificate for another key", op)
	}
	cc := *c
	if c.Label == "" {
		conf := &tls.Config{}
		if c.TLS != nil {
			conf = c.TLS.Clone()
		}
		conf.GetClientCertificate = nil
		conf.Certificates = []tls.Certificate{{Certificate: [][]byte{leaf.Raw}, PrivateKey: key, Leaf: leaf}}
		cc.TLS = conf
	}
	cas, err := cc.CACerts(ctx)
	if err != nil {
		return nil, fmt.Errorf("EST %s: fetch the intermediates: %w", op, err)
	}
	chain, err := chainOf(leaf, append(certs[1:], cas...))
	if err != nil {
		return nil, fmt.Errorf("EST %s: %w", op, err)
	}
	return chain, nil
}

// chainOf returns leaf followed by its issuers from pool, up to and
// excluding the self-signed root, by signature.
func chainOf(leaf *x509.Certificate, pool []*x509.Certificate) ([]*x509.Certificate, error) {
	chain := []*x509.Certificate{leaf}
	for c := leaf; ; {
		var issuer *x509.Certificate
		for _, cand := range pool {
			if cand.IsCA && bytes.Equal(cand.RawSubject, c.RawIssuer) && c.CheckSignatureFrom(cand) == nil {
				issuer = cand
				break
			}
		}
		if issuer == nil {
			return nil, fmt.Errorf("cacerts does not hold the issuer %q of %q", c.Issuer.CommonName, c.Subject.CommonName)
		}
		if bytes.Equal(issuer.RawSubject, issuer.RawIssuer) && issuer.CheckSignatureFrom(issuer) == nil {
			return chain, nil // the root: trusted, not sent
		}
		if len(chain) > 4 {
			return nil, fmt.Errorf("the chain of %q is longer than fieldtrust's PKI allows", leaf.Subject.CommonName)
		}
		chain = append(chain, issuer)
		c = issuer
	}
}

type csrSpec struct {
	key      crypto.Signer
	template *x509.CertificateRequest
}

func (c *Client) do(ctx context.Context, method, op string, spec *csrSpec) ([]*x509.Certificate, error) {
	u, err := url.Parse(c.URL)
	if err != nil || u.Scheme != "https" || u.Host == "" {
		return nil, fmt.Errorf("EST URL %q: want https://host[:port]", c.URL)
	}
	u.Path = strings.TrimSuffix(u.Path, "/") + PathPrefix
	if c.Label != "" {
		u.Path += c.Label + "/"
	}
	u.Path += op
	host := u.Host
	if u.Port() == "" {
		host = net.JoinHostPort(u.Hostname(), "443")
	}
	conf := &tls.Config{}
	if c.TLS != nil {
		conf = c.TLS.Clone()
	}
	if conf.ServerName == "" {
		conf.ServerName = u.Hostname()
	}
	conf.NextProtos = nil // HTTP/1.1 on the one connection we dial
	d := tls.Dialer{Config: conf}
	nc, err := d.DialContext(ctx, "tcp", host)
	if err != nil {
		return nil, fmt.Errorf("EST %s: connect to %s: %w", op, host, err)
	}
	conn := nc.(*tls.Conn)
	defer conn.Close()

	var body io.Reader
	if spec != nil {
		cs := conn.ConnectionState()
		binding, err := ChannelBinding(&cs)
		if err != nil {
			return nil, fmt.Errorf("EST %s: %w", op, err)
		}
		tmpl := spec.template
		if tmpl == nil {
			tmpl = &x509.CertificateRequest{}
		}
		der, err := NewCSR(rand.Reader, spec.key, tmpl, binding)
		if err != nil {
			return nil, fmt.Errorf("EST %s: %w", op, err)
		}
		body = bytes.NewReader(base64Lines(der))
	}
	var once sync.Once
	tr := &http.Transport{
		DialTLSContext: func(context.Context, string, string) (net.Conn, error) {
			var c net.Conn
			once.Do(func() { c = conn })
			if c == nil {
				return nil, errors.New("EST client: connection already used")
			}
			return c, nil
		},
		DisableKeepAlives: true,
	}
	defer tr.CloseIdleConnections()
	req, err := http.NewRequestWithContext(ctx, method, u.String(), body)
	if err != nil {
		return nil, err
	}
	if spec != nil {
		req.Header.Set("Content-Type", ContentTypePKCS10)
		req.Header.Set("Content-Transfer-Encoding", "base64")
	}
	resp, err := (&http.Client{Transport: tr}).Do(req)
	if err != nil {
		return nil, fmt.Errorf("EST %s: %w", op, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, maxResponseBody))
	if err != nil {
		return nil, fmt.Errorf("EST %s: read response: %w", op, err)
	}
	if resp.StatusCode != http.StatusOK {
		reason := strings.TrimSpace(string(data))
		if len(reason) > 512 {
			reason = reason[:512]
		}
		return nil, &StatusError{Code: resp.StatusCode, Reason: reason}
	}
	certs, err := DecodeCerts(data)
	if err != nil {
		return nil, fmt.Errorf("EST %s: response: %w", op, err)
	}
	return certs, nil
}

// EncodeCSRBody encodes a DER CSR as an EST request body: base64 in lines
// of 64 characters.
func EncodeCSRBody(der []byte) []byte { return base64Lines(der) }
