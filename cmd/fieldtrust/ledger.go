package main

import (
	"bufio"
	"bytes"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/fieldtrust/fieldtrust/internal/ledger"
	"github.com/fieldtrust/fieldtrust/internal/pki"
	"github.com/fieldtrust/fieldtrust/internal/snapshot"
)

func newLedgerCmd() *cobra.Command {
	c := &cobra.Command{
		Use:   "ledger",
		Short: "Check the platform's ledger offline: signed tree heads, proofs and exports",
		Long: `The platform appends the hash of every snapshot it accepts to an append-only
Merkle log and signs its tree head every few seconds. With the e2e root
certificate (GET /ca/e2e.pem) a customer checks, without network and without
trusting the platform's database, what the platform received.

See docs/ledger.md for the walkthrough.`,
	}
	c.AddCommand(newLedgerVerifyCmd())
	return c
}

func newLedgerVerifyCmd() *cobra.Command {
	var (
		rootFile, headFile, proofFile, snapFile, prevHeadFile, consFile string
		exportFiles                                                     []string
		allowGaps, quiet                                                bool
	)
	c := &cobra.Command{
		Use:   "verify --e2e-root ROOT.pem (--export FILE... | --head HEAD.json [--proof PROOF.json --snapshot SNAP.cbor]) [--previous-head OLD.json --consistency PROOF.json]",
		Short: "Verify an export, or one snapshot, against a signed tree head",
		Long: `Verify offline what the platform received.

--export FILE (GET /api/v1/export) checks the export's signed tree head (the
signer must be the e2e services CA's "ledger" service, under ROOT.pem), then
every snapshot: its encoding (strictly decoded), its hash and ledger leaf, its
inclusion proof against the head, and that each device's snapshots chain by
seq and prev hash. Gaps in a chain fail the check unless --allow-gaps. An
export of several pages (each page's "next" is the next one's after=) is
checked as one: repeat --export for every page, in order. A page that says
more follow verifies, with a note that the export continues.

--head HEAD.json (GET /api/v1/ledger/head) checks a signed tree head; with
--proof PROOF.json (GET /api/v1/ledger/proof/{hash}?size=SIZE) and
--snapshot SNAP.cbor (the snapshot's encoding) it checks that one snapshot.

--previous-head OLD.json with --consistency PROOF.json
(GET /api/v1/ledger/consistency?from=OLD&to=NEW) proves that the log of a
head kept earlier is a prefix of the current one: nothing was altered or
removed since.

Exits 0 when everything verifies, 1 naming the first failed check.`,
		Example: `  fieldtrust ledger verify --e2e-root e2e.pem --export export.json
  fieldtrust ledger verify --e2e-root e2e.pem --export page-1.json --export page-2.json --export page-3.json
  fieldtrust ledger verify --e2e-root e2e.pem --export export.json --previous-head head-june.json --consistency cons.json
  fieldtrust ledger verify --e2e-root e2e.pem --head head.json --proof proof.json --snapshot snap.cbor`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			switch {
			case rootFile == "":
				return usageError{errors.New("--e2e-root ROOT.pem is required (GET /ca/e2e.pem once, and keep it)")}
			case (len(exportFiles) == 0) == (headFile == ""):
				return usageError{errors.New("give exactly one of --export FILE and --head HEAD.json")}
			case (proofFile == "") != (snapFile == ""):
				return usageError{errors.New("--proof and --snapshot go together")}
			case proofFile != "" && len(exportFiles) > 0:
				return usageError{errors.New("--proof and --snapshot go with --head, not --export (an export carries its proofs)")}
			case (prevHeadFile == "") != (consFile == ""):
				return usageError{errors.New("--previous-head and --consistency go together")}
			}
			root, err := readRoot(rootFile)
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			var head ledger.Checkpoint
			if len(exportFiles) > 0 {
				rep, err := verifyExportFiles(exportFiles, root, allowGaps, quiet, cmd.ErrOrStderr())
				if err != nil {
					return err
				}
				head = rep.Head
				pages := ""
				if rep.Pages > 1 {
					pages = fmt.Sprintf(" in %d pages", rep.Pages)
				}
				fmt.Fprintf(out, "verified %d snapshots of %d devices%s against tree head of size %d signed at %s by %s\n",
					rep.Snapshots, rep.Devices, pages, head.Size, head.Time.Format(time.RFC3339), ledger.SignerIdentity)
				if rep.Header.Version >= ledger.ExportVersion {
					fmt.Fprintf(out, "verified %d device messages sent to and received from the scope's gateways%s\n", rep.Messages, messageKinds(rep.MessageKinds))
				}
				for _, g := range rep.Gaps {
					fmt.Fprintf(out, "gap: %s\n", g)
				}
				if rep.MoreGaps > 0 {
					fmt.Fprintf(out, "gap: %d more\n", rep.MoreGaps)
				}
				if rep.NotYetCovered > 0 {
					fmt.Fprintf(out, "note: %d snapshots in range arrived after this head was signed and are not in the export; export again shortly for them\n", rep.NotYetCovered)
				}
				if rep.MessagesNotYetCovered > 0 {
					fmt.Fprintf(out, "note: %d device messages in range are not yet in this head and not in the export; export again shortly for them\n", rep.MessagesNotYetCovered)
				}
				if rep.Next != "" {
					fmt.Fprintf(out, "note: the export continues after %s: fetch the next page with after=%s and verify all pages together (repeat --export, in order)\n", exportFiles[len(exportFiles)-1], rep.Next)
				}
			} else {
				var h ledger.SignedHead
				if err := readJSONFile(headFile, &h); err != nil {
					return err
				}
				if head, err = ledger.VerifyHead(h, root); err != nil {
					return fmt.Errorf("%s: %w", headFile, err)
				}
				if proofFile == "" {
					fmt.Fprintf(out, "tree head of size %d signed at %s by %s verifies\n", head.Size, head.Time.Format(time.RFC3339), ledger.SignerIdentity)
				} else {
					var p ledger.InclusionProof
					if err := readJSONFile(proofFile, &p); err != nil {
						return err
					}
					enc, err := readLimited(snapFile, snapshot.MaxEncoded)
					if err != nil {
						return err
					}
					if _, err := ledger.VerifySnapshot(head, p, enc); err != nil {
						return fmt.Errorf("snapshot %s (%s seq %d): %w", snapFile, p.Path, p.Seq, err)
					}
					fmt.Fprintf(out, "verified snapshot %s seq %d (leaf %d) against tree head of size %d signed at %s by %s\n",
						p.Path, p.Seq, p.LeafIndex, head.Size, head.Time.Format(time.RFC3339), ledger.SignerIdentity)
				}
			}
			if prevHeadFile != "" {
				var h ledger.SignedHead
				if err := readJSONFile(prevHeadFile, &h); err != nil {
					return err
				}
				old, err := ledger.VerifyHead(h, root)
				if err != nil {
					return fmt.Errorf("previous head %s: %w", prevHeadFile, err)
				}
				var p ledger.ConsistencyProof
				if err := readJSONFile(consFile, &p); err != nil {
					return err
				}
				if err := ledger.VerifyHeadConsistency(old, head, p); err != nil {
					return fmt.Errorf("%s: %w", consFile, err)
				}
				fmt.Fprintf(out, "the previous tree head of size %d signed at %s is a prefix of the tree head of size %d: nothing was altered or removed\n",
					old.Size, old.Time.Format(time.RFC3339), head.Size)
			}
			return nil
		},
	}
	f := c.Flags()
	f.StringVar(&rootFile, "e2e-root", "", "the platform's e2e root certificate (PEM), the trust anchor")
	f.StringArrayVar(&exportFiles, "export", nil, "an export (GET /api/v1/export) to verify completely; repeat for each page, in order")
	f.StringVar(&headFile, "head", "", "a signed tree head (GET /api/v1/ledger/head)")
	f.StringVar(&proofFile, "proof", "", "an inclusion proof (GET /api/v1/ledger/proof/{hash}?size=SIZE of --head)")
	f.StringVar(&snapFile, "snapshot", "", "the snapshot's encoding (CBOR) that --proof proves")
	f.StringVar(&prevHeadFile, "previous-head", "", "a signed tree head kept from earlier")
	f.StringVar(&consFile, "consistency", "", "a consistency proof from --previous-head's size to the current head's (GET /api/v1/ledger/consistency)")
	f.BoolVar(&allowGaps, "allow-gaps", false, "report gaps in devices' hash chains without failing")
	f.BoolVar(&quiet, "quiet", false, "no progress lines on stderr")
	return c
}

// verifyExportFiles verifies the pages of one export, in order.
func verifyExportFiles(names []string, root *x509.Certificate, allowGaps, quiet bool, progress io.Writer) (*ledger.ExportReport, error) {
	opts := ledger.ExportOptions{Root: root, AllowGaps: allowGaps}
	if !quiet {
		opts.Progress = func(n int) { fmt.Fprintf(progress, "%d snapshots verified...\n", n) }
	}
	v, err := ledger.NewExportVerifier(opts)
	if err != nil {
		return nil, err
	}
	for _, name := range names {
		if err := verifyPage(v, name); err != nil {
			return nil, err
		}
	}
	rep, err := v.Finish()
	if err != nil {
		return nil, fmt.Errorf("%s: %w", strings.Join(names, ", "), err)
	}
	return rep, nil
}

func verifyPage(v *ledger.ExportVerifier, name string) error {
	f, err := os.Open(name)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := v.Page(bufio.NewReaderSize(f, 1<<20)); err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	return nil
}

// readRoot reads the e2e root: one self-signed CA certificate.
func readRoot(name string) (*x509.Certificate, error) {
	certs, err := pki.ReadCertsFile(name)
	if err != nil {
		return nil, err
	}
	if len(certs) != 1 || !certs[0].IsCA || certs[0].CheckSignatureFrom(certs[0]) != nil {
		return nil, fmt.Errorf("%s: want one self-signed root CA certificate (GET /ca/e2e.pem)", name)
	}
	return certs[0], nil
}

// maxJSONFile bounds heads and proofs, which are a few KiB.
const maxJSONFile = 1 << 20

// readJSONFile decodes a head or proof strictly: no unknown fields, no
// trailing data.
func readJSONFile(name string, v any) error {
	b, err := readLimited(name, maxJSONFile)
	if err != nil {
		return err
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return fmt.Errorf("%s: data after the JSON object", name)
	}
	return nil
}

func readLimited(name string, limit int64) ([]byte, error) {
	f, err := os.Open(name)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, limit+1))
	if err != nil {
		return nil, err
	}
	if int64(len(b)) > limit {
		return nil, fmt.Errorf("%s: larger than %d bytes", name, limit)
	}
	return b, nil
}

// messageKinds is " (3 command, 2 result)": the kinds in a stable order.
func messageKinds(kinds map[string]int) string {
	var parts []string
	for _, k := range slices.Sorted(maps.Keys(kinds)) {
		parts = append(parts, fmt.Sprintf("%d %s", kinds[k], k))
	}
	if len(parts) == 0 {
		return ""
	}
	return " (" + strings.Join(parts, ", ") + ")"
}
