// Package signedurl makes and checks the platform's firmware download
// URLs: HMAC-SHA256 over the artifact, the gateway it is for and an
// expiry, with a key only the platform holds (DIR/firmware/url.key). A URL
// is refused when it has expired, was altered, or is presented by another
// gateway than the one it names (the platform compares the name with the
// requester's verified certificate).
//
//	/firmware/v1/download/{sha256}?gw={master/account/gateway}&exp={unix seconds}&sig={base64url HMAC}
package signedurl

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"time"

	"github.com/fieldtrust/fieldtrust/internal/atomicfile"
	"github.com/fieldtrust/fieldtrust/internal/ident"
)

// PathPrefix is the download route's prefix.
const PathPrefix = "/firmware/v1/download/"

// DefaultValidity is how long a URL is valid (MindConnect's 7 days).
const DefaultValidity = 7 * 24 * time.Hour

// Signer makes and checks URLs with one key.
type Signer struct{ key []byte }

// New returns a signer with key (at least 32 bytes).
func New(key []byte) (*Signer, error) {
	if len(key) < 32 {
		return nil, errors.New("signed URL key: shorter than 32 bytes")
	}
	return &Signer{key: key}, nil
}

// LoadOrCreate reads the key file, creating a random key the first time.
func LoadOrCreate(file string) (*Signer, error) {
	b, err := os.ReadFile(file)
	if errors.Is(err, os.ErrNotExist) {
		b = make([]byte, 32)
		if _, err := rand.Read(b); err != nil {
			return nil, err
		}
		if err := os.MkdirAll(filepath.Dir(file), 0o700); err != nil {
			return nil, err
		}
		if err := atomicfile.Write(file, b, 0o600); err != nil {
			return nil, err
		}
	} else if err != nil {
		return nil, fmt.Errorf("signed URL key: %w", err)
	}
	return New(b)
}

func (s *Signer) mac(sha, gateway string, exp int64) []byte {
	m := hmac.New(sha256.New, s.key)
	fmt.Fprintf(m, "fieldtrust-firmware-url/v1\n%s\n%s\n%d", sha, gateway, exp)
	return m.Sum(nil)
}

// Sign returns the path and query of a URL for gateway to download the
// artifact sha until expires.
func (s *Signer) Sign(sha, gateway string, expires time.Time) string {
	exp := expires.Unix()
	q := url.Values{"gw": {gateway}, "exp": {strconv.FormatInt(exp, 10)}, "sig": {base64.RawURLEncoding.EncodeToString(s.mac(sha, gateway, exp))}}
	return PathPrefix + sha + "?" + q.Encode()
}

// Refusals.
var (
	ErrMalformed    = errors.New("malformed download URL")
	ErrBadSignature = errors.New("download URL signature does not verify (altered or not from this platform)")
	ErrExpired      = errors.New("download URL expired: ask the platform for a new one (the campaign notice is re-sent)")
	ErrWrongGateway = errors.New("download URL is for another gateway")
)

var shaHex = regexp.MustCompile(`^[0-9a-f]{64}$`)

// Parsed is a URL's content, before its signature is checked.
type Parsed struct {
	SHA256  string
	Gateway string
	Expires time.Time
	sig     []byte
	exp     int64
}

// Parse reads the artifact hash (the path after PathPrefix) and the query
// strictly: exactly gw, exp and sig, once each, well formed.
func Parse(sha, rawQuery string) (Parsed, error) {
	var p Parsed
	if !shaHex.MatchString(sha) {
		return p, fmt.Errorf("%w: %q is not a SHA-256 in hex", ErrMalformed, sha)
	}
	if len(rawQuery) > 1024 {
		return p, fmt.Errorf("%w: query too long", ErrMalformed)
	}
	q, err := url.ParseQuery(rawQuery)
	if err != nil {
		return p, fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	if len(q) != 3 || len(q["gw"]) != 1 || len(q["exp"]) != 1 || len(q["sig"]) != 1 {
		return p, fmt.Errorf("%w: want exactly gw, exp and sig once each", ErrMalformed)
	}
	parts, err := ident.SplitPath(q["gw"][0])
	if err != nil || len(parts) != 3 {
		return p, fmt.Errorf("%w: gw is not a gateway path", ErrMalformed)
	}
	exp, err := strconv.ParseInt(q["exp"][0], 10, 64)
	if err != nil || exp <= 0 || strconv.FormatInt(exp, 10) != q["exp"][0] {
		return p, fmt.Errorf("%w: exp is not a positive number of seconds", ErrMalformed)
	}
	sig, err := base64.RawURLEncoding.DecodeString(q["sig"][0])
	if err != nil || len(sig) != sha256.Size {
		return p, fmt.Errorf("%w: sig is not a base64url HMAC-SHA256", ErrMalformed)
	}
	return Parsed{SHA256: sha, Gateway: q["gw"][0], Expires: time.Unix(exp, 0), sig: sig, exp: exp}, nil
}

// Verify checks a parsed URL's signature, its expiry at now, and that
// requester (the verified identity of the client) is its gateway. The
// signature is checked first: an altered URL says so whatever it names.
func (s *Signer) Verify(p Parsed, requester string, now time.Time) error {
	if !hmac.Equal(p.sig, s.mac(p.SHA256, p.Gateway, p.exp)) {
		return ErrBadSignature
	}
	if !now.Before(p.Expires) {
		return ErrExpired
	}
	if requester != p.Gateway {
		return ErrWrongGateway
	}
	return nil
}
