package envelope

import (
	"bytes"
	"context"
	"crypto/elliptic"
	"crypto/x509"
	"encoding/asn1"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

const opensslPath = "/usr/bin/openssl"

// requireOpenSSL skips the test when OpenSSL is missing, except in CI
// (CI set), where interop is part of the contract and a missing OpenSSL
// fails the build.
func requireOpenSSL(t *testing.T) {
	t.Helper()
	if _, err := os.Stat(opensslPath); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("interop test needs %s in CI: %v", opensslPath, err)
		}
		t.Skipf("%s not found; install OpenSSL 3 to run interop tests", opensslPath)
	}
}

func openssl(t *testing.T, args ...string) {
	t.Helper()
	cmd := exec.Command(opensslPath, args...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("openssl %s: %v\n%s", strings.Join(args, " "), err, stderr.String())
	}
}

func readFile(t *testing.T, p string) []byte {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func writeFile(t *testing.T, dir, name string, b []byte) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// wrapSignedData puts a bare SignedData (the inner content of a
// sign-then-encrypt envelope) into the ContentInfo that `openssl cms
// -verify` expects.
func wrapSignedData(t *testing.T, sd []byte) []byte {
	t.Helper()
	b, err := asn1.Marshal(contentInfo{ContentType: oidSignedData, Content: explicit0(sd)})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestOpenSSLOpensOurs: `openssl cms -decrypt` opens what Seal produces, for
// each recipient (P-256 and P-384 share one envelope; the ephemeral keys are
// compressed points and the originator key has no curve parameters, so
// OpenSSL takes the curve from the recipient's key), and `openssl cms
// -verify` checks the inner SignedData, with the signer by key id given on
// the side or embedded.
func TestOpenSSLOpensOurs(t *testing.T) {
	requireOpenSSL(t)
	dir := t.TempDir()
	root := newTestRoot(t, "root")
	acc := root.issueCA("ms-acc-1").issueCA("acc-1")
	dev := acc.issueLeaf("dev-1", elliptic.P256())
	r256 := root.issueLeaf("vendor", elliptic.P256())
	r384 := root.issueLeaf("customer", elliptic.P384())
	rootPEM := writeCert(t, dir, "root.pem", root.cert)
	signerPEM := writeCert(t, dir, "signer.pem", append([]*x509.Certificate{dev.cert}, dev.chain...)...)
	caChainPEM := writeCert(t, dir, "ca-chain.pem", append([]*x509.Certificate{root.cert}, dev.chain...)...)
	content := []byte("temperature=21.5\x00\xff binary ok")

	for _, embed := range []bool{false, true} {
		for _, signed := range []bool{true, false} {
			name := fmt.Sprintf("signed=%v,embed=%v", signed, embed)
			if !signed && embed {
				continue
			}
			t.Run(name, func(t *testing.T) {
				opts := SealOptions{Recipients: []*x509.Certificate{r256.cert, r384.cert}}
				if signed {
					opts.Signer = dev.signer(embed)
				}
				env, err := Seal(content, opts)
				if err != nil {
					t.Fatal(err)
				}
				// The ephemeral keys are compressed points (SEC 1 §2.3.3):
				// what follows proves OpenSSL reads them on both curves.
				if _, points := mapOriginators(t, env, nil); len(points) != 2 || len(points[0]) != 33 || len(points[1]) != 49 {
					t.Fatalf("originator points %x, want compressed P-256 and P-384", points)
				}
				envPath := writeFile(t, dir, "env.der", env)
				for i, r := range []*testLeaf{r256, r384} {
					cert := writeCert(t, dir, fmt.Sprintf("r%d.pem", i), r.cert)
					key := writeKey(t, dir, fmt.Sprintf("r%d.key", i), r.key)
					out := filepath.Join(dir, "inner.der")
					openssl(t, "cms", "-decrypt", "-inform", "DER", "-in", envPath, "-recip", cert, "-inkey", key, "-out", out)
					inner := readFile(t, out)
					if !signed {
						if !bytes.Equal(inner, content) {
							t.Fatalf("openssl decrypted %q", inner)
						}
						continue
					}
					ci := writeFile(t, dir, "signed.der", wrapSignedData(t, inner))
					got := filepath.Join(dir, "content")
					// OpenSSL 3.0 builds the chain only from the message and
					// the trust store, so without embedded certificates the
					// intermediates go to -CAfile and the leaf to -certfile.
					caFile := rootPEM
					if !embed {
						caFile = caChainPEM
					}
					args := []string{"cms", "-verify", "-inform", "DER", "-in", ci, "-binary", "-CAfile", caFile, "-purpose", "any", "-out", got}
					if !embed {
						args = append(args, "-certfile", signerPEM)
					}
					openssl(t, args...)
					if !bytes.Equal(readFile(t, got), content) {
						t.Fatalf("openssl verified %q", readFile(t, got))
					}
				}
			})
		}
	}
}

// TestWeOpenOpenSSLs: Open opens what `openssl cms -encrypt -aes-256-gcm`
// produces (uncompressed ephemeral points), for one and several recipients on both curves, with the SHA-1
// and SHA-256 X9.63 KDF, recipients named by issuer and serial (OpenSSL's
// default) or by key id.
func TestWeOpenOpenSSLs(t *testing.T) {
	requireOpenSSL(t)
	dir := t.TempDir()
	root := newTestRoot(t, "root")
	leaves := []*testLeaf{
		root.issueLeaf("a", elliptic.P256()),
		root.issueLeaf("b", elliptic.P384()),
		root.issueLeaf("c", elliptic.P256()),
	}
	content := []byte("hello from openssl")
	in := writeFile(t, dir, "in", content)
	for _, kdf := range []string{"sha1", "sha256"} {
		for _, keyid := range []bool{false, true} {
			for _, n := range []int{1, 3} {
				t.Run(fmt.Sprintf("kdf=%s,keyid=%v,recipients=%d", kdf, keyid, n), func(t *testing.T) {
					out := filepath.Join(dir, "env.der")
					args := []string{"cms", "-encrypt", "-aes-256-gcm", "-binary", "-outform", "DER", "-in", in, "-out", out}
					if keyid {
						args = append(args, "-keyid")
					}
					for i := 0; i < n; i++ {
						args = append(args, "-recip", writeCert(t, dir, fmt.Sprintf("r%d.pem", i), leaves[i].cert), "-keyopt", "ecdh_kdf_md:"+kdf)
					}
					openssl(t, args...)
					env := readFile(t, out)
					// OpenSSL writes uncompressed ephemeral points, which
					// Open keeps reading.
					_, points := mapOriginators(t, env, nil)
					for _, p := range points {
						if p[0] != 4 {
							t.Fatalf("OpenSSL wrote originator point %x, expected the uncompressed form", p)
						}
					}
					for i := 0; i < n; i++ {
						got, err := leaves[i].opener(t, OpenOptions{AllowUnsigned: true}).Open(context.Background(), env)
						if err != nil {
							t.Fatalf("recipient %d: %v", i, err)
						}
						if !bytes.Equal(got.Content, content) || got.Signed {
							t.Fatalf("recipient %d: got %+v", i, got)
						}
					}
					// Unsigned content is refused unless allowed.
					if _, err := leaves[0].opener(t, OpenOptions{}).Open(context.Background(), env); !errors.Is(err, ErrUnsigned) {
						t.Fatalf("got %v, want ErrUnsigned", err)
					}
				})
			}
		}
	}
}

// TestWeVerifyOpenSSLSigned: Verify checks what `openssl cms -sign`
// produces: certificates embedded or not (-nocerts), signer named by issuer
// and serial or by key id (-keyid).
func TestWeVerifyOpenSSLSigned(t *testing.T) {
	requireOpenSSL(t)
	dir := t.TempDir()
	root := newTestRoot(t, "root")
	acc := root.issueCA("acc-1")
	dev := acc.issueLeaf("dev-1", elliptic.P256())
	content := []byte("signed by openssl")
	in := writeFile(t, dir, "in", content)
	leafPEM := writeCert(t, dir, "leaf.pem", dev.cert)
	chainPEM := writeCert(t, dir, "chain.pem", dev.chain...)
	keyPEM := writeKey(t, dir, "leaf.key", dev.key)
	for _, nocerts := range []bool{false, true} {
		for _, keyid := range []bool{false, true} {
			t.Run(fmt.Sprintf("nocerts=%v,keyid=%v", nocerts, keyid), func(t *testing.T) {
				out := filepath.Join(dir, "signed.der")
				args := []string{"cms", "-sign", "-binary", "-nodetach", "-md", "sha256", "-outform", "DER",
					"-signer", leafPEM, "-inkey", keyPEM, "-in", in, "-out", out}
				if nocerts {
					args = append(args, "-nocerts")
				} else {
					args = append(args, "-certfile", chainPEM)
				}
				if keyid {
					args = append(args, "-keyid")
				}
				openssl(t, args...)
				opts := VerifyOptions{Verifier: root.verifier(acc.crl())}
				if nocerts {
					opts.Signers = NewCertPool(dev.cert)
					opts.Verifier.(*ChainVerifier).Intermediates = dev.chain
				}
				got, err := Verify(context.Background(), readFile(t, out), opts)
				if err != nil {
					t.Fatal(err)
				}
				if !bytes.Equal(got.Content, content) || got.Signer != "dev-1" || got.SigningTime.IsZero() {
					t.Fatalf("got %+v", got)
				}
				if nocerts {
					// Without the directory the signer is unknown.
					opts.Signers = nil
					if _, err := Verify(context.Background(), readFile(t, out), opts); !errors.Is(err, ErrUnknownSigner) {
						t.Fatalf("got %v, want ErrUnknownSigner", err)
					}
				}
			})
		}
	}
}
