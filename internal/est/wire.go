package est

import (
	"bytes"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"
	"mime"
	"strings"

	"github.com/smallstep/pkcs7"
)

// Wire format (RFC 7030 §4.2, §4.1.3 as clarified by RFC 8951 §3):
//
//   - A request body is a PKCS#10 CertificationRequest, DER, base64
//     encoded, Content-Type application/pkcs10. Line breaks and other
//     whitespace inside the base64 are ignored, missing padding is
//     tolerated, and so is a PEM "CERTIFICATE REQUEST" block (what
//     'openssl req' writes by default). Content-Transfer-Encoding is
//     ignored: RFC 8951 makes base64 the only encoding, and HTTP has no
//     such header, so clients send "base64" or nothing.
//   - A response is a degenerate PKCS#7 SignedData (certs-only: no
//     content, no signers), DER, base64 in lines of 64 characters (so
//     'openssl base64 -d' reads it), Content-Type application/pkcs7-mime;
//     smime-type=certs-only.

// MaxRequestBody bounds an EST request body. A P-256 CSR is about 600
// bytes of base64, an RSA-4096 one about 2.5 KiB; 64 KiB leaves room for
// any sane set of attributes and stops a client from making us buffer more.
const MaxRequestBody = 64 << 10

// Content types.
const (
	ContentTypePKCS10    = "application/pkcs10"
	ContentTypeCertsOnly = "application/pkcs7-mime; smime-type=certs-only"
	ContentTypeCSRAttrs  = "application/csrattrs"
)

// errContentType is wrapped when a request has the wrong content type.
var errContentType = errors.New("wrong content type")

// checkContentType accepts application/pkcs10 with any parameters.
func checkContentType(ct string) error {
	mt, _, err := mime.ParseMediaType(ct)
	if err != nil || mt != ContentTypePKCS10 {
		return fmt.Errorf("%w %q: send %s", errContentType, ct, ContentTypePKCS10)
	}
	return nil
}

// DecodeCSR decodes an EST request body (see the wire format above) and
// parses the certificate request. It does not check the request's
// signature; the caller does, to tell garbage from a forged request.
func DecodeCSR(body []byte) (*x509.CertificateRequest, error) {
	der, err := decodeBase64Body(body, "CERTIFICATE REQUEST")
	if err != nil {
		return nil, err
	}
	csr, err := x509.ParseCertificateRequest(der)
	if err != nil {
		return nil, fmt.Errorf("body is base64 but not a PKCS#10 certificate request: %w", err)
	}
	return csr, nil
}

// decodeBase64Body returns the DER in body: base64 with any whitespace, or
// a PEM block of pemType.
func decodeBase64Body(body []byte, pemType string) ([]byte, error) {
	trimmed := bytes.TrimSpace(body)
	if len(trimmed) == 0 {
		return nil, errors.New("empty body")
	}
	if bytes.HasPrefix(trimmed, []byte("-----BEGIN ")) {
		block, _ := pem.Decode(trimmed)
		if block == nil || (block.Type != pemType && block.Type != "NEW "+pemType) {
			return nil, fmt.Errorf("body is PEM but not a %s block", pemType)
		}
		return block.Bytes, nil
	}
	compact := strings.Map(func(r rune) rune {
		switch r {
		case ' ', '\t', '\r', '\n':
			return -1
		}
		return r
	}, string(trimmed))
	enc := base64.StdEncoding
	if !strings.HasSuffix(compact, "=") && len(compact)%4 != 0 {
		enc = base64.RawStdEncoding
	}
	der, err := enc.DecodeString(compact)
	if err != nil {
		return nil, fmt.Errorf("body is not base64 (RFC 8951: EST bodies are base64-encoded DER): %w", err)
	}
	return der, nil
}

// EncodeCerts encodes certificates as an EST certs-only response body.
func EncodeCerts(certs []*x509.Certificate) ([]byte, error) {
	var raw []byte
	for _, c := range certs {
		raw = append(raw, c.Raw...)
	}
	der, err := pkcs7.DegenerateCertificate(raw)
	if err != nil {
		return nil, fmt.Errorf("encode certs-only PKCS#7: %w", err)
	}
	return base64Lines(der), nil
}

// base64Lines encodes der as base64 in lines of 64 characters.
func base64Lines(der []byte) []byte {
	enc := base64.StdEncoding.EncodeToString(der)
	var b bytes.Buffer
	for len(enc) > 64 {
		b.WriteString(enc[:64])
		b.WriteByte('\n')
		enc = enc[64:]
	}
	b.WriteString(enc)
	b.WriteByte('\n')
	return b.Bytes()
}

// DecodeCerts decodes an EST certs-only response body, as a client reads
// the answer to cacerts, simpleenroll and simplereenroll.
func DecodeCerts(body []byte) ([]*x509.Certificate, error) {
	der, err := decodeBase64Body(body, "PKCS7")
	if err != nil {
		return nil, err
	}
	p7, err := pkcs7.Parse(der)
	if err != nil {
		return nil, fmt.Errorf("not a PKCS#7 certs-only structure: %w", err)
	}
	if len(p7.Certificates) == 0 {
		return nil, errors.New("PKCS#7 certs-only structure holds no certificate")
	}
	return p7.Certificates, nil
}
