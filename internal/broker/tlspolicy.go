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
//
// With verify set, the broker verifies client chains itself (see
// Config.VerifyClient) instead of against ClientCAs.
func serverTLSConfig(in *tls.Config, verify VerifyClientFunc) (*tls.Config, error) {
	if in.GetConfigForClient != nil {
		return nil, errors.New("tls: GetConfigForClient would bypass the broker's TLS policy; not supported")
	}
	if in.ClientCAs == nil && verify == nil {
		return nil, errors.New("tls: ClientCAs (or Config.VerifyClient) is required (mutual TLS)")
	}
	if len(in.Certificates) == 0 && in.GetCertificate == nil {
		return nil, errors.New("tls: no server certificate")
	}
	c := in.Clone()
	c.MinVersion = tls.VersionTLS12
	c.MaxVersion = tls.VersionTLS13
	c.CipherSuites = tlspolicy.CipherSuites
	c.ClientAuth = tls.RequireAndVerifyClientCert
	if verify != nil {
		// A certificate is required, and verified — by verify, during the
		// handshake — not against a fixed pool: the platform knows every
		// account CA, so a device may present its leaf alone. No
		// acceptable-CA list is sent either, since Go clients withhold a
		// certificate whose issuer is not in it.
		c.ClientAuth = tls.RequireAnyClientCert
		c.ClientCAs = nil
		prev := c.VerifyConnection
		c.VerifyConnection = func(cs tls.ConnectionState) error {
			if len(cs.PeerCertificates) == 0 {
				return errors.New("tls: no client certificate")
			}
			if _, err := verify(cs.PeerCertificates[0], cs.PeerCertificates[1:]); err != nil {
				return err
			}
			if prev != nil {
				return prev(cs)
			}
			return nil
		}
	}
	c.InsecureSkipVerify = false
	c.Renegotiation = tls.RenegotiateNever
	// Full-size records from the first byte: the writer coalesces many
	// packets per write, and small records only multiply AEAD operations
	// and syscalls for a broker's traffic.
	c.DynamicRecordSizingDisabled = true
	return c, nil
}
