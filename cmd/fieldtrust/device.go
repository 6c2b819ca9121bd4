package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/schollz/progressbar/v3"
	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/fieldtrust/fieldtrust/internal/claim"
	"github.com/fieldtrust/fieldtrust/internal/datadir"
	"github.com/fieldtrust/fieldtrust/internal/store"
)

func newDeviceCmd() *cobra.Command {
	c := &cobra.Command{
		Use:   "device",
		Short: "Claim devices for zero-touch onboarding and list claims",
		Long: `A claim pre-assigns a device, named by its manufacturer onboarding certificate
(the manufacturer CA that issued it, and the certificate's serial number or
subject common name), to an identity path master/account/device. When the
device first calls EST simpleenroll with that certificate, it receives a
transport certificate for the path and the claim is consumed. See
docs/onboarding.md.`,
	}
	c.AddCommand(newDeviceClaimCmd(), newDeviceListCmd(), newDeviceAdoptClaimsCmd())
	return c
}

const manufacturerFlagHelp = "trusted manufacturer CA that issued the onboarding certificate: its SHA-256 fingerprint (or a unique prefix of 8+ hex digits) or subject, as 'fieldtrust manufacturer list' shows; may be omitted when only one manufacturer CA is trusted"

func newDeviceClaimCmd() *cobra.Command {
	var dir, subject, serial, path, csvFile, mfr string
	c := &cobra.Command{
		Use:   "claim (--onboarding-subject CN | --onboarding-serial HEX) --path MASTER/ACCOUNT/DEVICE [--manufacturer CA] | --csv FILE",
		Short: "Pre-assign devices to identity paths by their onboarding certificate",
		Long: `Claim one device with --path and either --onboarding-serial (the serial of its
onboarding certificate, hex as openssl prints it: any case, colons optional) or
--onboarding-subject (its subject common name, exact). A serial match is
preferred when both kinds of claim could match a certificate.

A claim names the trusted manufacturer CA the onboarding certificate must be
issued by (--manufacturer, see 'fieldtrust manufacturer list'; it may be
omitted while only one manufacturer CA is trusted). Serials and subjects are
unique only per manufacturer: without this, one trusted manufacturer could
mint a certificate with another's device serial and enroll as that device.

Claim many with --csv FILE: a header row naming the columns, then one device
per line. Columns:

  path                master/account/device (required)
  onboarding_serial   serial in hex          } exactly one of the two
  onboarding_subject  subject common name    } per line
  manufacturer        as --manufacturer (optional; default --manufacturer)

Every line is checked first; if any is wrong, each error is reported with its
line number and nothing is written. Otherwise all claims are written at once.

A device whose path was revoked ('fieldtrust pki revoke PATH') cannot enroll
with its old claim; claiming it again is the deliberate step that lets it.`,
		Example: `  fieldtrust device claim --onboarding-serial 4A:1F:00:9C --path ms-acc-1/acc-1/gw-17
  fieldtrust device claim --path ms-acc-1/acc-1/gw-18 --onboarding-subject ACME-GW-000018 --manufacturer 3f9a6c01
  fieldtrust device claim --csv devices.csv --data ./fieldtrust-data

  devices.csv:
    path,onboarding_serial,onboarding_subject,manufacturer
    ms-acc-1/acc-1/gw-17,4A1F009C,,
    ms-acc-1/acc-1/gw-18,,ACME-GW-000018,CN=Acme IDevID Issuing CA`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var claims []store.Claim
			var lines []int // line of each claim, for --csv
			if csvFile != "" {
				if subject != "" || serial != "" || path != "" {
					return usageError{errors.New("--csv cannot be combined with --path, --onboarding-serial or --onboarding-subject")}
				}
			} else {
				if path == "" {
					return usageError{errors.New("missing --path MASTER/ACCOUNT/DEVICE (or --csv FILE)")}
				}
				if (subject == "") == (serial == "") {
					return usageError{errors.New("give exactly one of --onboarding-serial HEX and --onboarding-subject CN")}
				}
				cl, err := claim.New(path, serial, subject, time.Now())
				if err != nil {
					return usageError{err}
				}
				claims = []store.Claim{cl}
			}
			d, err := datadir.Open(cmd.Context(), dir, nil)
			if err != nil {
				return err
			}
			defer d.Close()
			existing, err := d.Store.Claims(cmd.Context())
			if err != nil {
				return err
			}
			mfrs, err := d.Store.Manufacturers(cmd.Context())
			if err != nil {
				return err
			}
			if csvFile != "" {
				var problems []string
				claims, lines, problems, err = readClaimsCSV(csvFile, existing, mfrs, mfr, cmd.ErrOrStderr())
				if err != nil {
					return err
				}
				if len(problems) > 0 {
					w := cmd.ErrOrStderr()
					const show = 50
					for i, p := range problems {
						if i == show {
							fmt.Fprintf(w, "... and %d more\n", len(problems)-show)
							break
						}
						fmt.Fprintln(w, p)
					}
					return fmt.Errorf("%s: %d bad line(s); nothing was written; fix them and run again", csvFile, len(problems))
				}
			} else {
				m, err := resolveManufacturer(mfrs, mfr)
				if err != nil {
					return err
				}
				claims[0].ManufacturerKeyID, claims[0].ManufacturerSubject = m.KeyID, m.Subject
				if prev, ok := claim.Find(existing, claims[0].ClaimKey); ok {
					return fmt.Errorf("onboarding %s %s of %s is already claimed for %s; pick the device's other certificate field or check 'fieldtrust device list'", claims[0].Kind, claims[0].Value, m.Subject, prev.Path)
				}
			}
			if err := d.Store.PutClaims(cmd.Context(), claims); err != nil {
				if errors.Is(err, store.ErrExists) {
					return fmt.Errorf("%w (claimed concurrently by another operator?); nothing was written", err)
				}
				return err
			}
			w := cmd.OutOrStdout()
			if csvFile != "" {
				fmt.Fprintf(w, "claimed %d device(s) from %s (lines %d-%d)\n", len(claims), csvFile, first(lines), last(lines))
				return nil
			}
			fmt.Fprintf(w, "claimed %s: onboarding certificate with %s %s from %s enrolls as %s\n", claims[0].Path, claims[0].Kind, claimValueText(claims[0]), claims[0].ManufacturerSubject, claims[0].Path)
			return nil
		},
	}
	addDataFlag(c, &dir)
	c.Flags().StringVar(&mfr, "manufacturer", "", manufacturerFlagHelp)
	c.Flags().StringVar(&serial, "onboarding-serial", "", "serial number of the onboarding certificate, hex (any case, colons optional)")
	c.Flags().StringVar(&subject, "onboarding-subject", "", "subject common name of the onboarding certificate")
	c.Flags().StringVar(&path, "path", "", "identity path the device enrolls as: master/account/device")
	c.Flags().StringVar(&csvFile, "csv", "", "claim many devices from a CSV file (see --help for the columns)")
	return c
}

// resolveManufacturer is claim.ResolveManufacturer with a name that
// matches none or several trusted CAs reported as a usage error.
func resolveManufacturer(list []store.Manufacturer, spec string) (claim.Manufacturer, error) {
	m, err := claim.ResolveManufacturer(list, spec)
	if _, ok := errors.AsType[*claim.SpecError](err); ok {
		return m, usageError{err}
	}
	return m, err
}

// readClaimsCSV reads and checks a claims file (claim.ReadCSV), showing
// progress on a long one.
func readClaimsCSV(file string, existing []store.Claim, mfrs []store.Manufacturer, mfr string, progress io.Writer) (claims []store.Claim, lines []int, problems []string, err error) {
	f, err := os.Open(file)
	if err != nil {
		return nil, nil, nil, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, nil, nil, err
	}
	pr := newProgress(progress, st.Size(), "checking "+file)
	defer pr.finish()
	cf, err := claim.ReadCSV(io.TeeReader(f, pr), file, existing, mfrs, mfr, time.Now())
	return cf.Claims, cf.Lines, cf.Problems, err
}

func first(xs []int) int {
	if len(xs) == 0 {
		return 0
	}
	return xs[0]
}

func last(xs []int) int {
	if len(xs) == 0 {
		return 0
	}
	return xs[len(xs)-1]
}

// progress reports how far a long file has been read: a progress bar on a
// terminal, otherwise a line every progressEvery (so logs of a CI job or a
// redirected stderr stay readable). Short runs print nothing.
type progress struct {
	w     io.Writer
	bar   *progressbar.ProgressBar // nil unless w is a terminal
	total int64
	done  int64
	label string
	start time.Time
	last  time.Time
}

const progressEvery = 2 * time.Second

func newProgress(w io.Writer, total int64, label string) *progress {
	p := &progress{w: w, total: total, label: label, start: time.Now()}
	p.last = p.start
	if f, ok := w.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
		p.bar = progressbar.NewOptions64(total,
			progressbar.OptionSetWriter(w),
			progressbar.OptionSetDescription(label),
			progressbar.OptionShowBytes(true),
			progressbar.OptionThrottle(100*time.Millisecond),
			progressbar.OptionClearOnFinish(),
		)
	}
	return p
}

// Write counts bytes read through it.
func (p *progress) Write(b []byte) (int, error) {
	p.done += int64(len(b))
	if p.bar != nil {
		p.bar.Add64(int64(len(b)))
		return len(b), nil
	}
	if now := time.Now(); now.Sub(p.last) >= progressEvery {
		p.last = now
		fmt.Fprintf(p.w, "%s: %d%% (%d of %d bytes)\n", p.label, percent(p.done, p.total), p.done, p.total)
	}
	return len(b), nil
}

func (p *progress) finish() {
	if p.bar != nil {
		p.bar.Finish()
		return
	}
	if p.last != p.start { // a progress line was printed: close the series
		fmt.Fprintf(p.w, "%s: done (%d bytes)\n", p.label, p.done)
	}
}

func percent(done, total int64) int64 {
	if total <= 0 {
		return 100
	}
	return done * 100 / total
}

func newDeviceListCmd() *cobra.Command {
	var dir string
	c := &cobra.Command{
		Use:     "list",
		Short:   "List device claims and whether they have enrolled",
		Example: `  fieldtrust device list --data ./fieldtrust-data`,
		Args:    noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			d, err := datadir.Open(cmd.Context(), dir, nil)
			if err != nil {
				return err
			}
			defer d.Close()
			list, err := d.Store.Claims(cmd.Context())
			if err != nil {
				return err
			}
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "PATH\tONBOARDING\tCLAIMED\tSTATUS\tMANUFACTURER")
			for _, c := range list {
				status := "waiting for enrollment"
				switch {
				case c.Revoked():
					status = fmt.Sprintf("revoked %s (path revoked; claim the device again to re-enroll it)", c.RevokedAt.Format(time.RFC3339))
				case c.Legacy():
					status = "refused: no manufacturer (made before claims named one); run 'fieldtrust device adopt-claims'"
				case c.Consumed():
					status = fmt.Sprintf("enrolled %s (onboarding serial %s)", c.ConsumedAt.Format(time.RFC3339), strings.ToUpper(c.ConsumedBy))
				}
				mfr := c.ManufacturerSubject
				if mfr == "" {
					mfr = "-"
				}
				fmt.Fprintf(tw, "%s\t%s %s\t%s\t%s\t%s\n", c.Path, c.Kind, claimValueText(c), c.CreatedAt.Format(time.DateOnly), status, mfr)
			}
			return tw.Flush()
		},
	}
	addDataFlag(c, &dir)
	return c
}

// claimValueText shows a serial as 'pki list' does (upper case hex).
func claimValueText(c store.Claim) string {
	if c.Kind == store.ClaimBySerial {
		return strings.ToUpper(c.Value)
	}
	return c.Value
}

func newDeviceAdoptClaimsCmd() *cobra.Command {
	var dir, mfr string
	c := &cobra.Command{
		Use:   "adopt-claims [--manufacturer CA]",
		Short: "Assign claims made before claims named a manufacturer to a trusted manufacturer CA",
		Long: `Claims made before claims named the manufacturer CA of the onboarding
certificate are refused at enrollment: matching a serial or subject without
its issuer would let any trusted manufacturer enroll as another's device.
This assigns every such claim to one trusted manufacturer CA (--manufacturer,
optional while only one is trusted), all or nothing. Claims of devices of
another manufacturer must be made again with 'fieldtrust device claim
--manufacturer' instead.`,
		Example: `  fieldtrust device adopt-claims --data ./fieldtrust-data
  fieldtrust device adopt-claims --manufacturer 3f9a6c01 --data ./fieldtrust-data`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			d, err := datadir.Open(cmd.Context(), dir, nil)
			if err != nil {
				return err
			}
			defer d.Close()
			mfrs, err := d.Store.Manufacturers(cmd.Context())
			if err != nil {
				return err
			}
			m, err := resolveManufacturer(mfrs, mfr)
			if err != nil {
				return err
			}
			n, err := d.Store.AdoptLegacyClaims(cmd.Context(), m.KeyID, m.Subject)
			if err != nil {
				if errors.Is(err, store.ErrExists) {
					return fmt.Errorf("%w; nothing was changed: claim the devices of other manufacturers again with 'fieldtrust device claim --manufacturer'", err)
				}
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "assigned %d claim(s) to manufacturer CA %s\n", n, m.Subject)
			return nil
		},
	}
	addDataFlag(c, &dir)
	c.Flags().StringVar(&mfr, "manufacturer", "", manufacturerFlagHelp)
	return c
}
