// Package tlspolicy is the one TLS policy of every fieldtrust listener and
// client: TLS 1.2 and 1.3 only, and on 1.2 only ECDHE key exchange with
// AEAD ciphers (AES-GCM, ChaCha20-Poly1305). Go's TLS 1.3 suites are all
// AEAD and not configurable, so the list below only constrains 1.2.
package tlspolicy

import (
	"crypto/tls"
	"crypto/x509"
)

// CipherSuites are the TLS 1.2 suites allowed: ECDHE with an AEAD only.
var CipherSuites = []uint16{
	tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
	tls.TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
	tls.TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
	tls.TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
	tls.TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
	tls.TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
}

// Server returns a server configuration under the policy. getCert supplies
// the (renewable) server certificate; clientCAs and clientAuth decide
// whether and against what client certificates are verified; verify, if
// non-nil, runs after the chain verified (identity and revocation checks).
func Server(getCert func(*tls.ClientHelloInfo) (*tls.Certificate, error), clientCAs *x509.CertPool, clientAuth tls.ClientAuthType, verify func(tls.ConnectionState) error) *tls.Config {
	return &tls.Config{
		MinVersion:       tls.VersionTLS12,
		CipherSuites:     CipherSuites,
		GetCertificate:   getCert,
		ClientCAs:        clientCAs,
		ClientAuth:       clientAuth,
		VerifyConnection: verify,
	}
}

// Client returns a client configuration under the policy that trusts roots
// and presents cert.
func Client(roots *x509.CertPool, cert *tls.Certificate) *tls.Config {
	c := &tls.Config{
		MinVersion:   tls.VersionTLS12,
		CipherSuites: CipherSuites,
		RootCAs:      roots,
	}
	if cert != nil {
		c.Certificates = []tls.Certificate{*cert}
	}
	return c
}
