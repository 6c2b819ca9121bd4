package main

import (
	"crypto/elliptic"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/fieldtrust/fieldtrust/internal/datadir"
	"github.com/fieldtrust/fieldtrust/internal/pki"
	"github.com/fieldtrust/fieldtrust/internal/store"
	"github.com/fieldtrust/fieldtrust/internal/tacs"
)

// serviceRoles are the roles 'pki issue --service' accepts: those the
// platform has grants for (the built-in roles, and a grants file's),
// except the customer sites' role.
func serviceRoles(g tacs.Grants) []string {
	roles := slices.Sorted(maps.Keys(g))
	return slices.DeleteFunc(roles, func(r string) bool { return r == tacs.RoleSite }) // a site's, never a service's
}

func newPKICmd() *cobra.Command {
	c := &cobra.Command{
		Use:   "pki",
		Short: "Manage the platform's certificate authorities (offline, on the data directory)",
		Long: `Manage the transport and end-to-end (e2e) PKIs in a data directory.

These commands work offline on --data and may run while 'fieldtrust up' runs
on the same directory; revocations reach the running platform within seconds.
CA keys are encrypted at rest when ` + pki.PassphraseEnv + ` is set.`,
	}
	c.AddCommand(newPKIInitCmd(), newPKIIssueCmd(), newPKIRevokeCmd(), newPKICRLCmd(), newPKIListCmd())
	return c
}

func newPKIInitCmd() *cobra.Command {
	var dir string
	c := &cobra.Command{
		Use:   "init",
		Short: "Create the root and services CAs of both PKIs (idempotent)",
		Args:  noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			d, err := datadir.Open(cmd.Context(), dir, nil)
			if err != nil {
				return err
			}
			defer d.Close()
			for _, a := range []*pki.Authority{d.Transport, d.E2E} {
				fmt.Fprintf(cmd.OutOrStdout(), "%-9s root CA %s (serial %s, expires %s)\n", a.Domain(), a.Root().Subject.CommonName, serialText(a.Root().SerialNumber), a.Root().NotAfter.Format(time.DateOnly))
			}
			fmt.Fprintf(cmd.OutOrStdout(), "data directory %s is ready\n", dir)
			return nil
		},
	}
	addDataFlag(c, &dir)
	return c
}

func newPKIIssueCmd() *cobra.Command {
	var (
		dir, out, service, role string
		grantsFile              string
		e2e, force, p12, isSite bool
		days                    int
		dnsNames                []string
		ips                     []net.IP
	)
	c := &cobra.Command{
		Use:   "issue [PATH] --out OUTDIR",
		Short: "Issue a leaf certificate and key for an identity path or a platform service",
		Long: `Issue a leaf certificate for identity PATH (master, master/account or
master/account/device), creating missing master-account and account CAs on the
way, or with --service for a platform service with a role.

Writes OUTDIR/cert.pem (leaf followed by its intermediates), OUTDIR/key.pem
(PKCS#8, mode 0600) and OUTDIR/ca.pem (the root of that PKI). With --p12 also
OUTDIR/identity.p12 (mode 0600), for importing into a browser to log into the
web console with the certificate; its password comes from
FIELDTRUST_P12_PASSWORD or is asked for on the terminal.

With --site, PATH is an account (master/account) and the certificate is its
customer site's (fieldtrust site): it forwards the account's gateways to the
platform and may do nothing else (no web API, no EST, no topic outside the
gateway channels of the account). --ip and --dns name the site's LAN address
its gateways connect to; OUTDIR is then the site's --data directory.`,
		Example: `  fieldtrust pki issue --data ./fieldtrust-data ms-acc-1/acc-1/dev-1 --out ./dev-1
  fieldtrust pki issue ms-acc-1/acc-1 --site --ip 192.168.10.5 --out ./site-acc-1
  fieldtrust pki issue ms-acc-1/acc-1/dev-1 --e2e --days 30 --out ./dev-1-e2e
  fieldtrust pki issue --service ingest --role snapshot-reader --out ./ingest
  FIELDTRUST_P12_PASSWORD=... fieldtrust pki issue acme-pumps --p12 --out ./acme-pumps`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			req := pki.LeafRequest{Validity: time.Duration(days) * 24 * time.Hour}
			switch {
			case isSite && (service != "" || e2e):
				return usageError{errors.New("--site issues a transport certificate of an account: not with --service or --e2e")}
			case (len(dnsNames) > 0 || len(ips) > 0) && !isSite:
				return usageError{errors.New("--dns and --ip name a site's LAN address: use them with --site")}
			case service != "" && len(args) > 0:
				return usageError{errors.New("give either an identity PATH or --service, not both")}
			case service == "" && len(args) == 0:
				return usageError{errors.New("missing identity PATH (e.g. ms-acc-1/acc-1/dev-1) or --service NAME")}
			case service != "":
				if err := pki.ValidateElement(service); err != nil {
					return usageError{fmt.Errorf("--service: %w", err)}
				}
				grants, err := datadir.Grants(dir, grantsFile)
				if err != nil {
					return err
				}
				if roles := serviceRoles(grants); !e2e && !slices.Contains(roles, role) {
					return usageError{fmt.Errorf("--role %q: a transport service certificate needs one of %s", role, strings.Join(roles, ", "))}
				}
				req.Service = service
			default:
				p, err := pki.ParsePath(args[0])
				if err != nil {
					return usageError{err}
				}
				req.Path = p
				if isSite {
					if len(p) != pki.SitePathElements {
						return usageError{fmt.Errorf("--site: %q is not an account; a site belongs to master/account", p)}
					}
					if len(dnsNames) == 0 && len(ips) == 0 {
						return usageError{errors.New("--site needs the LAN address the gateways connect to: --ip and/or --dns")}
					}
					req.Site, req.DNSNames, req.IPAddresses = true, dnsNames, ips
				}
			}
			if out == "" {
				return usageError{errors.New("missing --out OUTDIR")}
			}
			if days <= 0 {
				return usageError{fmt.Errorf("--days %d: must be positive", days)}
			}
			if err := checkOutDir(out, force); err != nil {
				return err
			}
			var p12Password string
			if p12 {
				var err error
				if p12Password, err = p12PasswordFor(cmd); err != nil {
					return err
				}
			}
			d, err := datadir.Open(cmd.Context(), dir, nil)
			if err != nil {
				return err
			}
			defer d.Close()
			a := d.Transport
			if e2e {
				a = d.E2E
			}
			key, err := pki.GenerateKey(elliptic.P256())
			if err != nil {
				return err
			}
			req.PublicKey = key.Public()
			iss, err := a.Issue(cmd.Context(), req)
			if err != nil {
				return err
			}
			w := cmd.OutOrStdout()
			for _, ca := range iss.CreatedCAs {
				kind := "master-account"
				if strings.Contains(ca, "/") {
					kind = "account"
				}
				fmt.Fprintf(w, "created %s CA %s (%s)\n", kind, ca, a.Domain())
			}
			if service != "" && !e2e {
				if err := d.Store.SetServiceRole(cmd.Context(), service, role); err != nil {
					return err
				}
			}
			if err := os.MkdirAll(out, 0o700); err != nil {
				return err
			}
			keyPEM, err := pki.MarshalKeyPEM(key, nil)
			if err != nil {
				return err
			}
			if err := writeFile(filepath.Join(out, "key.pem"), keyPEM, 0o600, force); err != nil {
				return err
			}
			if err := writeFile(filepath.Join(out, "cert.pem"), pki.EncodeCertsPEM(iss.Chain...), 0o644, force); err != nil {
				return err
			}
			if err := writeFile(filepath.Join(out, "ca.pem"), pki.EncodeCertsPEM(iss.Root), 0o644, force); err != nil {
				return err
			}
			if p12 {
				der, err := pki.EncodePKCS12(key, iss.Chain, p12Password)
				if err != nil {
					return err
				}
				if err := writeFile(filepath.Join(out, "identity.p12"), der, 0o600, force); err != nil {
					return err
				}
				defer fmt.Fprintf(cmd.OutOrStdout(), "wrote %s (PKCS#12, 0600): import it into your browser to log into the console with this certificate\n", filepath.Join(out, "identity.p12"))
			}
			who := iss.Cert.Subject.CommonName
			if service != "" {
				who = "service " + service
				if !e2e {
					who += " (role " + role + ")"
				}
			}
			fmt.Fprintf(w, "issued %s in the %s PKI: serial %s, expires %s\n", who, a.Domain(), serialText(iss.Cert.SerialNumber), iss.Cert.NotAfter.Format(time.RFC3339))
			fmt.Fprintf(w, "wrote %s (leaf + %d intermediates), %s (0600), %s\n",
				filepath.Join(out, "cert.pem"), len(iss.Chain)-1, filepath.Join(out, "key.pem"), filepath.Join(out, "ca.pem"))
			return nil
		},
	}
	addDataFlag(c, &dir)
	c.Flags().StringVar(&out, "out", "", "directory to write cert.pem, key.pem and ca.pem to (required)")
	c.Flags().BoolVar(&e2e, "e2e", false, "issue from the end-to-end PKI instead of the transport PKI")
	c.Flags().IntVar(&days, "days", int(pki.DefaultLeafValidity/(24*time.Hour)), "validity in days (clamped to the issuing CA's)")
	c.Flags().StringVar(&service, "service", "", "issue a platform service certificate with this name")
	c.Flags().StringVar(&role, "role", "", "role of the service: "+strings.Join(serviceRoles(tacs.DefaultGrants()), ", ")+", or one of the grants file's")
	c.Flags().StringVar(&grantsFile, "grants", "", "service grants file that defines --role (default DIR/grants.json if it exists)")
	c.Flags().BoolVar(&force, "force", false, "overwrite existing files in OUTDIR")
	c.Flags().BoolVar(&isSite, "site", false, "issue the customer-site certificate of account PATH (for 'fieldtrust site')")
	c.Flags().StringSliceVar(&dnsNames, "dns", nil, "with --site: DNS name of the site's local broker (repeatable)")
	c.Flags().IPSliceVar(&ips, "ip", nil, "with --site: IP address of the site's local broker (repeatable)")
	c.Flags().BoolVar(&p12, "p12", false, "also write OUTDIR/identity.p12 for a browser (password: FIELDTRUST_P12_PASSWORD, or asked on the terminal)")
	return c
}

// p12PasswordFor returns the PKCS#12 password: FIELDTRUST_P12_PASSWORD, or
// asked twice on the terminal.
func p12PasswordFor(cmd *cobra.Command) (string, error) {
	if p := os.Getenv("FIELDTRUST_P12_PASSWORD"); p != "" {
		return p, nil
	}
	fd := int(os.Stdin.Fd())
	if !term.IsTerminal(fd) {
		return "", usageError{errors.New("--p12: set FIELDTRUST_P12_PASSWORD (no terminal to ask for the password)")}
	}
	ask := func(prompt string) (string, error) {
		fmt.Fprint(cmd.ErrOrStderr(), prompt)
		b, err := term.ReadPassword(fd)
		fmt.Fprintln(cmd.ErrOrStderr())
		return string(b), err
	}
	p, err := ask("password for identity.p12: ")
	if err != nil {
		return "", err
	}
	again, err := ask("again: ")
	if err != nil {
		return "", err
	}
	if p != again {
		return "", errors.New("--p12: the passwords differ")
	}
	if p == "" {
		return "", errors.New("--p12: an empty password would leave the private key unprotected")
	}
	return p, nil
}

func newPKIRevokeCmd() *cobra.Command {
	var (
		dir, serial, reasonName string
		e2e, ca                 bool
	)
	c := &cobra.Command{
		Use:   "revoke (PATH | SERVICE | --serial HEX)",
		Short: "Revoke an identity path, a service's certificates or a serial; revoking a CA revokes everything below it",
		Long: `Revoke an identity path: every certificate of PATH issued until now is refused
wherever it is presented (HTTPS, the broker, envelope signers), nothing is
issued on its authority (re-enrollment), and the device's claim is revoked,
so its onboarding certificate cannot buy the path again. Its valid
certificates are put on the CRLs. To enroll the path again, claim the device
again ('fieldtrust device claim'), a deliberate step.

With --ca, revoke the CA of PATH instead, and with it every certificate below
it. A service name revokes that service's valid certificates; --serial one
certificate. A running 'fieldtrust up' applies every revocation within about
a second.`,
		Example: `  fieldtrust pki revoke ms-acc-1/acc-1/dev-1 --reason keyCompromise
  fieldtrust pki revoke --serial 3F:2A:...:9C
  fieldtrust pki revoke ms-acc-1/acc-2 --ca --reason cessationOfOperation`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if (serial == "") == (len(args) == 0) {
				return usageError{errors.New("give either an identity PATH or --serial HEX")}
			}
			reason, err := pki.ParseReason(reasonName)
			if err != nil {
				return usageError{err}
			}
			var name string
			var sn *big.Int
			if serial != "" {
				if sn, err = pki.ParseSerial(serial); err != nil {
					return usageError{err}
				}
			} else if p, err := pki.ParsePath(args[0]); err == nil {
				name = p.String()
			} else if pki.ValidateElement(args[0]) == nil {
				name = args[0]
			} else {
				return usageError{err}
			}
			d, err := datadir.Open(cmd.Context(), dir, nil)
			if err != nil {
				return err
			}
			defer d.Close()
			a := d.Transport
			if e2e {
				a = d.E2E
			}
			var done []store.Certificate
			switch p, perr := pki.ParsePath(name); {
			case sn != nil:
				r, err := a.Revoke(cmd.Context(), sn, reason)
				if err != nil {
					return err
				}
				done = append(done, r)
			case !ca && perr == nil:
				done, err = a.RevokePath(cmd.Context(), p, reason)
				if errors.Is(err, store.ErrNotFound) {
					// No identity of that name: a service's certificates.
					if done, err = a.RevokeName(cmd.Context(), name, false, reason); err != nil {
						return err
					}
					break
				}
				if err != nil {
					return err
				}
				fmt.Fprintf(cmd.OutOrStdout(), "revoked path %s (%s): every certificate of it issued until now is refused, and nothing is issued on their authority\n", p, a.Domain())
				if a.Domain() == pki.Transport {
					fmt.Fprintln(cmd.OutOrStdout(), "  its device claim is revoked; to enroll the device again, claim it again ('fieldtrust device claim')")
				}
			default:
				if done, err = a.RevokeName(cmd.Context(), name, ca, reason); err != nil {
					return err
				}
			}
			for _, r := range done {
				fmt.Fprintf(cmd.OutOrStdout(), "revoked %s %s (%s, serial %s, reason %s)\n", r.Kind, r.Name, a.Domain(), strings.ToUpper(r.Serial), pki.ReasonName(r.Reason))
				if r.Kind != pki.KindLeaf && r.Kind != pki.KindService {
					fmt.Fprintln(cmd.OutOrStdout(), "  every certificate below this CA is now refused")
				}
			}
			return nil
		},
	}
	addDataFlag(c, &dir)
	c.Flags().StringVar(&serial, "serial", "", "serial number in hex as openssl prints it (any case, colons optional)")
	c.Flags().StringVar(&reasonName, "reason", "unspecified", "CRL reason: keyCompromise, cACompromise, affiliationChanged, superseded, cessationOfOperation, privilegeWithdrawn, ...")
	c.Flags().BoolVar(&e2e, "e2e", false, "revoke in the end-to-end PKI")
	c.Flags().BoolVar(&ca, "ca", false, "with PATH: revoke the CA of that path instead of its leaf certificates")
	return c
}

func newPKICRLCmd() *cobra.Command {
	var dir string
	var e2e bool
	c := &cobra.Command{
		Use:   "crl",
		Short: "Issue and print the current CRLs, one per CA, as PEM",
		Args:  noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			d, err := datadir.Open(cmd.Context(), dir, nil)
			if err != nil {
				return err
			}
			defer d.Close()
			a := d.Transport
			if e2e {
				a = d.E2E
			}
			crls, err := a.CRLs(cmd.Context())
			if err != nil {
				return err
			}
			for _, crl := range crls {
				if _, err := cmd.OutOrStdout().Write(pki.EncodeCRLPEM(crl)); err != nil {
					return err
				}
			}
			return nil
		},
	}
	addDataFlag(c, &dir)
	c.Flags().BoolVar(&e2e, "e2e", false, "the end-to-end PKI's CRLs")
	return c
}

func newPKIListCmd() *cobra.Command {
	var dir string
	c := &cobra.Command{
		Use:   "list",
		Short: "List issued certificates with path, serial, expiry and status",
		Args:  noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			d, err := datadir.Open(cmd.Context(), dir, nil)
			if err != nil {
				return err
			}
			defer d.Close()
			all, err := d.Store.ListCertificates(cmd.Context(), store.CertFilter{})
			if err != nil {
				return err
			}
			bySerial := map[string]store.Certificate{}
			for _, c := range all {
				bySerial[c.Domain+"/"+c.Serial] = c
			}
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "DOMAIN\tKIND\tNAME\tSERIAL\tEXPIRES\tSTATUS")
			now := time.Now()
			for _, c := range all {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", c.Domain, c.Kind, c.Name, strings.ToUpper(c.Serial), c.NotAfter.Format(time.DateOnly), status(c, bySerial, now))
			}
			return tw.Flush()
		},
	}
	addDataFlag(c, &dir)
	return c
}

// status describes a certificate's state, including revocation inherited
// from a revoked CA above it.
func status(c store.Certificate, bySerial map[string]store.Certificate, now time.Time) string {
	if c.Revoked() {
		return "revoked (" + pki.ReasonName(c.Reason) + ")"
	}
	for p, ok := bySerial[c.Domain+"/"+c.IssuerSerial]; ok; p, ok = bySerial[c.Domain+"/"+p.IssuerSerial] {
		if p.Revoked() {
			return "revoked (CA " + p.Name + ")"
		}
		if p.IssuerSerial == "" {
			break
		}
	}
	if now.After(c.NotAfter) {
		return "expired"
	}
	return "valid"
}

func serialText(n *big.Int) string { return strings.ToUpper(pki.SerialHex(n)) }

func noArgs(cmd *cobra.Command, args []string) error {
	if len(args) > 0 {
		return usageError{fmt.Errorf("unexpected argument %q (see '%s --help')", args[0], cmd.CommandPath())}
	}
	return nil
}

// checkOutDir refuses to overwrite credentials unless forced.
func checkOutDir(out string, force bool) error {
	if force {
		return nil
	}
	for _, f := range []string{"key.pem", "cert.pem", "ca.pem"} {
		if _, err := os.Stat(filepath.Join(out, f)); !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("%s already exists; choose another --out directory or pass --force to overwrite", filepath.Join(out, f))
		}
	}
	return nil
}

func writeFile(file string, data []byte, mode os.FileMode, force bool) error {
	flags := os.O_WRONLY | os.O_CREATE | os.O_EXCL
	if force {
		flags = os.O_WRONLY | os.O_CREATE | os.O_TRUNC
	}
	f, err := os.OpenFile(file, flags, mode)
	if err != nil {
		return err
	}
	if err := f.Chmod(mode); err != nil {
		f.Close()
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
