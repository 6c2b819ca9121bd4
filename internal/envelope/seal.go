package envelope

import (
	"crypto"
	"crypto/aes"
	"crypto/cipher"
	"crypto/ecdh"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/ProtonMail/go-crypto/openpgp/aes/keywrap"
)

const (
	cekLen   = 32 // AES-256-GCM content key
	nonceLen = 12 // RFC 5084 §3.2: the recommended nonce size
	tagLen   = 16 // full-length GCM tag, written as aes-ICVlen 16
)

// SealOptions says for whom and by whom content is sealed.
type SealOptions struct {
	// Recipients are the certificates of the readers: ECDSA keys on
	// P-256 or P-384, each with a subject key identifier (by which the
	// envelope names them) and, if key usage is present, keyAgreement.
	Recipients []*x509.Certificate
	// Signer signs the content before encryption. Nil seals unsigned
	// content (id-data), which Open refuses unless the opener allows it.
	Signer *Signer
	// Rand is the source of keys, nonces and signature randomness;
	// nil means crypto/rand.
	Rand io.Reader
	// Now gives the signing time; nil means time.Now.
	Now func() time.Time
}

// recipient is a validated recipient, ready for key agreement.
type recipient struct {
	ski []byte
	pub *ecdh.PublicKey
}

// Sealer seals content for a fixed set of recipients. Build it once per
// recipient policy; it is safe for concurrent use.
type Sealer struct {
	opts SealOptions
	// groups holds the recipients per curve, P-256 first; each group
	// gets one KeyAgreeRecipientInfo with one ephemeral key.
	groups [][]recipient
}

// NewSealer validates opts and prepares the recipients.
func NewSealer(opts SealOptions) (*Sealer, error) {
	if len(opts.Recipients) == 0 {
		return nil, errors.New("seal: no recipients")
	}
	if len(opts.Recipients) > MaxRecipients {
		return nil, fmt.Errorf("seal: %d recipients, at most %d per envelope (see limits.go); split the audience or seal for a service that re-seals", len(opts.Recipients), MaxRecipients)
	}
	if opts.Signer != nil {
		if err := opts.Signer.check(); err != nil {
			return nil, fmt.Errorf("seal: %w", err)
		}
	}
	s := &Sealer{opts: opts}
	seen := make(map[string]bool)
	byCurve := make(map[ecdh.Curve][]recipient)
	for _, c := range opts.Recipients {
		r, err := newRecipient(c)
		if err != nil {
			return nil, fmt.Errorf("seal: %w", err)
		}
		if seen[string(r.ski)] {
			continue // the same reader twice needs only one entry
		}
		seen[string(r.ski)] = true
		byCurve[r.pub.Curve()] = append(byCurve[r.pub.Curve()], r)
	}
	for _, curve := range []ecdh.Curve{ecdh.P256(), ecdh.P384()} {
		if g := byCurve[curve]; len(g) > 0 {
			s.groups = append(s.groups, g)
		}
	}
	return s, nil
}

func newRecipient(c *x509.Certificate) (recipient, error) {
	name := c.Subject.CommonName
	if len(c.SubjectKeyId) == 0 {
		return recipient{}, fmt.Errorf("recipient %q has no subject key identifier; reissue the certificate with one", name)
	}
	if c.KeyUsage != 0 && c.KeyUsage&x509.KeyUsageKeyAgreement == 0 {
		return recipient{}, fmt.Errorf("recipient %q: certificate key usage does not allow key agreement", name)
	}
	pub, ok := c.PublicKey.(*ecdsa.PublicKey)
	if !ok {
		return recipient{}, fmt.Errorf("recipient %q: key is %T, need an EC key on P-256 or P-384", name, c.PublicKey)
	}
	ep, err := pub.ECDH()
	if err != nil {
		return recipient{}, fmt.Errorf("recipient %q: %w", name, err)
	}
	if ep.Curve() != ecdh.P256() && ep.Curve() != ecdh.P384() {
		return recipient{}, fmt.Errorf("recipient %q: curve %s not supported, need P-256 or P-384", name, pub.Curve.Params().Name)
	}
	return recipient{ski: c.SubjectKeyId, pub: ep}, nil
}

// Seal signs (if opts.Signer is set) and encrypts content for
// opts.Recipients. It is NewSealer followed by Sealer.Seal.
func Seal(content []byte, opts SealOptions) ([]byte, error) {
	s, err := NewSealer(opts)
	if err != nil {
		return nil, err
	}
	return s.Seal(content)
}

// Seal returns the DER of a ContentInfo holding AuthEnvelopedData: content,
// wrapped in SignedData when the sealer has a signer, encrypted under a
// fresh AES-256-GCM key and nonce, the key wrapped for every recipient.
func (s *Sealer) Seal(content []byte) ([]byte, error) {
	rnd := s.opts.Rand
	if rnd == nil {
		rnd = rand.Reader
	}
	inner, innerType := content, oidData
	if s.opts.Signer != nil {
		now := time.Now
		if s.opts.Now != nil {
			now = s.opts.Now
		}
		sd, err := signData(rnd, s.opts.Signer, content, now())
		if err != nil {
			return nil, fmt.Errorf("seal: %w", err)
		}
		inner, innerType = sd, oidSignedData
	}
	return s.encrypt(rnd, inner, innerType)
}

// encrypt builds the AuthEnvelopedData around inner, of type innerType.
func (s *Sealer) encrypt(rnd io.Reader, inner []byte, innerType asn1.ObjectIdentifier) ([]byte, error) {
	// Rough pre-check so that we never build what Open would refuse.
	if len(inner)+100*len(s.opts.Recipients)+200 > MaxEnvelopeBytes {
		return nil, fmt.Errorf("seal: %d bytes of content exceed the envelope bound of %d bytes", len(inner), MaxEnvelopeBytes)
	}

	var key [cekLen]byte
	nonce := make([]byte, nonceLen)
	if _, err := io.ReadFull(rnd, key[:]); err != nil {
		return nil, fmt.Errorf("seal: content key: %w", err)
	}
	if _, err := io.ReadFull(rnd, nonce); err != nil {
		return nil, fmt.Errorf("seal: nonce: %w", err)
	}
	block, err := aes.NewCipher(key[:])
	if err != nil {
		return nil, fmt.Errorf("seal: %w", err)
	}
	gcm, err := cipher.NewGCM(block)
	if err != nil {
		return nil, fmt.Errorf("seal: %w", err)
	}
	sealed := gcm.Seal(nil, nonce, inner, nil) // no authAttrs, so no AAD
	ct, mac := sealed[:len(inner)], sealed[len(inner):]

	var ris []asn1.RawValue
	for _, g := range s.groups {
		ri, err := keyAgree(rnd, g, key[:])
		if err != nil {
			return nil, fmt.Errorf("seal: %w", err)
		}
		ris = append(ris, asn1.RawValue{FullBytes: ri})
	}
	params, err := asn1.Marshal(gcmParameters{Nonce: nonce, ICVLen: tagLen})
	if err != nil {
		return nil, fmt.Errorf("seal: encode GCM parameters: %w", err)
	}
	aed := authEnvelopedData{
		Version:        0,
		RecipientInfos: ris,
		AuthEncryptedContentInfo: encryptedContentInfo{
			ContentType:                innerType,
			ContentEncryptionAlgorithm: pkix.AlgorithmIdentifier{Algorithm: oidAES256GCM, Parameters: asn1.RawValue{FullBytes: params}},
			EncryptedContent:           asn1.RawValue{Class: asn1.ClassContextSpecific, Tag: 0, Bytes: ct},
		},
		MAC: mac,
	}
	aedDER, err := asn1.Marshal(aed)
	if err != nil {
		return nil, fmt.Errorf("seal: encode AuthEnvelopedData: %w", err)
	}
	out, err := asn1.Marshal(contentInfo{ContentType: oidAuthEnvelopedData, Content: explicit0(aedDER)})
	if err != nil {
		return nil, fmt.Errorf("seal: encode ContentInfo: %w", err)
	}
	return out, nil
}

// wrapAlgDER is the key wrap AlgorithmIdentifier we send: aes256-wrap with
// absent parameters (RFC 3565 §2.3.2). It is also the keyInfo of the KDF input.
var wrapAlgDER = mustMarshal(pkix.AlgorithmIdentifier{Algorithm: oidAES256Wrap})

// explicit0 wraps an encoded element in an [0] EXPLICIT tag. encoding/asn1
// writes a RawValue as is, ignoring the field's "explicit" parameter.
func explicit0(der []byte) asn1.RawValue {
	return asn1.RawValue{Class: asn1.ClassContextSpecific, Tag: 0, IsCompound: true, Bytes: der}
}

func mustMarshal(v any) []byte {
	b, err := asn1.Marshal(v)
	if err != nil {
		panic(err) // only called on constant values at init
	}
	return b
}

// keyAgree builds one KeyAgreeRecipientInfo for recipients on one curve:
// one ephemeral key, one wrapped copy of cek per recipient (RFC 5753 §3.1.1).
func keyAgree(rnd io.Reader, group []recipient, cek []byte) ([]byte, error) {
	curve := group[0].pub.Curve()
	eph, err := curve.GenerateKey(rnd)
	if err != nil {
		return nil, fmt.Errorf("ephemeral key: %w", err)
	}
	si, err := sharedInfo(wrapAlgDER, nil, cekLen)
	if err != nil {
		return nil, err
	}
	reks := make([]recipientEncryptedKey, 0, len(group))
	for _, r := range group {
		z, err := eph.ECDH(r.pub)
		if err != nil {
			return nil, fmt.Errorf("key agreement with %x: %w", r.ski, err)
		}
		kek := x963KDF(crypto.SHA256, z, si, cekLen)
		wrapped, err := keywrap.Wrap(kek, cek)
		if err != nil {
			return nil, fmt.Errorf("wrap content key: %w", err)
		}
		rid, err := asn1.MarshalWithParams(recipientKeyIdentifier{SubjectKeyIdentifier: r.ski}, "tag:0")
		if err != nil {
			return nil, fmt.Errorf("encode recipient id: %w", err)
		}
		reks = append(reks, recipientEncryptedKey{RID: asn1.RawValue{FullBytes: rid}, EncryptedKey: wrapped})
	}
	pub := compressPoint(eph.PublicKey().Bytes())
	orig, err := asn1.MarshalWithParams(originatorPublicKey{
		Algorithm: pkix.AlgorithmIdentifier{Algorithm: oidECPublicKey},
		PublicKey: asn1.BitString{Bytes: pub, BitLength: 8 * len(pub)},
	}, "tag:1")
	if err != nil {
		return nil, fmt.Errorf("encode originator key: %w", err)
	}
	kari := keyAgreeRecipientInfo{
		Version:    3,
		Originator: explicit0(orig),
		KeyEncryptionAlgorithm: pkix.AlgorithmIdentifier{
			Algorithm:  oidDHSinglePassSHA256,
			Parameters: asn1.RawValue{FullBytes: wrapAlgDER},
		},
		RecipientEncryptedKeys: reks,
	}
	b, err := asn1.MarshalWithParams(kari, "tag:1")
	if err != nil {
		return nil, fmt.Errorf("encode KeyAgreeRecipientInfo: %w", err)
	}
	return b, nil
}

// compressPoint turns an uncompressed SEC 1 point (04 || X || Y) into the
// compressed form (02 or 03 by the parity of Y, then X), SEC 1 §2.3.3. RFC
// 5753 carries the originator's key as an ECPoint (RFC 5480 §2.2), which
// may be in either form; OpenSSL reads both. It saves 32 bytes on P-256
// and 48 on P-384.
func compressPoint(u []byte) []byte {
	n := (len(u) - 1) / 2
	c := make([]byte, 1+n)
	c[0] = 2 | u[len(u)-1]&1
	copy(c[1:], u[1:1+n])
	return c
}
