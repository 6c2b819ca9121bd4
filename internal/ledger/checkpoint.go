package ledger

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// Origin is the first line of every fieldtrust checkpoint: it names the log
// so a signature over one log's head cannot be passed off as another's.
const Origin = "fieldtrust.ledger/v1"

// Checkpoint is the content of a signed tree head, in the transparency-dev
// checkpoint text format (origin, size, base64 root, each on its own line)
// with one extension line: the signing time in RFC 3339.
type Checkpoint struct {
	Size uint64
	Root []byte
	Time time.Time
}

// Marshal returns the checkpoint's text, the bytes that are signed.
func (c Checkpoint) Marshal() []byte { return c.MarshalFor(Origin) }

// MarshalFor returns the checkpoint's text for the log named origin (the
// DCC registry keeps a log of its own, "fieldtrust.registry/v1").
func (c Checkpoint) MarshalFor(origin string) []byte {
	return fmt.Appendf(nil, "%s\n%d\n%s\n%s\n", origin, c.Size, base64.StdEncoding.EncodeToString(c.Root), c.Time.UTC().Format(time.RFC3339))
}

// ParseCheckpoint parses checkpoint text.
func ParseCheckpoint(b []byte) (Checkpoint, error) { return ParseCheckpointFor(b, Origin) }

// ParseCheckpointFor parses checkpoint text of the log named origin.
func ParseCheckpointFor(b []byte, origin string) (Checkpoint, error) {
	if len(b) > 1024 {
		return Checkpoint{}, errors.New("checkpoint longer than 1 KiB")
	}
	lines := strings.Split(string(b), "\n")
	if len(lines) != 5 || lines[4] != "" {
		return Checkpoint{}, errors.New("checkpoint: want 4 lines")
	}
	if lines[0] != origin {
		return Checkpoint{}, fmt.Errorf("checkpoint of log %q, want %q", lines[0], origin)
	}
	size, err := strconv.ParseUint(lines[1], 10, 64)
	if err != nil {
		return Checkpoint{}, fmt.Errorf("checkpoint size: %w", err)
	}
	root, err := base64.StdEncoding.DecodeString(lines[2])
	if err != nil || len(root) != sha256.Size {
		return Checkpoint{}, errors.New("checkpoint root: not a base64 SHA-256 hash")
	}
	t, err := time.Parse(time.RFC3339, lines[3])
	if err != nil {
		return Checkpoint{}, fmt.Errorf("checkpoint time: %w", err)
	}
	c := Checkpoint{Size: size, Root: root, Time: t}
	if !bytes.Equal(c.MarshalFor(origin), b) {
		return Checkpoint{}, errors.New("checkpoint not in canonical form")
	}
	return c, nil
}

// Sign signs the checkpoint text with an ECDSA key (SHA-256; ASN.1 DER
// signature).
func Sign(c Checkpoint, key crypto.Signer) (text, sig []byte, err error) {
	text = c.Marshal()
	digest := sha256.Sum256(text)
	sig, err = key.Sign(rand.Reader, digest[:], crypto.SHA256)
	if err != nil {
		return nil, nil, fmt.Errorf("sign checkpoint: %w", err)
	}
	return text, sig, nil
}

// CertVerifier verifies the ledger signer's certificate chain and returns
// its identity (pki.Verifier.VerifySigner in the e2e domain).
type CertVerifier interface {
	VerifySigner(leaf *x509.Certificate, intermediates []*x509.Certificate, at time.Time) (string, error)
}

// SignerIdentity is the identity that signs tree heads: the platform's
// "ledger" service in the e2e PKI.
const SignerIdentity = "service:ledger"

// VerifyCheckpoint checks a signed checkpoint: the chain (signer first) must
// verify to SignerIdentity, and the signature must be the signer key's over
// the text. It returns the parsed checkpoint.
func VerifyCheckpoint(text, sig []byte, chain []*x509.Certificate, v CertVerifier) (Checkpoint, error) {
	c, err := ParseCheckpoint(text)
	if err != nil {
		return c, err
	}
	if len(chain) == 0 {
		return c, errors.New("checkpoint: no signer certificate")
	}
	id, err := v.VerifySigner(chain[0], chain[1:], c.Time)
	if err != nil {
		return c, fmt.Errorf("checkpoint signer: %w", err)
	}
	if id != SignerIdentity {
		return c, fmt.Errorf("checkpoint signed by %s, want %s", id, SignerIdentity)
	}
	pub, ok := chain[0].PublicKey.(*ecdsa.PublicKey)
	if !ok {
		return c, errors.New("checkpoint signer key is not ECDSA")
	}
	digest := sha256.Sum256(text)
	if !ecdsa.VerifyASN1(pub, digest[:], sig) {
		return c, errors.New("checkpoint signature does not verify")
	}
	return c, nil
}
