package broker

import (
	"crypto/tls"
	"errors"

	"github.com/fieldtrust/fieldtrust/internal/tlspolicy"
)

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
	c.CipherSuites = tlspolicy.CipherSuites
	c.ClientAuth = tls.RequireAndVerifyClientCert
	c.InsecureSkipVerify = false
	c.Renegotiation = tls.RenegotiateNever
	// Full-size records from the first byte: the writer coalesces many
	// packets per write, and small records only multiply AEAD operations
	// and syscalls for a broker's traffic.
	c.DynamicRecordSizingDisabled = true
	return c, nil
}
