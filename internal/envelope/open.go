package envelope

import (
	"bytes"
	"context"
	"crypto"
	"crypto/aes"
	"crypto/cipher"
	"crypto/ecdh"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"errors"
	"fmt"
	"time"

	"github.com/ProtonMail/go-crypto/openpgp/aes/keywrap"
)

// VerifyOptions say whose signatures count.
type VerifyOptions struct {
	// Signers finds signer certificates not embedded in the message.
	// May be nil if all signers embed their certificates.
	Signers SignerLookup
	// Verifier judges the signer's chain and revocation and names the
	// signer. Required to accept signed content.
	Verifier SignerVerifier
	// Now gives the time at which the signer's chain is verified; nil
	// means time.Now. The signing time in the message is the signer's
	// own claim and is reported, not trusted: a stolen key can claim any
	// time.
	Now func() time.Time
}

// OpenOptions configure an Opener.
type OpenOptions struct {
	VerifyOptions
	// AllowUnsigned accepts envelopes whose content is plain id-data
	// (such as `openssl cms -encrypt` produces). Without it, Open
	// returns ErrUnsigned for them.
	AllowUnsigned bool
}

// Opened is the result of a successful Open or Verify.
type Opened struct {
	// Content is the plaintext.
	Content []byte
	// Signed is false only for unsigned envelopes accepted through
	// AllowUnsigned; then the fields below are zero.
	Signed bool
	// Signer is the identity the SignerVerifier derived from the chain.
	Signer string
	// SignerCert is the certificate whose key signed the content.
	SignerCert *x509.Certificate
	// SigningTime is the signing-time attribute (the signer's claim),
	// zero if the signer did not include one.
	SigningTime time.Time
	// ContentHash is SHA-256 of Content. Together with Signer and
	// SigningTime it lets callers detect a replayed envelope: a replay
	// opens fine (the envelope is genuine) and carries the same hash.
	ContentHash [sha256.Size]byte
}

// Opener opens envelopes addressed to one recipient key. Build it once; it
// is safe for concurrent use.
type Opener struct {
	cert *x509.Certificate
	key  *ecdh.PrivateKey
	opts OpenOptions
}

// NewOpener returns an Opener for the recipient certificate cert and its
// private key (*ecdsa.PrivateKey or *ecdh.PrivateKey on P-256 or P-384).
func NewOpener(cert *x509.Certificate, key crypto.PrivateKey, opts OpenOptions) (*Opener, error) {
	if cert == nil {
		return nil, errors.New("open: no recipient certificate")
	}
	var k *ecdh.PrivateKey
	switch key := key.(type) {
	case *ecdsa.PrivateKey:
		var err error
		if k, err = key.ECDH(); err != nil {
			return nil, fmt.Errorf("open: recipient key: %w", err)
		}
	case *ecdh.PrivateKey:
		k = key
	default:
		return nil, fmt.Errorf("open: recipient key is %T, need an EC key", key)
	}
	if k.Curve() != ecdh.P256() && k.Curve() != ecdh.P384() {
		return nil, errors.New("open: recipient key must be on P-256 or P-384")
	}
	pub, ok := cert.PublicKey.(*ecdsa.PublicKey)
	if !ok {
		return nil, fmt.Errorf("open: recipient certificate key is %T, need an EC key", cert.PublicKey)
	}
	epub, err := pub.ECDH()
	if err != nil || !epub.Equal(k.PublicKey()) {
		return nil, fmt.Errorf("open: private key does not match certificate %q", cert.Subject.CommonName)
	}
	return &Opener{cert: cert, key: k, opts: opts}, nil
}

// Open decrypts and verifies a DER envelope: the GCM tag first, then the
// signature, then the signer's chain and revocation (through the
// SignerVerifier). Every error wraps one of the sentinel errors.
func (o *Opener) Open(ctx context.Context, env []byte) (*Opened, error) {
	plain, contentType, err := o.decrypt(env)
	if err != nil {
		return nil, fmt.Errorf("open envelope: %w", err)
	}
	switch {
	case contentType.Equal(oidSignedData):
		res, err := verifyAndJudge(ctx, plain, o.opts.VerifyOptions)
		if err != nil {
			return nil, fmt.Errorf("open envelope: %w", err)
		}
		return res, nil
	case contentType.Equal(oidData):
		if !o.opts.AllowUnsigned {
			return nil, fmt.Errorf("open envelope: %w: the sender did not sign it", ErrUnsigned)
		}
		return &Opened{Content: plain, ContentHash: sha256.Sum256(plain)}, nil
	}
	return nil, fmt.Errorf("open envelope: %w: unsupported content type %v", ErrMalformed, contentType)
}

// Verify checks a DER ContentInfo holding SignedData (as `openssl cms -sign
// -nodetach -binary -outform DER` writes) and returns its content.
func Verify(ctx context.Context, signed []byte, opts VerifyOptions) (*Opened, error) {
	if len(signed) > MaxEnvelopeBytes {
		return nil, fmt.Errorf("verify: %w: %d bytes exceed the bound of %d", ErrMalformed, len(signed), MaxEnvelopeBytes)
	}
	if err := checkDER(signed, maxASN1Depth); err != nil {
		return nil, fmt.Errorf("verify: %w: %v", ErrMalformed, err)
	}
	var ci contentInfo
	if err := unmarshalAll(signed, &ci, ""); err != nil {
		return nil, fmt.Errorf("verify: %w: content info: %v", ErrMalformed, err)
	}
	if !ci.ContentType.Equal(oidSignedData) {
		return nil, fmt.Errorf("verify: %w: content type %v is not signed data", ErrMalformed, ci.ContentType)
	}
	res, err := verifyAndJudge(ctx, ci.Content.Bytes, opts)
	if err != nil {
		return nil, fmt.Errorf("verify: %w", err)
	}
	res.Content = bytes.Clone(res.Content) // not a window into the caller's signed
	return res, nil
}

func verifyAndJudge(ctx context.Context, sd []byte, opts VerifyOptions) (*Opened, error) {
	if err := checkDER(sd, maxASN1Depth); err != nil {
		return nil, fmt.Errorf("%w: signed data: %v", ErrMalformed, err)
	}
	v, err := verifySignedData(ctx, sd, opts.Signers)
	if err != nil {
		return nil, err
	}
	if opts.Verifier == nil {
		return nil, fmt.Errorf("%w: no signer verifier configured", ErrUntrustedSigner)
	}
	at := time.Now()
	if opts.Now != nil {
		at = opts.Now()
	}
	id, err := opts.Verifier.VerifySigner(v.signer, v.embedded, at)
	if err != nil {
		if !errors.Is(err, ErrRevokedSigner) && !errors.Is(err, ErrUntrustedSigner) {
			err = fmt.Errorf("%w: %w", ErrUntrustedSigner, err)
		}
		return nil, fmt.Errorf("verify signer: %w", err)
	}
	return &Opened{
		Content:     v.content,
		Signed:      true,
		Signer:      id,
		SignerCert:  v.signer,
		SigningTime: v.signingTime,
		ContentHash: v.contentHash,
	}, nil
}

// decrypt parses the envelope, unwraps the content key and decrypts. It
// returns the plaintext and its content type.
func (o *Opener) decrypt(env []byte) ([]byte, asn1.ObjectIdentifier, error) {
	if len(env) > MaxEnvelopeBytes {
		return nil, nil, fmt.Errorf("%w: %d bytes exceed the bound of %d", ErrMalformed, len(env), MaxEnvelopeBytes)
	}
	if err := checkDER(env, maxASN1Depth); err != nil {
		return nil, nil, fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	var ci contentInfo
	if err := unmarshalAll(env, &ci, ""); err != nil {
		return nil, nil, fmt.Errorf("%w: content info: %v", ErrMalformed, err)
	}
	if !ci.ContentType.Equal(oidAuthEnvelopedData) {
		return nil, nil, fmt.Errorf("%w: content type %v is not AuthEnvelopedData", ErrMalformed, ci.ContentType)
	}
	var aed authEnvelopedData
	if err := unmarshalAll(ci.Content.Bytes, &aed, ""); err != nil {
		return nil, nil, fmt.Errorf("%w: AuthEnvelopedData: %v", ErrMalformed, err)
	}
	if aed.Version != 0 {
		return nil, nil, fmt.Errorf("%w: AuthEnvelopedData version %d", ErrMalformed, aed.Version)
	}
	eci := aed.AuthEncryptedContentInfo
	keyLen, ok := gcmKeyLen(eci.ContentEncryptionAlgorithm.Algorithm)
	if !ok {
		return nil, nil, fmt.Errorf("%w: content encryption %v, only AES-GCM is supported", ErrMalformed, eci.ContentEncryptionAlgorithm.Algorithm)
	}
	var params gcmParameters
	if err := unmarshalAll(eci.ContentEncryptionAlgorithm.Parameters.FullBytes, &params, ""); err != nil {
		return nil, nil, fmt.Errorf("%w: GCM parameters: %v", ErrMalformed, err)
	}
	if len(params.Nonce) != nonceLen {
		return nil, nil, fmt.Errorf("%w: GCM nonce of %d bytes, need %d", ErrMalformed, len(params.Nonce), nonceLen)
	}
	if params.ICVLen < 12 || params.ICVLen > 16 || len(aed.MAC) != params.ICVLen {
		return nil, nil, fmt.Errorf("%w: GCM tag of %d bytes (aes-ICVlen %d)", ErrMalformed, len(aed.MAC), params.ICVLen)
	}
	if len(eci.EncryptedContent.FullBytes) == 0 {
		return nil, nil, fmt.Errorf("%w: no encrypted content (detached content is not supported)", ErrMalformed)
	}
	if eci.EncryptedContent.IsCompound {
		return nil, nil, fmt.Errorf("%w: encrypted content is not a primitive OCTET STRING", ErrMalformed)
	}
	ct := eci.EncryptedContent.Bytes
	var aad []byte
	if len(aed.AuthAttrs.FullBytes) > 0 {
		// RFC 5083 §2.2: authenticated with a SET OF tag, not [1].
		aad = append([]byte{0x31}, aed.AuthAttrs.FullBytes[1:]...)
	}

	cek, err := o.contentKey(aed.RecipientInfos)
	if err != nil {
		return nil, nil, err
	}
	if len(cek) != keyLen {
		return nil, nil, fmt.Errorf("%w: content key of %d bytes for a %d-byte cipher", ErrTampered, len(cek), keyLen)
	}
	block, err := aes.NewCipher(cek)
	if err != nil {
		return nil, nil, fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	gcm, err := cipher.NewGCMWithTagSize(block, params.ICVLen)
	if err != nil {
		return nil, nil, fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	sealed := make([]byte, 0, len(ct)+len(aed.MAC))
	sealed = append(append(sealed, ct...), aed.MAC...)
	plain, err := gcm.Open(sealed[:0], params.Nonce, sealed, aad)
	if err != nil {
		return nil, nil, fmt.Errorf("%w: authentication tag does not verify", ErrTampered)
	}
	return plain, eci.ContentType, nil
}

// contentKey finds our entry among the recipient infos and unwraps the
// content key. Only KeyAgreeRecipientInfo is understood; other kinds are
// skipped, as they may be for other recipients.
func (o *Opener) contentKey(ris []asn1.RawValue) ([]byte, error) {
	if len(ris) > maxRecipientInfos {
		return nil, fmt.Errorf("%w: %d recipient infos, at most %d", ErrMalformed, len(ris), maxRecipientInfos)
	}
	total, attempts := 0, 0
	var lastErr error
	for _, ri := range ris {
		if ri.Class != asn1.ClassContextSpecific || ri.Tag != 1 || !ri.IsCompound {
			continue // ktri, kekri, pwri, ori
		}
		var kari keyAgreeRecipientInfo
		if err := unmarshalAll(ri.FullBytes, &kari, "tag:1"); err != nil {
			return nil, fmt.Errorf("%w: KeyAgreeRecipientInfo: %v", ErrMalformed, err)
		}
		total += len(kari.RecipientEncryptedKeys)
		if total > MaxRecipients {
			return nil, fmt.Errorf("%w: more than %d recipients", ErrMalformed, MaxRecipients)
		}
		for _, rek := range kari.RecipientEncryptedKeys {
			mine, err := o.isMine(rek.RID)
			if err != nil {
				return nil, err
			}
			if !mine {
				continue
			}
			if attempts == maxKeyAttempts {
				return nil, fmt.Errorf("%w: our key is named more than %d times", ErrMalformed, maxKeyAttempts)
			}
			attempts++
			cek, err := o.unwrap(&kari, rek.EncryptedKey)
			if err == nil {
				return cek, nil
			}
			lastErr = err
		}
	}
	if lastErr != nil {
		return nil, lastErr
	}
	return nil, fmt.Errorf("%w: no recipient entry for key id %x", ErrNotForMe, o.cert.SubjectKeyId)
}

// isMine reports whether a KeyAgreeRecipientIdentifier names our certificate.
func (o *Opener) isMine(rid asn1.RawValue) (bool, error) {
	switch {
	case rid.Class == asn1.ClassContextSpecific && rid.Tag == 0 && rid.IsCompound:
		var rki recipientKeyIdentifier
		if err := unmarshalAll(rid.FullBytes, &rki, "tag:0"); err != nil {
			return false, fmt.Errorf("%w: recipient key identifier: %v", ErrMalformed, err)
		}
		return len(o.cert.SubjectKeyId) > 0 && bytes.Equal(rki.SubjectKeyIdentifier, o.cert.SubjectKeyId), nil
	case rid.Class == asn1.ClassUniversal && rid.Tag == asn1.TagSequence:
		var ias issuerAndSerialNumber
		if err := unmarshalAll(rid.FullBytes, &ias, ""); err != nil {
			return false, fmt.Errorf("%w: recipient issuer and serial number: %v", ErrMalformed, err)
		}
		return bytes.Equal(ias.Issuer.FullBytes, o.cert.RawIssuer) && ias.SerialNumber.Cmp(o.cert.SerialNumber) == 0, nil
	}
	return false, fmt.Errorf("%w: unsupported recipient identifier", ErrMalformed)
}

// unwrap runs ECDH with the originator's ephemeral key, derives the KEK with
// the X9.63 KDF and unwraps the content key (RFC 5753 §3.1.2).
func (o *Opener) unwrap(kari *keyAgreeRecipientInfo, wrapped []byte) ([]byte, error) {
	if kari.Version != 3 {
		return nil, fmt.Errorf("%w: KeyAgreeRecipientInfo version %d", ErrMalformed, kari.Version)
	}
	h, ok := kdfHash(kari.KeyEncryptionAlgorithm.Algorithm)
	if !ok {
		return nil, fmt.Errorf("%w: key agreement %v, need dhSinglePass-stdDH-sha*kdf-scheme", ErrMalformed, kari.KeyEncryptionAlgorithm.Algorithm)
	}
	wrapDER := kari.KeyEncryptionAlgorithm.Parameters.FullBytes
	var wrapAlg pkix.AlgorithmIdentifier
	if err := unmarshalAll(wrapDER, &wrapAlg, ""); err != nil {
		return nil, fmt.Errorf("%w: key wrap algorithm: %v", ErrMalformed, err)
	}
	kekLen, ok := wrapKeyLen(wrapAlg.Algorithm)
	if !ok {
		return nil, fmt.Errorf("%w: key wrap %v, need AES key wrap", ErrMalformed, wrapAlg.Algorithm)
	}
	var orig asn1.RawValue // kari.Originator is the [0] EXPLICIT wrapper
	if err := unmarshalAll(kari.Originator.Bytes, &orig, ""); err != nil {
		return nil, fmt.Errorf("%w: originator: %v", ErrMalformed, err)
	}
	if orig.Class != asn1.ClassContextSpecific || orig.Tag != 1 || !orig.IsCompound {
		return nil, fmt.Errorf("%w: originator is not an ephemeral public key (RFC 5753 ephemeral-static)", ErrMalformed)
	}
	var opk originatorPublicKey
	if err := unmarshalAll(orig.FullBytes, &opk, "tag:1"); err != nil {
		return nil, fmt.Errorf("%w: originator key: %v", ErrMalformed, err)
	}
	if !opk.Algorithm.Algorithm.Equal(oidECPublicKey) {
		return nil, fmt.Errorf("%w: originator key algorithm %v", ErrMalformed, opk.Algorithm.Algorithm)
	}
	if err := o.checkCurveParams(opk.Algorithm.Parameters); err != nil {
		return nil, err
	}
	if opk.PublicKey.BitLength%8 != 0 {
		return nil, fmt.Errorf("%w: originator key is not whole bytes", ErrMalformed)
	}
	eph, err := parsePoint(o.key.Curve(), opk.PublicKey.Bytes)
	if err != nil {
		return nil, fmt.Errorf("%w: originator key: %v", ErrMalformed, err)
	}
	z, err := o.key.ECDH(eph)
	if err != nil {
		return nil, fmt.Errorf("%w: key agreement: %v", ErrTampered, err)
	}
	si, err := sharedInfo(wrapDER, kari.UKM, kekLen)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	cek, err := keywrap.Unwrap(x963KDF(h, z, si, kekLen), wrapped)
	if err != nil {
		return nil, fmt.Errorf("%w: content key does not unwrap: %v", ErrTampered, err)
	}
	return cek, nil
}

// parsePoint decodes an ECPoint in the uncompressed form (what OpenSSL
// writes) or the compressed form (what Seal writes), SEC 1 §2.3.4, and
// checks that it is on the curve. The hybrid form (06, 07) is refused.
func parsePoint(curve ecdh.Curve, b []byte) (*ecdh.PublicKey, error) {
	if len(b) > 0 && (b[0] == 2 || b[0] == 3) {
		ec := elliptic.P256()
		if curve == ecdh.P384() {
			ec = elliptic.P384()
		}
		x, y := elliptic.UnmarshalCompressed(ec, b) // nil unless on the curve
		if x == nil {
			return nil, errors.New("compressed point is not on the curve")
		}
		size := (ec.Params().BitSize + 7) / 8
		u := make([]byte, 1+2*size)
		u[0] = 4
		x.FillBytes(u[1 : 1+size])
		y.FillBytes(u[1+size:])
		b = u
	}
	return curve.NewPublicKey(b)
}

// checkCurveParams accepts id-ecPublicKey parameters that are absent or
// NULL (RFC 5753 §3.1.1: the curve is the recipient's) or that name our curve.
func (o *Opener) checkCurveParams(p asn1.RawValue) error {
	if len(p.FullBytes) == 0 || bytes.Equal(p.FullBytes, asn1.NullBytes) {
		return nil
	}
	var curve asn1.ObjectIdentifier
	if err := unmarshalAll(p.FullBytes, &curve, ""); err != nil {
		return fmt.Errorf("%w: originator key parameters: %v", ErrMalformed, err)
	}
	want := oidCurveP256
	if o.key.Curve() == ecdh.P384() {
		want = oidCurveP384
	}
	if !curve.Equal(want) {
		return fmt.Errorf("%w: originator key on curve %v, ours is %v", ErrMalformed, curve, want)
	}
	return nil
}
