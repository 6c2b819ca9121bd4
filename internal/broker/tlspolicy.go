package broker

import (
	"crypto/tls"
	"errors"
)

// tls12Suites are the only TLS 1.2 suites the broker negotiates: ECDHE for
// forward secrecy, AEAD only (AES-GCM, ChaCha20-Poly1305). TLS 1.3 suites
// are not configurable in crypto/tls and are all AEAD.
var tls12Suites = []uint16{
	tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
	tls.TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
	tls.TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
	tls.TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
	tls.TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
	tls.TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
}

// serverTLSConfig clones the caller's config and imposes the broker's
// policy on it. The caller owns certificates and trust; the broker owns
// versions, suites and the client-certificate requirement, so a permissive
// caller config cannot weaken them.
func serverTLSConfig(in *tls.Config) (*tls.Config, error) {
	if in.GetConfigForClient != nil {
		return nil, errors.New("tls: GetConfigForClient would bypass the broker's TLS policy; not supported")
	}
	if in.ClientCAs == nil {
		return nil, errors.New("tls: ClientCAs is required (mutual TLS)")
	}
	if len(in.Certificates) == 0 && in.GetCertificate == nil {
		return nil, errors.New("tls: no server certificate")
	}
	c := in.Clone()
	c.MinVersion = tls.VersionTLS12
	c.MaxVersion = tls.VersionTLS13
	c.CipherSuites = tls12Suites
	c.ClientAuth = tls.RequireAndVerifyClientCert
	c.InsecureSkipVerify = false
	c.Renegotiation = tls.RenegotiateNever
	return c, nil
}
