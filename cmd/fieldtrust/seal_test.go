package main

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha1"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spf13/cobra"
)

// sealTestCert issues a certificate (self-signed when parent is nil) and
// returns it with its key.
func sealTestCert(t *testing.T, cn string, curve elliptic.Curve, ca bool, parent *x509.Certificate, parentKey *ecdsa.PrivateKey) (*x509.Certificate, *ecdsa.PrivateKey) {
	t.Helper()
	key, err := ecdsa.GenerateKey(curve, rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	pub, _ := key.PublicKey.Bytes()
	ski := sha1.Sum(pub)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: cn},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageKeyAgreement,
		BasicConstraintsValid: true, SubjectKeyId: ski[:],
	}
	if ca {
		tmpl.IsCA, tmpl.KeyUsage = true, x509.KeyUsageCertSign|x509.KeyUsageCRLSign
	}
	if parent == nil {
		parent, parentKey = tmpl, key
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, &key.PublicKey, parentKey)
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return c, key
}

func sealTestWrite(t *testing.T, path, typ string, ders ...[]byte) string {
	t.Helper()
	var b []byte
	for _, d := range ders {
		b = append(b, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: d})...)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func runSealCmd(t *testing.T, c *cobra.Command, stdin []byte, args ...string) (string, string, error) {
	t.Helper()
	var out, errOut bytes.Buffer
	c.SetArgs(args)
	c.SetIn(bytes.NewReader(stdin))
	c.SetOut(&out)
	c.SetErr(&errOut)
	c.SilenceUsage, c.SilenceErrors = true, true
	err := c.ExecuteContext(context.Background())
	return out.String(), errOut.String(), err
}

func TestSealOpenCLI(t *testing.T) {
	dir := t.TempDir()
	// An e2e PKI of fieldtrust's shape: root, master CA, account CA, device.
	root, rootKey := sealTestCert(t, "e2e-root", elliptic.P256(), true, nil, nil)
	master, masterKey := sealTestCert(t, "ms-1", elliptic.P256(), true, root, rootKey)
	acc, accKey := sealTestCert(t, "acc-1", elliptic.P256(), true, master, masterKey)
	dev, devKey := sealTestCert(t, "ms-1/acc-1/dev-1", elliptic.P256(), false, acc, accKey)
	// What a compromised account CA can mint: a leaf that calls itself a
	// device of another master account.
	forged, forgedKey := sealTestCert(t, "ms-2/acc-1/dev-1", elliptic.P256(), false, acc, accKey)
	vendor, vendorKey := sealTestCert(t, "vendor", elliptic.P384(), false, root, rootKey)
	stranger, strangerKey := sealTestCert(t, "stranger", elliptic.P256(), false, root, rootKey)

	rootPEM := sealTestWrite(t, filepath.Join(dir, "root.pem"), "CERTIFICATE", root.Raw)
	devChain := sealTestWrite(t, filepath.Join(dir, "dev", "cert.pem"), "CERTIFICATE", dev.Raw, acc.Raw, master.Raw)
	sec1, _ := x509.MarshalECPrivateKey(devKey)
	devKeyPEM := sealTestWrite(t, filepath.Join(dir, "dev", "key.pem"), "EC PRIVATE KEY", sec1)
	forgedChain := sealTestWrite(t, filepath.Join(dir, "forged", "cert.pem"), "CERTIFICATE", forged.Raw, acc.Raw, master.Raw)
	sec1, _ = x509.MarshalECPrivateKey(forgedKey)
	forgedKeyPEM := sealTestWrite(t, filepath.Join(dir, "forged", "key.pem"), "EC PRIVATE KEY", sec1)
	vendorPEM := sealTestWrite(t, filepath.Join(dir, "vendor.pem"), "CERTIFICATE", vendor.Raw)
	p8, _ := x509.MarshalPKCS8PrivateKey(vendorKey)
	vendorKeyPEM := sealTestWrite(t, filepath.Join(dir, "vendor.key"), "PRIVATE KEY", p8)
	strangerPEM := sealTestWrite(t, filepath.Join(dir, "stranger.pem"), "CERTIFICATE", stranger.Raw)
	p8, _ = x509.MarshalPKCS8PrivateKey(strangerKey)
	strangerKeyPEM := sealTestWrite(t, filepath.Join(dir, "stranger.key"), "PRIVATE KEY", p8)
	signers := filepath.Join(dir, "signers")
	sealTestWrite(t, filepath.Join(signers, "dev-1.pem"), "CERTIFICATE", dev.Raw, acc.Raw, master.Raw)
	sealTestWrite(t, filepath.Join(signers, "forged.pem"), "CERTIFICATE", forged.Raw)

	payload := []byte("reading 21.5")
	for _, armour := range []bool{false, true} {
		args := []string{"--to", vendorPEM, "--sign-cert", devChain, "--sign-key", devKeyPEM}
		if armour {
			args = append(args, "--pem")
		}
		env, _, err := runSealCmd(t, newSealCmd(), payload, args...)
		if err != nil {
			t.Fatalf("seal: %v", err)
		}
		if armour != strings.HasPrefix(env, "-----BEGIN CMS-----") {
			t.Fatalf("pem=%v: got %.20q", armour, env)
		}
		args = []string{"--cert", vendorPEM, "--key", vendorKeyPEM, "--trust", rootPEM, "--signers", signers}
		if armour {
			args = append(args, "--pem")
		}
		out, info, err := runSealCmd(t, newOpenCmd(), []byte(env), args...)
		if err != nil {
			t.Fatalf("open: %v", err)
		}
		if out != string(payload) || !strings.Contains(info, "signer:  ms-1/acc-1/dev-1 ") || !strings.Contains(info, "sha256:") {
			t.Fatalf("open: out %q info %q", out, info)
		}
	}

	env, _, err := runSealCmd(t, newSealCmd(), payload, "--to", vendorPEM, "--sign-cert", devChain, "--sign-key", devKeyPEM)
	if err != nil {
		t.Fatal(err)
	}
	forgedEnv, _, err := runSealCmd(t, newSealCmd(), payload, "--to", vendorPEM, "--sign-cert", forgedChain, "--sign-key", forgedKeyPEM, "--embed-certs")
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name      string
		cmd       func() *cobra.Command
		stdin     []byte
		args      []string
		usage     bool
		errSubstr string
	}{
		{"seal without recipients", newSealCmd, payload, []string{"--sign-cert", devChain, "--sign-key", devKeyPEM}, true, "--to"},
		{"seal with half a signer", newSealCmd, payload, []string{"--to", vendorPEM, "--sign-cert", devChain}, true, "go together"},
		{"seal with a stray argument", newSealCmd, payload, []string{"--to", vendorPEM, "payload.bin"}, true, "--in"},
		{"seal to a missing file", newSealCmd, payload, []string{"--to", filepath.Join(dir, "nope.pem")}, true, "nope.pem"},
		{"seal with a key as certificate", newSealCmd, payload, []string{"--to", vendorKeyPEM}, true, "no certificate"},
		{"open without trust", newOpenCmd, []byte(env), []string{"--cert", vendorPEM, "--key", vendorKeyPEM}, false, "--trust"},
		{"open without signer directory", newOpenCmd, []byte(env), []string{"--cert", vendorPEM, "--key", vendorKeyPEM, "--trust", rootPEM}, false, "--signers"},
		{"open by a stranger", newOpenCmd, []byte(env), []string{"--cert", strangerPEM, "--key", strangerKeyPEM, "--trust", rootPEM, "--signers", signers}, false, "not addressed"},
		{"open with mismatched key", newOpenCmd, []byte(env), []string{"--cert", vendorPEM, "--key", strangerKeyPEM}, true, "does not match"},
		{"open PEM without --pem", newOpenCmd, []byte("-----BEGIN CMS-----\n"), []string{"--cert", vendorPEM, "--key", vendorKeyPEM}, true, "--pem"},
		// The signer's name comes from the chain (pki.IdentityFromChain), not
		// from the leaf's say-so: account CA ms-1/acc-1 cannot vouch for ms-2.
		{"open a signer outside its CA's namespace", newOpenCmd, []byte(forgedEnv), []string{"--cert", vendorPEM, "--key", vendorKeyPEM, "--trust", rootPEM, "--signers", signers}, false, "outside the issuing CA's namespace"},
		{"open garbage", newOpenCmd, []byte("garbage"), []string{"--cert", vendorPEM, "--key", vendorKeyPEM, "--trust", rootPEM}, false, "malformed"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, _, err := runSealCmd(t, tt.cmd(), tt.stdin, tt.args...)
			if err == nil {
				t.Fatal("no error")
			}
			var ue usageError
			if errors.As(err, &ue) != tt.usage || !strings.Contains(err.Error(), tt.errSubstr) {
				t.Fatalf("got %v (usage error: %v), want usage=%v mentioning %q", err, errors.As(err, &ue), tt.usage, tt.errSubstr)
			}
		})
	}
}
