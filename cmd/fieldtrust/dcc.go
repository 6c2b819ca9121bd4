package main

import (
	"crypto"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"github.com/fieldtrust/fieldtrust/internal/dcc"
	"github.com/fieldtrust/fieldtrust/internal/dcc/xades"
	"github.com/fieldtrust/fieldtrust/internal/envelope"
)

func newDCCCmd() *cobra.Command {
	c := &cobra.Command{
		Use:   "dcc",
		Short: "Digital Calibration Certificates: validate, sign, verify, seal, open",
		Long: `Work with Digital Calibration Certificates (PTB's DCC XML, schema 3.1.0–3.3.0):
validate them against the vendored schemas (offline), sign them (XAdES
baseline-B), verify signatures at their signing time, and seal them for the
client (CMS, OpenSSL-compatible). See docs/dcc.md.`,
	}
	c.AddCommand(newDCCValidateCmd(), newDCCSignCmd(), newDCCVerifyCmd(), newDCCSealCmd(), newDCCOpenCmd())
	return c
}

func newDCCValidateCmd() *cobra.Command {
	var in string
	c := &cobra.Command{
		Use:   "validate --in F",
		Short: "Validate a DCC against the PTB schema of its schemaVersion (exit 0 when valid)",
		Args:  sealNoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			src, err := readInput(cmd, in, dcc.MaxBytes)
			if err != nil {
				return err
			}
			version, errs, err := dcc.Validate(src)
			if err != nil {
				return fmt.Errorf("%s: %w", in, err)
			}
			for _, e := range errs {
				fmt.Fprintf(cmd.ErrOrStderr(), "%s:%s\n", in, e)
			}
			if len(errs) > 0 {
				return fmt.Errorf("%s: schema-invalid: %d errors against DCC schema %s", in, len(errs), version)
			}
			fmt.Fprintf(cmd.ErrOrStderr(), "%s: valid DCC (schema %s)\n", in, version)
			return nil
		},
	}
	c.Flags().StringVar(&in, "in", "-", "DCC file; - for stdin")
	return c
}

func signerFromFiles(certPath, keyPath string) ([]*x509.Certificate, crypto.Signer, error) {
	if certPath == "" || keyPath == "" {
		return nil, nil, usageError{errors.New("give the signer's --cert (with its intermediates) and --key")}
	}
	certs, err := readCertFile(certPath)
	if err != nil {
		return nil, nil, usageError{fmt.Errorf("--cert: %w", err)}
	}
	key, err := readKeyFile(keyPath)
	if err != nil {
		return nil, nil, usageError{fmt.Errorf("--key: %w", err)}
	}
	s, ok := key.(crypto.Signer)
	if !ok {
		return nil, nil, usageError{fmt.Errorf("--key %s: a %T cannot sign", keyPath, key)}
	}
	return certs, s, nil
}

func newDCCSignCmd() *cobra.Command {
	var certPath, keyPath, in, out string
	c := &cobra.Command{
		Use:   "sign --cert CERT --key KEY --in F --out F",
		Short: "Sign a DCC (XAdES baseline-B enveloped signature; schema 3.2.0 or later)",
		Long: `Sign a valid DCC of schema 3.2.0 or later with an enveloped XAdES baseline-B
signature: ECDSA P-256 (r‖s) or RSA with SHA-256. CERT holds the signer
certificate and its intermediates (PEM, leaf first); they go into KeyInfo.
The output is the input byte for byte with the signature inserted before the
root's end tag: keep and serve it exactly as written.`,
		Args: sealNoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			certs, key, err := signerFromFiles(certPath, keyPath)
			if err != nil {
				return err
			}
			src, err := readInput(cmd, in, dcc.MaxBytes)
			if err != nil {
				return err
			}
			signed, err := dcc.Sign(src, key, certs, time.Now())
			if err != nil {
				return fmt.Errorf("%s: %w", in, err)
			}
			return writeOutput(cmd, out, signed)
		},
	}
	f := c.Flags()
	f.StringVar(&certPath, "cert", "", "signer certificate and intermediates (PEM, leaf first)")
	f.StringVar(&keyPath, "key", "", "signer private key (PKCS#8 or SEC1 PEM)")
	f.StringVar(&in, "in", "-", "DCC file; - for stdin")
	f.StringVar(&out, "out", "-", "signed DCC file; - for stdout")
	return c
}

// verifyInputs reads --trust, --intermediates and --crl files.
func verifyInputs(trust, inter, crls []string) (xades.VerifyOptions, error) {
	var o xades.VerifyOptions
	if len(trust) == 0 {
		return o, usageError{errors.New("give --trust ROOT: the lab root (or roots) whose signatures count")}
	}
	for _, p := range trust {
		cs, err := readCertFile(p)
		if err != nil {
			return o, usageError{fmt.Errorf("--trust: %w", err)}
		}
		o.Roots = append(o.Roots, cs...)
	}
	for _, p := range inter {
		cs, err := readCertFile(p)
		if err != nil {
			return o, usageError{fmt.Errorf("--intermediates: %w", err)}
		}
		o.Intermediates = append(o.Intermediates, cs...)
	}
	for _, p := range crls {
		l, err := readCRLFile(p)
		if err != nil {
			return o, usageError{fmt.Errorf("--crl: %w", err)}
		}
		o.CRLs = append(o.CRLs, l)
	}
	return o, nil
}

func newDCCVerifyCmd() *cobra.Command {
	var (
		trust, inter, crls []string
		at, in             string
		asJSON             bool
	)
	c := &cobra.Command{
		Use:   "verify --trust ROOT [--trust ROOT ...] [--intermediates F ...] [--crl F ...] [--at RFC3339] --in F [--json]",
		Short: "Verify a signed DCC: schema, every reference, signer chain and revocation at the signing time",
		Long: `Verify a signed DCC. Exit 0 only for a valid signature; otherwise exit 1 with
the typed reason on stderr: manipulated (which reference failed), untrusted,
revoked (since when), schema-invalid (with errors), unsupported (what).

The verification time is the signature's signing time unless --at says
otherwise: a lab certificate that has expired since does not invalidate the
DCCs it signed. Intermediates come from KeyInfo, the XAdES certificate values
and --intermediates; CRLs from --crl and the XAdES revocation values.`,
		Args: sealNoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			opts, err := verifyInputs(trust, inter, crls)
			if err != nil {
				return err
			}
			if at != "" {
				t, err := time.Parse(time.RFC3339, at)
				if err != nil {
					return usageError{fmt.Errorf("--at: %w (give an RFC 3339 time like 2026-01-31T12:00:00Z)", err)}
				}
				opts.At = t
			}
			src, err := readInput(cmd, in, dcc.MaxBytes)
			if err != nil {
				return err
			}
			r := dcc.Verify(src, opts)
			if asJSON {
				b, _ := json.MarshalIndent(r.JSON(), "", "  ")
				cmd.OutOrStdout().Write(append(b, '\n'))
			}
			for _, e := range r.SchemaErrors {
				fmt.Fprintf(cmd.ErrOrStderr(), "%s:%s\n", in, e)
			}
			if r.Status != xades.Valid {
				return fmt.Errorf("%s: %s: %s", in, r.Status, r.Reason)
			}
			fmt.Fprintf(cmd.ErrOrStderr(), "%s: valid: %s\n", in, r.Reason)
			return nil
		},
	}
	f := c.Flags()
	f.StringArrayVar(&trust, "trust", nil, "trusted lab root certificate file (PEM); repeat for several")
	f.StringArrayVar(&inter, "intermediates", nil, "intermediate CA certificates (PEM), besides those in the signature")
	f.StringArrayVar(&crls, "crl", nil, "CRL file (PEM or DER); repeat for several")
	f.StringVar(&at, "at", "", "verify at this time (RFC 3339) instead of the signing time")
	f.StringVar(&in, "in", "-", "signed DCC file; - for stdin")
	f.BoolVar(&asJSON, "json", false, "print the result as JSON on stdout")
	return c
}

func newDCCSealCmd() *cobra.Command {
	var to []string
	var signCert, signKey, in, out string
	c := &cobra.Command{
		Use:   "seal --to CERT [--to CERT ...] --sign-cert C --sign-key K --in F --out F",
		Short: "Encrypt a signed DCC for its readers and sign the envelope as the lab",
		Long: `Seal a signed DCC for the client: CMS AuthEnvelopedData (AES-256-GCM) for every
--to certificate (the client's e2e certificate, optionally the registry's),
wrapped in CMS SignedData by the lab (--sign-cert, ECDSA with a subject key
identifier; the chain in the file is embedded) so that anyone on the way can
check who sent it without reading it. Opens with 'fieldtrust dcc open' or
OpenSSL (docs/dcc.md).`,
		Args: sealNoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if len(to) == 0 {
				return usageError{errors.New("no recipients: give --to CERT for the client (and the registry)")}
			}
			var recips []*x509.Certificate
			for _, p := range to {
				cs, err := readCertFile(p)
				if err != nil {
					return usageError{fmt.Errorf("--to: %w", err)}
				}
				recips = append(recips, cs[0])
			}
			certs, key, err := signerFromFiles(signCert, signKey)
			if err != nil {
				return err
			}
			src, err := readInput(cmd, in, dcc.MaxBytes)
			if err != nil {
				return err
			}
			sealed, err := dcc.Seal(src, recips, &envelope.Signer{Cert: certs[0], Key: key, Chain: certs[1:], EmbedCerts: true})
			if err != nil {
				return err
			}
			return writeOutput(cmd, out, sealed)
		},
	}
	f := c.Flags()
	f.StringArrayVar(&to, "to", nil, "recipient certificate (PEM); repeat for each reader")
	f.StringVar(&signCert, "sign-cert", "", "lab certificate and intermediates (PEM, leaf first)")
	f.StringVar(&signKey, "sign-key", "", "lab private key (PEM)")
	f.StringVar(&in, "in", "-", "signed DCC file; - for stdin")
	f.StringVar(&out, "out", "-", "sealed file (DER); - for stdout")
	return c
}

func newDCCOpenCmd() *cobra.Command {
	var certPath, keyPath, in, out string
	var trust, inter, crls []string
	c := &cobra.Command{
		Use:   "open --cert C --key K --trust ROOT --in F --out F",
		Short: "Open a sealed DCC: check the lab's envelope signature, decrypt, verify the DCC",
		Args:  sealNoArgs,
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
			opts, err := verifyInputs(trust, inter, crls)
			if err != nil {
				return err
			}
			sealed, err := readInput(cmd, in, envelope.MaxEnvelopeBytes)
			if err != nil {
				return err
			}
			o, err := dcc.Open(cmd.Context(), sealed, certs[0], key, opts)
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.ErrOrStderr(), "sender: %s (envelope signed %s)\ndcc:    valid: %s\n", o.Sender, o.SenderAt.UTC().Format(time.RFC3339), o.Report.Reason)
			return writeOutput(cmd, out, o.DCC)
		},
	}
	f := c.Flags()
	f.StringVar(&certPath, "cert", "", "recipient certificate (PEM)")
	f.StringVar(&keyPath, "key", "", "recipient private key (PEM)")
	f.StringArrayVar(&trust, "trust", nil, "trusted lab root (PEM); repeat for several")
	f.StringArrayVar(&inter, "intermediates", nil, "intermediate CA certificates (PEM)")
	f.StringArrayVar(&crls, "crl", nil, "CRL file; repeat for several")
	f.StringVar(&in, "in", "-", "sealed file; - for stdin")
	f.StringVar(&out, "out", "-", "DCC file; - for stdout")
	return c
}
