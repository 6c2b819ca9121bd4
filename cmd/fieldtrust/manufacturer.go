package main

import (
	"crypto/x509"
	"errors"
	"fmt"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/fieldtrust/fieldtrust/internal/datadir"
	"github.com/fieldtrust/fieldtrust/internal/pki"
	"github.com/fieldtrust/fieldtrust/internal/store"
)

func newManufacturerCmd() *cobra.Command {
	c := &cobra.Command{
		Use:   "manufacturer",
		Short: "Manage the manufacturer CAs whose onboarding certificates may enroll",
		Long: `A gateway leaves the factory with an onboarding certificate (IDevID) from its
manufacturer. Devices whose onboarding certificate chains to a trusted
manufacturer CA may call EST enrollment (and nothing else), once they are
claimed with 'fieldtrust device claim'. See docs/onboarding.md.`,
	}
	c.AddCommand(newManufacturerTrustCmd(), newManufacturerListCmd())
	return c
}

func newManufacturerTrustCmd() *cobra.Command {
	var dir string
	c := &cobra.Command{
		Use:   "trust CA.pem",
		Short: "Trust the manufacturer onboarding CA certificate(s) in a PEM file",
		Long: `Trust every CA certificate in CA.pem as a manufacturer onboarding CA. Give
the manufacturer's root (or the intermediate that issues device certificates,
to trust only that production line). Takes effect for the running platform at
once. Trusting a CA twice is harmless.

A fieldtrust CA cannot be a manufacturer CA: onboarding trust and operational
trust stay apart.`,
		Example: `  fieldtrust manufacturer trust --data ./fieldtrust-data acme-idevid-root.pem
  fieldtrust manufacturer trust acme-idevid-root.pem --data ./fieldtrust-data`,
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) != 1 {
				return usageError{fmt.Errorf("give exactly one PEM file of CA certificates (see '%s --help')", cmd.CommandPath())}
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			certs, err := pki.ReadCertsFile(args[0])
			if err != nil {
				return fmt.Errorf("read manufacturer CA: %w", err)
			}
			now := time.Now()
			for _, c := range certs {
				if !c.BasicConstraintsValid || !c.IsCA {
					return fmt.Errorf("%s: %q is not a CA certificate (basicConstraints CA:TRUE); give the manufacturer's CA, not a device certificate", args[0], c.Subject)
				}
				if now.After(c.NotAfter) {
					return fmt.Errorf("%s: CA %q expired on %s", args[0], c.Subject, c.NotAfter.Format(time.DateOnly))
				}
			}
			d, err := datadir.Open(cmd.Context(), dir, nil)
			if err != nil {
				return err
			}
			defer d.Close()
			w := cmd.OutOrStdout()
			for _, c := range certs {
				if isFieldtrustCA(cmd, d, c) {
					return fmt.Errorf("%s: %q is a fieldtrust CA of this platform; onboarding trust must come from the manufacturer", args[0], c.Subject)
				}
				fp := pki.Fingerprint(c)
				err := d.Store.AddManufacturer(cmd.Context(), store.Manufacturer{
					Fingerprint: fp, Subject: c.Subject.String(), NotAfter: c.NotAfter, DER: c.Raw, AddedAt: now,
				})
				switch {
				case errors.Is(err, store.ErrExists):
					fmt.Fprintf(w, "already trusted: %s (SHA-256 %s)\n", c.Subject, fp)
				case err != nil:
					return err
				default:
					fmt.Fprintf(w, "trusted manufacturer CA %s (SHA-256 %s, expires %s)\n", c.Subject, fp, c.NotAfter.Format(time.DateOnly))
				}
			}
			return nil
		},
	}
	addDataFlag(c, &dir)
	return c
}

func newManufacturerListCmd() *cobra.Command {
	var dir string
	c := &cobra.Command{
		Use:     "list",
		Short:   "List the trusted manufacturer CAs",
		Example: `  fieldtrust manufacturer list --data ./fieldtrust-data`,
		Args:    noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			d, err := datadir.Open(cmd.Context(), dir, nil)
			if err != nil {
				return err
			}
			defer d.Close()
			list, err := d.Store.Manufacturers(cmd.Context())
			if err != nil {
				return err
			}
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "SUBJECT\tSHA-256\tEXPIRES\tADDED")
			for _, m := range list {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", m.Subject, m.Fingerprint, m.NotAfter.Format(time.DateOnly), m.AddedAt.Format(time.DateOnly))
			}
			return tw.Flush()
		},
	}
	addDataFlag(c, &dir)
	return c
}

// isFieldtrustCA reports whether c is a certificate of this platform's own
// PKIs.
func isFieldtrustCA(cmd *cobra.Command, d *datadir.Dir, c *x509.Certificate) bool {
	for _, domain := range []pki.Domain{pki.Transport, pki.E2E} {
		rec, err := d.Store.Certificate(cmd.Context(), string(domain), pki.SerialHex(c.SerialNumber))
		if err == nil && string(rec.DER) == string(c.Raw) {
			return true
		}
	}
	return false
}
