package main

import (
	"bytes"
	"crypto"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/fieldtrust/fieldtrust/internal/envelope"
	"github.com/fieldtrust/fieldtrust/internal/pki"
)

// cmsPEMType is the PEM label OpenSSL uses for CMS (openssl cms -outform PEM).
const cmsPEMType = "CMS"

func newSealCmd() *cobra.Command {
	var (
		to                []string
		signCert, signKey string
		embed, usePEM     bool
		in, out           string
	)
	c := &cobra.Command{
		Use:   "seal --to CERT [--to CERT ...] [--sign-cert CERT --sign-key KEY] [--in F] [--out F] [--pem]",
		Short: "Sign and encrypt a payload for its recipients (CMS, OpenSSL-compatible)",
		Long: `Seal a payload end to end: sign it with the originator's e2e key (CMS
SignedData, ECDSA with SHA-256, signer named by key id) and encrypt it for every
--to recipient (CMS AuthEnvelopedData, AES-256-GCM, ECDH P-256/P-384 key
agreement). Brokers, queues and databases on the way can neither read nor forge it.

CERT files hold PEM certificates, leaf first (a chain is fine); KEY is a PKCS#8
or SEC1 PEM private key. Without --sign-cert/--sign-key the payload is only
encrypted, and 'fieldtrust open' refuses it unless told --allow-unsigned.
Output is DER unless --pem. The result opens with 'fieldtrust open' or
'openssl cms -decrypt' (see docs/envelope.md).`,
		Example: `  fieldtrust seal --to vendor.pem --to customer.pem \
      --sign-cert dev-1/cert.pem --sign-key dev-1/key.pem --in reading.cbor --out reading.cms`,
		Args: sealNoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if len(to) == 0 {
				return usageError{errors.New("no recipients: give --to CERT for each reader")}
			}
			if (signCert == "") != (signKey == "") {
				return usageError{errors.New("--sign-cert and --sign-key go together: give both to sign, neither to only encrypt")}
			}
			if embed && signCert == "" {
				return usageError{errors.New("--embed-certs needs --sign-cert and --sign-key")}
			}
			opts := envelope.SealOptions{}
			for _, p := range to {
				certs, err := readCertFile(p)
				if err != nil {
					return usageError{fmt.Errorf("--to: %w", err)}
				}
				opts.Recipients = append(opts.Recipients, certs[0])
			}
			if signCert != "" {
				certs, err := readCertFile(signCert)
				if err != nil {
					return usageError{fmt.Errorf("--sign-cert: %w", err)}
				}
				key, err := readKeyFile(signKey)
				if err != nil {
					return usageError{fmt.Errorf("--sign-key: %w", err)}
				}
				signer, ok := key.(crypto.Signer)
				if !ok {
					return usageError{fmt.Errorf("--sign-key %s: key of type %T cannot sign", signKey, key)}
				}
				opts.Signer = &envelope.Signer{Cert: certs[0], Key: signer, Chain: certs[1:], EmbedCerts: embed}
			}
			content, err := readInput(cmd, in, envelope.MaxEnvelopeBytes)
			if err != nil {
				return err
			}
			env, err := envelope.Seal(content, opts)
			if err != nil {
				return fmt.Errorf("%w (check the --to and --sign-* certificates: EC keys on P-256/P-384 with a subject key identifier)", err)
			}
			if usePEM {
				env = pem.EncodeToMemory(&pem.Block{Type: cmsPEMType, Bytes: env})
			}
			return writeOutput(cmd, out, env)
		},
	}
	f := c.Flags()
	f.StringArrayVar(&to, "to", nil, "recipient certificate file (PEM, leaf first); repeat for each recipient")
	f.StringVar(&signCert, "sign-cert", "", "signer certificate file (PEM, leaf first, then intermediates)")
	f.StringVar(&signKey, "sign-key", "", "signer private key file (PKCS#8 or SEC1 PEM)")
	f.BoolVar(&embed, "embed-certs", false, "embed the signer certificate and intermediates (larger, but openers need no --signers)")
	f.StringVar(&in, "in", "-", "payload file; - for stdin")
	f.StringVar(&out, "out", "-", "envelope file; - for stdout")
	f.BoolVar(&usePEM, "pem", false, "write PEM ("+cmsPEMType+") instead of DER")
	return c
}

func newOpenCmd() *cobra.Command {
	var (
		certPath, keyPath, signersDir string
		trust, crls                   []string
		requireCRL, allowUnsigned     bool
		usePEM                        bool
		in, out                       string
	)
	c := &cobra.Command{
		Use:   "open --cert CERT --key KEY [--trust ROOT] [--crl CRL ...] [--signers DIR] [--in F] [--out F] [--pem]",
		Short: "Decrypt a sealed payload and verify its signer",
		Long: `Open an envelope made by 'fieldtrust seal' (or OpenSSL): decrypt it with the
recipient's certificate and key, check the AES-GCM tag, verify the signature,
then the signer's chain up to a --trust root and against the --crl lists.

The payload goes to --out (stdout by default); the signer's identity, the
claimed signing time and the payload's SHA-256 go to stderr, so that a replay
can be recognised. The signer's certificate comes from the envelope if it was
embedded, else from --signers DIR (PEM or DER files; CA certificates found
there serve as intermediates).`,
		Example: `  fieldtrust open --cert vendor/cert.pem --key vendor/key.pem --trust e2e-root.pem \
      --signers ./device-certs --crl acc-1.crl --in reading.cms --out reading.cbor`,
		Args: sealNoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if certPath == "" || keyPath == "" {
				return usageError{errors.New("give the recipient's --cert and --key")}
			}
			certs, err := readCertFile(certPath)
			if err != nil {
				return usageError{fmt.Errorf("--cert: %w", err)}
			}
			key, err := readKeyFile(keyPath)
			if err != nil {
				return usageError{fmt.Errorf("--key: %w", err)}
			}
			opts := envelope.OpenOptions{AllowUnsigned: allowUnsigned}
			if len(trust) > 0 {
				v := &envelope.ChainVerifier{Roots: x509.NewCertPool(), RequireCRL: requireCRL, Identify: e2eSignerIdentity}
				for _, p := range trust {
					roots, err := readCertFile(p)
					if err != nil {
						return usageError{fmt.Errorf("--trust: %w", err)}
					}
					for _, r := range roots {
						v.Roots.AddCert(r)
					}
				}
				for _, p := range crls {
					l, err := readCRLFile(p)
					if err != nil {
						return usageError{fmt.Errorf("--crl: %w", err)}
					}
					v.CRLs = append(v.CRLs, l)
				}
				opts.Verifier = v
				if signersDir != "" {
					pool, inter, err := readSignerDir(signersDir)
					if err != nil {
						return usageError{fmt.Errorf("--signers: %w", err)}
					}
					opts.Signers = pool
					v.Intermediates = inter
				}
			} else if len(crls) > 0 || signersDir != "" || requireCRL {
				return usageError{errors.New("--crl, --signers and --require-crl need --trust ROOT (the e2e root CA that issued the signer)")}
			}
			o, err := envelope.NewOpener(certs[0], key, opts)
			if err != nil {
				return usageError{err}
			}
			env, err := readInput(cmd, in, envelope.MaxEnvelopeBytes+1<<20) // room for PEM armour
			if err != nil {
				return err
			}
			if usePEM {
				b, _ := pem.Decode(env)
				if b == nil || b.Type != cmsPEMType && b.Type != "PKCS7" {
					return usageError{fmt.Errorf("--pem: input has no %q PEM block", cmsPEMType)}
				}
				env = b.Bytes
			} else if bytes.HasPrefix(bytes.TrimSpace(env), []byte("-----BEGIN")) {
				return usageError{errors.New("input is PEM; add --pem")}
			}
			res, err := o.Open(cmd.Context(), env)
			if err != nil {
				return fmt.Errorf("%w\n%s", err, openHint(err, len(trust) > 0))
			}
			if err := writeOutput(cmd, out, res.Content); err != nil {
				return err
			}
			w := cmd.ErrOrStderr()
			if res.Signed {
				fmt.Fprintf(w, "signer:  %s (key id %x)\n", res.Signer, res.SignerCert.SubjectKeyId)
				if !res.SigningTime.IsZero() {
					fmt.Fprintf(w, "signed:  %s (the signer's claim)\n", res.SigningTime.UTC().Format(time.RFC3339))
				}
			} else {
				fmt.Fprintln(w, "signer:  none (unsigned envelope, accepted by --allow-unsigned)")
			}
			fmt.Fprintf(w, "sha256:  %s\n", hex.EncodeToString(res.ContentHash[:]))
			return nil
		},
	}
	f := c.Flags()
	f.StringVar(&certPath, "cert", "", "recipient certificate file (PEM)")
	f.StringVar(&keyPath, "key", "", "recipient private key file (PKCS#8 or SEC1 PEM)")
	f.StringArrayVar(&trust, "trust", nil, "trusted root CA file(s) of the signers' e2e PKI (PEM); repeatable")
	f.StringArrayVar(&crls, "crl", nil, "CRL file (PEM or DER) of a CA in the signer's chain; repeatable")
	f.BoolVar(&requireCRL, "require-crl", false, "refuse signers whose issuing CAs have no current --crl")
	f.StringVar(&signersDir, "signers", "", "directory of signer and intermediate certificates (PEM or DER)")
	f.BoolVar(&allowUnsigned, "allow-unsigned", false, "accept envelopes without a signature (e.g. from openssl cms -encrypt)")
	f.StringVar(&in, "in", "-", "envelope file; - for stdin")
	f.StringVar(&out, "out", "-", "payload file; - for stdout")
	f.BoolVar(&usePEM, "pem", false, "read PEM ("+cmsPEMType+") instead of DER")
	return c
}

// e2eSignerIdentity names an envelope's signer from its verified chain with
// the e2e PKI's namespace rule, as the platform's ingest does.
func e2eSignerIdentity(chain []*x509.Certificate) (string, error) {
	id, err := pki.IdentifyVerifiedChain(pki.E2E, chain)
	if err != nil {
		return "", err
	}
	return id.String(), nil
}

// openHint says what to do about an Open failure.
func openHint(err error, haveTrust bool) string {
	switch {
	case errors.Is(err, envelope.ErrNotForMe):
		return "hint: the envelope is not addressed to --cert; use the certificate and key of one of its recipients"
	case errors.Is(err, envelope.ErrTampered):
		return "hint: the envelope was modified or corrupted on the way (or the key does not fit); do not use it, ask the sender to resend"
	case errors.Is(err, envelope.ErrUnsigned):
		return "hint: the sender did not sign; add --allow-unsigned only if you expect unsigned content"
	case errors.Is(err, envelope.ErrUnknownSigner) && !haveTrust:
		return "hint: the signer's certificate is not embedded; give --trust ROOT and --signers DIR holding it"
	case errors.Is(err, envelope.ErrUnknownSigner):
		return "hint: the signer's certificate is not embedded; give --signers DIR holding it"
	case errors.Is(err, envelope.ErrRevokedSigner):
		return "hint: the signer's certificate (or a CA above it) is revoked; discard the payload"
	case errors.Is(err, envelope.ErrUntrustedSigner) && !haveTrust:
		return "hint: give --trust ROOT, the e2e root CA that issued the signer"
	case errors.Is(err, envelope.ErrUntrustedSigner):
		return "hint: the signer does not chain to --trust (foreign PKI, expired, or intermediates missing from --signers/the envelope)"
	case errors.Is(err, envelope.ErrMalformed):
		return "hint: not a DER CMS AuthEnvelopedData; if the file is PEM add --pem, and BER (openssl -stream) is not supported"
	}
	return "hint: see docs/envelope.md"
}

func sealNoArgs(cmd *cobra.Command, args []string) error {
	if len(args) > 0 {
		return usageError{fmt.Errorf("unexpected argument %q: use --in for the input file (see '%s --help')", args[0], cmd.CommandPath())}
	}
	return nil
}

// readInput reads path ("-" for stdin), refusing more than max bytes.
func readInput(cmd *cobra.Command, path string, max int) ([]byte, error) {
	var r io.Reader = cmd.InOrStdin()
	if path != "-" {
		f, err := os.Open(path)
		if err != nil {
			return nil, usageError{fmt.Errorf("--in: %w", err)}
		}
		defer f.Close()
		r = f
	}
	b, err := io.ReadAll(io.LimitReader(r, int64(max)+1))
	if err != nil {
		return nil, fmt.Errorf("read input: %w", err)
	}
	if len(b) > max {
		return nil, fmt.Errorf("input larger than %d bytes; envelopes are bounded (docs/envelope.md)", max)
	}
	return b, nil
}

func writeOutput(cmd *cobra.Command, path string, b []byte) error {
	if path == "-" {
		_, err := cmd.OutOrStdout().Write(b)
		return err
	}
	if err := os.WriteFile(path, b, 0o600); err != nil {
		return fmt.Errorf("write output: %w", err)
	}
	return nil
}

// readCertFile reads PEM certificates (or one DER certificate), leaf first.
func readCertFile(path string) ([]*x509.Certificate, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	certs, err := parseCerts(b)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return certs, nil
}

func parseCerts(b []byte) ([]*x509.Certificate, error) {
	var certs []*x509.Certificate
	rest := b
	for {
		var blk *pem.Block
		blk, rest = pem.Decode(rest)
		if blk == nil {
			break
		}
		if blk.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(blk.Bytes)
		if err != nil {
			return nil, fmt.Errorf("parse certificate: %w", err)
		}
		certs = append(certs, c)
	}
	if len(certs) == 0 {
		c, err := x509.ParseCertificate(b)
		if err != nil {
			return nil, errors.New("no certificate found (expected PEM CERTIFICATE blocks or DER)")
		}
		certs = append(certs, c)
	}
	return certs, nil
}

// readKeyFile reads a PKCS#8 ("PRIVATE KEY") or SEC1 ("EC PRIVATE KEY") PEM key.
func readKeyFile(path string) (crypto.PrivateKey, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	rest := b
	for {
		var blk *pem.Block
		blk, rest = pem.Decode(rest)
		if blk == nil {
			return nil, fmt.Errorf("%s: no PRIVATE KEY or EC PRIVATE KEY PEM block", path)
		}
		switch blk.Type {
		case "PRIVATE KEY":
			k, err := x509.ParsePKCS8PrivateKey(blk.Bytes)
			if err != nil {
				return nil, fmt.Errorf("%s: %w", path, err)
			}
			return k, nil
		case "EC PRIVATE KEY":
			k, err := x509.ParseECPrivateKey(blk.Bytes)
			if err != nil {
				return nil, fmt.Errorf("%s: %w", path, err)
			}
			return k, nil
		case "ENCRYPTED PRIVATE KEY":
			return nil, fmt.Errorf("%s: encrypted keys are not supported; decrypt with 'openssl pkey -in %s -out plain.pem'", path, path)
		}
	}
}

func readCRLFile(path string) (*x509.RevocationList, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	if blk, _ := pem.Decode(b); blk != nil {
		if blk.Type != "X509 CRL" {
			return nil, fmt.Errorf("%s: PEM block %q, want X509 CRL", path, blk.Type)
		}
		b = blk.Bytes
	}
	l, err := x509.ParseRevocationList(b)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return l, nil
}

// readSignerDir loads every certificate file in dir: end-entity
// certificates become the signer directory, CA certificates intermediates.
func readSignerDir(dir string) (*envelope.CertPool, []*x509.Certificate, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, nil, err
	}
	pool := envelope.NewCertPool()
	var inter []*x509.Certificate
	for _, e := range entries {
		name := e.Name()
		if e.IsDir() || strings.HasPrefix(name, ".") {
			continue
		}
		switch strings.ToLower(filepath.Ext(name)) {
		case ".pem", ".crt", ".cer", ".der":
		default:
			continue
		}
		certs, err := readCertFile(filepath.Join(dir, name))
		if err != nil {
			return nil, nil, err
		}
		for _, c := range certs {
			if c.IsCA {
				inter = append(inter, c)
			} else {
				pool.Add(c)
			}
		}
	}
	if pool.Len() == 0 {
		return nil, nil, fmt.Errorf("%s holds no end-entity certificates", dir)
	}
	return pool, inter, nil
}
