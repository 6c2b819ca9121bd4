package ledger

import (
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"time"

	"github.com/fieldtrust/fieldtrust/internal/pki"
	"github.com/fieldtrust/fieldtrust/internal/snapshot"
)

// This file holds what a customer needs to check, offline, what the
// platform received: the JSON forms of a signed tree head, an inclusion
// proof, a consistency proof and an export (shared by the API, which
// writes them, and 'fieldtrust ledger verify', which reads them), and the
// verification itself.

// SignedHead is a signed tree head as the API serves it
// (GET /api/v1/ledger/head, and the tree_head of an export). Only the
// checkpoint text, the signature and the chain are trusted, after
// VerifyHead; Size and Root are conveniences that must agree with the
// checkpoint.
type SignedHead struct {
	Size       uint64 `json:"size"`
	Root       string `json:"root"`              // hex
	Checkpoint string `json:"checkpoint"`        // the signed text (Checkpoint.Marshal)
	Signature  string `json:"signature"`         // base64 of an ASN.1 DER ECDSA signature
	CertChain  string `json:"certificate_chain"` // PEM, signer first, then the e2e services CA
}

// InclusionProof is the inclusion proof of one snapshot as the API serves
// it (GET /api/v1/ledger/proof/{hash}).
type InclusionProof struct {
	Path      string   `json:"path"`      // gateway path / device
	Seq       uint64   `json:"seq"`       // the snapshot's seq
	Hash      string   `json:"hash"`      // snapshot hash, hex
	LeafData  string   `json:"leaf_data"` // base64 of LeafData (recomputed by the verifier, never trusted)
	LeafIndex uint64   `json:"leaf_index"`
	TreeSize  uint64   `json:"tree_size"`
	Proof     []string `json:"proof"` // hex node hashes
}

// ConsistencyProof proves that the tree of size From is a prefix of the
// tree of size To (GET /api/v1/ledger/consistency).
type ConsistencyProof struct {
	From  uint64   `json:"from"`
	To    uint64   `json:"to"`
	Proof []string `json:"proof"` // hex node hashes
}

// ExportVersion is the version of the export format with device
// messages (2); version 1, an export of snapshots only, is still read.
const ExportVersion = 2

// ExportVersionSnapshots is the version of an export without device
// messages (what an API without a message store writes).
const ExportVersionSnapshots = 1

// ExportHeader is everything of an export page except its snapshots.
//
// # Export format (version 1)
//
// An export is one or more pages. A page is one JSON object whose members
// come in this order, so that it can be written and checked as a stream,
// one snapshot at a time:
//
//	{
//	  "version":   1,                  always first; a reader refuses any other
//	  "scope":     "ms-1",             the caller's subtree; "" means everything (admin)
//	  "from":      "2026-...Z",        the requested measurement-time bounds,
//	  "to":        "2026-...Z",        RFC 3339; absent when open
//	  "after":     "<cursor>",         the previous page's "next"; absent on the first page
//	  "tree_head": { SignedHead },     the latest signed tree head when the page began
//	  "snapshots": [ ExportSnapshot, ... ],
//	  "count":     N,                  the number of snapshots above: a truncated
//	                                   page never passes for a complete one
//	  "device_messages": [ ExportMessage, ... ],   version 2, last page only: every
//	                                   command, campaign notice, firmware download,
//	                                   result, status report and refusal of the
//	                                   scope's gateways recorded in [from, to) and
//	                                   covered by the first page's tree_head
//	  "message_count": K,              the number of messages above (version 2, last page)
//	  "messages_not_yet_covered": J,   messages in range not yet in that tree head
//	  "not_yet_covered": M,            snapshots in range that arrived after the
//	                                   first page's tree_head was signed and are
//	                                   left out; export again later for them
//	  "next":      "<cursor>"          present when more pages follow: ask for
//	                                   the next one with after=<cursor>
//	}
//
// Snapshots are in the order of the store's queries: ascending
// measurement time, then gateway path, device and seq, continuing from
// page to page. Readers reject unknown members, members out of order and
// trailing data; a change of meaning gets a new version.
//
// The header is not signed: from, to and scope say what was asked for.
// Each snapshot is proved by its inclusion proof against tree_head, whose
// signature is the platform's. What an export cannot prove is that it is
// complete at its ends: a verifier detects snapshots removed inside a
// device's chain (the next one's prev hash names them), and, for an
// export without "from", removed first snapshots (every chain must start
// at seq 1), but not removed last ones.
//
// Version 2 adds the device messages (ledger.MessageRecord): each is
// proved by its inclusion proof against tree_head too. The last page of a
// version 2 export (no "next") must carry them, with their count; other
// pages must not.
type ExportHeader struct {
	Version  int        `json:"version"`
	Scope    string     `json:"scope"`
	From     string     `json:"from,omitempty"`
	To       string     `json:"to,omitempty"`
	After    string     `json:"after,omitempty"`
	TreeHead SignedHead `json:"tree_head"`
}

// ExportSnapshot is one snapshot of an export.
type ExportSnapshot struct {
	Path      string   `json:"path"`       // gateway path / device
	Seq       uint64   `json:"seq"`        // the snapshot's seq (also inside the encoding)
	Hash      string   `json:"hash"`       // hex SHA-256 of the encoding
	Snapshot  string   `json:"snapshot"`   // base64 (standard, padded) of snapshot.Encode: the exact bytes the device signed
	LeafIndex uint64   `json:"leaf_index"` // the ledger leaf recording it
	Proof     []string `json:"proof"`      // hex inclusion proof against the export's tree head
	// Provenance is how the snapshot arrived (store.ProvenanceSealed, or
	// store.ProvenanceAgentTLS for an HTTPS agent's values, which nobody
	// signed: the platform built the snapshot).
	Provenance string `json:"provenance,omitempty"`
}

// ExportTrailer ends an export page.
type ExportTrailer struct {
	Count         uint64 `json:"count"`
	NotYetCovered uint64 `json:"not_yet_covered"`
	Next          string `json:"next,omitempty"`
}

// ExportMessagesTrailer are the device message members of a version 2
// export, present on its last page only (written and read as a stream,
// like the snapshots: the struct names the members).
type ExportMessagesTrailer struct {
	DeviceMessages        []ExportMessage `json:"device_messages,omitempty"`
	MessageCount          uint64          `json:"message_count,omitempty"`
	MessagesNotYetCovered uint64          `json:"messages_not_yet_covered,omitempty"`
}

// ServicesCAName is the common name of the e2e services CA, the only CA
// whose leaves may sign tree heads.
const ServicesCAName = "fieldtrust e2e services CA"

// VerifyHead checks a signed tree head offline against the e2e root: the
// signer chain must be the e2e services CA, directly under root, then the
// "ledger" service leaf; the signature must verify; Size and Root must be
// the checkpoint's. Revocation is not checked: offline, the verifier has
// no CRL, and a head signed while the key was valid stays valid evidence.
func VerifyHead(h SignedHead, root *x509.Certificate) (Checkpoint, error) {
	chain, err := pki.ParseCertsPEM([]byte(h.CertChain))
	if err != nil {
		return Checkpoint{}, fmt.Errorf("tree head certificate chain: %w", err)
	}
	if len(chain) < 2 {
		return Checkpoint{}, fmt.Errorf("tree head certificate chain has %d certificates; want the ledger certificate and the e2e services CA", len(chain))
	}
	// The verifier must be told which CA is the services CA, and offline
	// it has only the root. chain[1] is the candidate, and it is accepted
	// only if the root signed it directly and its name is exactly
	// ServicesCAName. The name matters: master-account CAs are also
	// directly under the root, and a leaf "ledger" below one would read as
	// service:ledger if its CA were taken for the services CA. No account
	// CA can carry the services CA's name: account and master CA names are
	// identity elements ([A-Za-z0-9._-], pki.ValidateElement, checked on
	// issue and again in every chain by pki.IdentityFromChain), which
	// cannot contain the spaces of "fieldtrust e2e services CA".
	services := chain[1]
	if !services.IsCA || services.Subject.CommonName != ServicesCAName || services.Equal(root) {
		return Checkpoint{}, fmt.Errorf("tree head signer's issuer is %q, not the %q", services.Subject.CommonName, ServicesCAName)
	}
	if err := services.CheckSignatureFrom(root); err != nil {
		return Checkpoint{}, fmt.Errorf("tree head signer's issuer %q is not directly under the e2e root given: %w", services.Subject.CommonName, err)
	}
	sig, err := base64.StdEncoding.DecodeString(h.Signature)
	if err != nil {
		return Checkpoint{}, errors.New("tree head signature: not base64")
	}
	v := pki.NewVerifier(pki.E2E, root, services, nil)
	c, err := VerifyCheckpoint([]byte(h.Checkpoint), sig, chain, v)
	if err != nil {
		return c, fmt.Errorf("tree head: %w", err)
	}
	if h.Size != c.Size || !strings.EqualFold(h.Root, hex.EncodeToString(c.Root)) {
		return c, fmt.Errorf("tree head: size %d and root %s disagree with the signed checkpoint (size %d, root %x)", h.Size, h.Root, c.Size, c.Root)
	}
	return c, nil
}

// VerifyHeadConsistency checks that the tree of head old is a prefix of
// the tree of head cur. Both must have been verified (VerifyHead).
func VerifyHeadConsistency(old, cur Checkpoint, p ConsistencyProof) error {
	if old.Size > cur.Size {
		return fmt.Errorf("the previous head (size %d) is larger than the current one (size %d): give the older head as the previous one", old.Size, cur.Size)
	}
	if p.From != old.Size || p.To != cur.Size {
		return fmt.Errorf("consistency proof is from size %d to %d; the heads have sizes %d and %d (fetch /api/v1/ledger/consistency?from=%d&to=%d)", p.From, p.To, old.Size, cur.Size, old.Size, cur.Size)
	}
	hashes, err := decodeHashes(p.Proof)
	if err != nil {
		return fmt.Errorf("consistency proof: %w", err)
	}
	if VerifyConsistency(old.Size, cur.Size, hashes, old.Root, cur.Root) != nil {
		return fmt.Errorf("consistency proof from size %d to %d does not verify: the log was rewritten since the previous head, or the proof is wrong", old.Size, cur.Size)
	}
	return nil
}

// VerifySnapshot checks one snapshot's encoding and inclusion proof
// against a verified head. It returns the decoded snapshot.
func VerifySnapshot(head Checkpoint, p InclusionProof, encoded []byte) (*snapshot.Snapshot, error) {
	if p.TreeSize != head.Size {
		return nil, fmt.Errorf("proof is for a tree of size %d, the head has size %d (fetch the proof with ?size=%d)", p.TreeSize, head.Size, head.Size)
	}
	return verifyEntry(head, p.Path, p.Seq, p.Hash, p.LeafIndex, p.Proof, encoded)
}

// verifyEntry is the check of one snapshot shared by exports and single
// proofs.
func verifyEntry(head Checkpoint, path string, seq uint64, hashHex string, index uint64, proofHex []string, encoded []byte) (*snapshot.Snapshot, error) {
	gw, dev, err := splitDevicePath(path)
	if err != nil {
		return nil, err
	}
	s, err := snapshot.Decode(encoded)
	if err != nil {
		return nil, fmt.Errorf("snapshot encoding: %w", err)
	}
	if s.Device != dev {
		return nil, fmt.Errorf("snapshot is of device %q, not %q", s.Device, dev)
	}
	if s.Seq != seq {
		return nil, fmt.Errorf("snapshot has seq %d, not %d", s.Seq, seq)
	}
	h := snapshot.Hash(encoded)
	if hashHex != "" && !strings.EqualFold(hashHex, hex.EncodeToString(h[:])) {
		return nil, fmt.Errorf("snapshot hashes to %x, not %s", h, hashHex)
	}
	if index >= head.Size {
		return nil, fmt.Errorf("leaf index %d is outside the tree of size %d", index, head.Size)
	}
	hashes, err := decodeHashes(proofHex)
	if err != nil {
		return nil, fmt.Errorf("inclusion proof: %w", err)
	}
	if VerifyInclusion(LeafData(gw, h), index, head.Size, hashes, head.Root) != nil {
		// The library's error (two roots in hex, over several lines) adds
		// nothing the customer can act on.
		return nil, fmt.Errorf("inclusion proof of leaf %d does not verify against the tree head of size %d: the snapshot, its path, its leaf index or its proof is not what the platform logged", index, head.Size)
	}
	return s, nil
}

func splitDevicePath(path string) (gateway, device string, err error) {
	i := strings.LastIndexByte(path, '/')
	if i < 0 {
		return "", "", fmt.Errorf("path %q: want master/account/gateway/device", path)
	}
	gw, err := pki.ParsePath(path[:i])
	if err != nil || len(gw) != 3 {
		return "", "", fmt.Errorf("path %q: want master/account/gateway/device", path)
	}
	if err := pki.ValidateElement(path[i+1:]); err != nil {
		return "", "", fmt.Errorf("path %q: device: %w", path, err)
	}
	return gw.String(), path[i+1:], nil
}

func decodeHashes(hs []string) ([][]byte, error) {
	if len(hs) > 64 {
		return nil, fmt.Errorf("%d hashes; a proof in a tree of at most 2^64 leaves has at most 64", len(hs))
	}
	out := make([][]byte, len(hs))
	for i, s := range hs {
		b, err := hex.DecodeString(s)
		if err != nil || len(b) != 32 {
			return nil, fmt.Errorf("hash %d: not 64 hex digits", i)
		}
		out[i] = b
	}
	return out, nil
}

// SnapshotError says which snapshot of an export failed which check.
type SnapshotError struct {
	Index int    // position in the export, from 0
	Path  string // as the export names it
	Seq   uint64
	Err   error
}

func (e *SnapshotError) Error() string {
	return fmt.Sprintf("snapshot #%d (%s seq %d): %v", e.Index+1, e.Path, e.Seq, e.Err)
}

func (e *SnapshotError) Unwrap() error { return e.Err }

// Gap is a run of seqs missing from a device's chain in an export.
type Gap struct {
	Path     string
	From, To uint64 // the missing seqs, inclusive
}

func (g Gap) String() string {
	if g.From == g.To {
		return fmt.Sprintf("%s: seq %d is missing", g.Path, g.From)
	}
	return fmt.Sprintf("%s: seqs %d to %d are missing", g.Path, g.From, g.To)
}

// ErrGaps is wrapped by the error of VerifyExport when a device's chain
// has gaps and gaps are not allowed.
var ErrGaps = errors.New("hash chain gaps")

// ExportReport is what VerifyExport (or an ExportVerifier) found.
type ExportReport struct {
	Header        ExportHeader // of the first page
	Head          Checkpoint   // the verified tree head of the last page
	Pages         int
	Snapshots     int // in all pages
	Devices       int
	NotYetCovered uint64 // in all pages
	// Next is the last page's "next": not empty when the export continues
	// beyond the pages verified (they verify, but are not all of it).
	Next     string
	Gaps     []Gap // at most maxGapsReported
	MoreGaps int   // gaps beyond those in Gaps
	// Messages are the verified device messages (version 2), by kind.
	Messages              int
	MessageKinds          map[string]int
	MessagesNotYetCovered uint64
}

// ExportOptions configure VerifyExport.
type ExportOptions struct {
	// Root is the e2e root certificate: the customer's trust anchor,
	// obtained once (GET /ca/e2e.pem) and kept.
	Root *x509.Certificate
	// AllowGaps reports gaps in the report instead of failing.
	AllowGaps bool
	// Progress, if set, is called after every ProgressEvery snapshots.
	Progress func(verified int)
}

// ProgressEvery is how often VerifyExport reports progress.
const ProgressEvery = 10000

const maxGapsReported = 100

// VerifyExport reads a one-page export as a stream and checks it
// completely; it is an ExportVerifier given one page.
func VerifyExport(r io.Reader, opts ExportOptions) (*ExportReport, error) {
	v, err := NewExportVerifier(opts)
	if err != nil {
		return nil, err
	}
	if err := v.Page(r); err != nil {
		return nil, err
	}
	return v.Finish()
}

// ExportVerifier checks an export page by page, in order, as one: every
// page's tree head (signature and signer), every snapshot's encoding
// (strict decoding), hash and inclusion proof against its page's head,
// that each page continues where the one before it ended (same scope and
// bounds, after = the previous next), and, across all pages, that each
// device's snapshots chain by seq and prev hash. Memory is bounded by the
// number of devices (and snapshots that arrive ahead of their
// predecessor), not the size of the export.
type ExportVerifier struct {
	opts   ExportOptions
	rep    *ExportReport
	chains *chainChecker
	leaves map[uint64]bool // device messages' leaf indexes (no message twice)
}

// NewExportVerifier returns a verifier for the pages of one export.
func NewExportVerifier(opts ExportOptions) (*ExportVerifier, error) {
	if opts.Root == nil {
		return nil, errors.New("no e2e root certificate to verify against")
	}
	return &ExportVerifier{opts: opts, rep: &ExportReport{MessageKinds: map[string]int{}}, leaves: map[uint64]bool{}}, nil
}

// Page verifies the next page. Any failure is returned, as a
// *SnapshotError (whose Index counts within the page) when it concerns one
// snapshot; the verifier must not be used after a failure.
func (v *ExportVerifier) Page(r io.Reader) error {
	rep := v.rep
	if rep.Pages > 0 && rep.Next == "" {
		return fmt.Errorf("export: page %d follows a page without \"next\": the export ended there", rep.Pages+1)
	}
	dec := json.NewDecoder(r)
	dec.DisallowUnknownFields()
	if err := expectDelim(dec, '{'); err != nil {
		return fmt.Errorf("export: %w", err)
	}
	var (
		hdr    ExportHeader
		head   Checkpoint
		count  *uint64
		n      int // snapshots in this page
		tr     ExportTrailer
		mtr    ExportMessagesTrailer
		msgs   int // device messages in this page
		seen   = map[string]bool{}
		kinds  = map[string]int{}
		mcount *uint64
	)
	order := []string{"version", "scope", "from", "to", "after", "tree_head", "snapshots", "count", "device_messages", "message_count", "messages_not_yet_covered", "not_yet_covered", "next"}
	pos := 0
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return fmt.Errorf("export: %w", err)
		}
		key, _ := tok.(string)
		i := slices.Index(order, key)
		switch {
		case i < 0:
			return fmt.Errorf("export: unknown member %q", key)
		case i < pos:
			return fmt.Errorf("export: member %q repeated or out of order", key)
		case pos == 0 && key != "version":
			return errors.New("export: the first member must be \"version\"")
		}
		seen[key], pos = true, i+1
		switch key {
		case "version":
			if err := dec.Decode(&hdr.Version); err != nil {
				return fmt.Errorf("export version: %w", err)
			}
			if hdr.Version != ExportVersion && hdr.Version != ExportVersionSnapshots {
				return fmt.Errorf("export version %d; this verifier reads versions %d and %d", hdr.Version, ExportVersionSnapshots, ExportVersion)
			}
			if rep.Pages > 0 && hdr.Version != rep.Header.Version {
				return fmt.Errorf("export: page %d is of version %d, page 1 of version %d: not the same export", rep.Pages+1, hdr.Version, rep.Header.Version)
			}
		case "scope":
			err = dec.Decode(&hdr.Scope)
		case "from":
			if err = dec.Decode(&hdr.From); err == nil {
				_, err = time.Parse(time.RFC3339Nano, hdr.From)
			}
		case "to":
			if err = dec.Decode(&hdr.To); err == nil {
				_, err = time.Parse(time.RFC3339Nano, hdr.To)
			}
		case "after":
			if err = dec.Decode(&hdr.After); err == nil && hdr.After == "" {
				err = errors.New("empty")
			}
		case "tree_head":
			if err := dec.Decode(&hdr.TreeHead); err != nil {
				return fmt.Errorf("export tree_head: %w", err)
			}
			if head, err = VerifyHead(hdr.TreeHead, v.opts.Root); err != nil {
				return err
			}
		case "snapshots":
			if !seen["tree_head"] {
				return errors.New("export: snapshots before tree_head")
			}
			if err := v.continues(hdr); err != nil {
				return err
			}
			if v.chains == nil {
				// Chains must start at seq 1 only in an export that
				// starts at the beginning: no from bound, first page.
				v.chains = newChainChecker(hdr.From == "" && hdr.After == "")
			}
			if err := verifySnapshots(dec, head, v.chains, &n, v.opts.Progress, rep.Snapshots); err != nil {
				return err
			}
		case "count":
			count = new(uint64)
			err = dec.Decode(count)
		case "device_messages":
			if hdr.Version < ExportVersion {
				return fmt.Errorf("export: device_messages in a version %d export", hdr.Version)
			}
			if !seen["snapshots"] {
				return errors.New("export: device_messages before snapshots")
			}
			if err := v.verifyMessages(dec, head, &msgs, kinds); err != nil {
				return err
			}
		case "message_count":
			mcount = new(uint64)
			err = dec.Decode(mcount)
		case "messages_not_yet_covered":
			err = dec.Decode(&mtr.MessagesNotYetCovered)
		case "not_yet_covered":
			err = dec.Decode(&tr.NotYetCovered)
		case "next":
			if err = dec.Decode(&tr.Next); err == nil && tr.Next == "" {
				err = errors.New("empty")
			}
		}
		if err != nil {
			return fmt.Errorf("export %s: %w", key, err)
		}
	}
	if err := expectDelim(dec, '}'); err != nil {
		return fmt.Errorf("export: %w", err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return errors.New("export: data after the end of the export")
	}
	if !seen["snapshots"] {
		return errors.New("export: no snapshots member")
	}
	if count == nil {
		return errors.New("export: no count: the export is truncated")
	}
	if *count != uint64(n) {
		return fmt.Errorf("export: count says %d snapshots, the export holds %d: snapshots were added or removed", *count, n)
	}
	if hdr.Version >= ExportVersion {
		last := tr.Next == ""
		switch {
		case last && (!seen["device_messages"] || mcount == nil):
			return errors.New("export: the last page has no device_messages and message_count: the device messages were removed or the export is truncated")
		case !last && (seen["device_messages"] || mcount != nil):
			return errors.New("export: device messages on a page that is not the last")
		case last && *mcount != uint64(msgs):
			return fmt.Errorf("export: message_count says %d device messages, the export holds %d: messages were added or removed", *mcount, msgs)
		}
	} else if seen["message_count"] || seen["messages_not_yet_covered"] {
		return fmt.Errorf("export: device message members in a version %d export", hdr.Version)
	}
	if rep.Pages == 0 {
		rep.Header = hdr
	}
	rep.Pages++
	rep.Head = head
	rep.Snapshots += n
	rep.NotYetCovered += tr.NotYetCovered
	rep.Next = tr.Next
	rep.Messages += msgs
	rep.MessagesNotYetCovered += mtr.MessagesNotYetCovered
	for k, c := range kinds {
		rep.MessageKinds[k] += c
	}
	return nil
}

// verifyMessages checks the device_messages array of a page, counting
// them in *n and by kind.
func (v *ExportVerifier) verifyMessages(dec *json.Decoder, head Checkpoint, n *int, kinds map[string]int) error {
	if err := expectDelim(dec, '['); err != nil {
		return fmt.Errorf("export device_messages: %w", err)
	}
	for dec.More() {
		var e ExportMessage
		if err := dec.Decode(&e); err != nil {
			return fmt.Errorf("export: device message #%d: %w", *n+1, err)
		}
		m, err := VerifyMessage(head, e)
		if err != nil {
			return &MessageError{Index: *n, ID: e.ID, Err: err}
		}
		if v.leaves[e.LeafIndex] {
			return &MessageError{Index: *n, ID: e.ID, Err: fmt.Errorf("leaf %d is in the export twice", e.LeafIndex)}
		}
		v.leaves[e.LeafIndex] = true
		kinds[m.Kind]++
		*n++
	}
	if err := expectDelim(dec, ']'); err != nil {
		return fmt.Errorf("export device_messages: %w", err)
	}
	return nil
}

// continues checks that a page's header follows the pages before it.
func (v *ExportVerifier) continues(hdr ExportHeader) error {
	rep := v.rep
	if rep.Pages == 0 {
		return nil
	}
	first := rep.Header
	if hdr.Scope != first.Scope || hdr.From != first.From || hdr.To != first.To {
		return fmt.Errorf("export: page %d is of scope %q from %q to %q; page 1 of scope %q from %q to %q: not the same export",
			rep.Pages+1, hdr.Scope, hdr.From, hdr.To, first.Scope, first.From, first.To)
	}
	if hdr.After != rep.Next {
		return fmt.Errorf("export: page %d starts after %q, but page %d ended with next %q: pages are missing, repeated or out of order", rep.Pages+1, hdr.After, rep.Pages, rep.Next)
	}
	return nil
}

// Finish resolves the device chains across all pages and returns the
// report; gaps fail it unless allowed.
func (v *ExportVerifier) Finish() (*ExportReport, error) {
	rep := v.rep
	if rep.Pages == 0 {
		return nil, errors.New("export: no pages")
	}
	rep.Devices = v.chains.devices()
	var err error
	if rep.Gaps, rep.MoreGaps, err = v.chains.finish(); err != nil {
		return rep, err
	}
	if len(rep.Gaps) > 0 && !v.opts.AllowGaps {
		n := len(rep.Gaps) + rep.MoreGaps
		return rep, fmt.Errorf("%w: %d in the export, first %s", ErrGaps, n, rep.Gaps[0])
	}
	return rep, nil
}

// verifySnapshots checks the snapshots array of a page, counting them in
// *n; before is the number of snapshots of the pages before (for
// progress).
func verifySnapshots(dec *json.Decoder, head Checkpoint, chains *chainChecker, n *int, progress func(int), before int) error {
	if err := expectDelim(dec, '['); err != nil {
		return fmt.Errorf("export snapshots: %w", err)
	}
	for dec.More() {
		var e ExportSnapshot
		if err := dec.Decode(&e); err != nil {
			return fmt.Errorf("export: snapshot #%d: %w", *n+1, err)
		}
		fail := func(err error) error {
			return &SnapshotError{Index: *n, Path: e.Path, Seq: e.Seq, Err: err}
		}
		enc, err := base64.StdEncoding.DecodeString(e.Snapshot)
		if err != nil {
			return fail(errors.New("snapshot: not base64"))
		}
		s, err := verifyEntry(head, e.Path, e.Seq, e.Hash, e.LeafIndex, e.Proof, enc)
		if err != nil {
			return fail(err)
		}
		if err := chains.add(e.Path, s, snapshot.Hash(enc)); err != nil {
			return fail(fmt.Errorf("hash chain: %w", err))
		}
		*n++
		if done := before + *n; progress != nil && done%ProgressEvery == 0 {
			progress(done)
		}
	}
	if err := expectDelim(dec, ']'); err != nil {
		return fmt.Errorf("export snapshots: %w", err)
	}
	return nil
}

func expectDelim(dec *json.Decoder, d json.Delim) error {
	tok, err := dec.Token()
	if err != nil {
		if err == io.EOF {
			return fmt.Errorf("truncated: want %q", d)
		}
		return err
	}
	if tok != d {
		return fmt.Errorf("want %q, got %v", d, tok)
	}
	return nil
}

// maxPending bounds, per device, the snapshots held while their
// predecessor has not appeared: past it, the predecessors are declared
// missing (a gap). Exports are in time order, so a device's snapshots
// arrive in seq order unless its clock stepped back; a real gap would
// otherwise hold every later snapshot of the device until the end.
const maxPending = 1024

// chainChecker checks that each device's snapshots form a hash chain:
// every seq once, each snapshot's prev the hash of the one before. A
// snapshot may arrive ahead of its predecessor (held as pending), but in an
// export with a from bound, the first snapshot seen of a device anchors its
// chain, and an earlier seq after it is an error.
type chainChecker struct {
	fromStart bool // chains must start at seq 1 (the export has no from bound)
	chains    map[string]*chainState
	gaps      []Gap
	moreGaps  int
}

type chainState struct {
	last      uint64   // highest seq linked so far; 0 before any
	lastHash  [32]byte // hash of seq last, if known
	hashKnown bool     // false after a gap or at a from-bounded start
	pending   map[uint64]link
}

type link struct {
	hash, prev [32]byte
}

func newChainChecker(fromStart bool) *chainChecker {
	return &chainChecker{fromStart: fromStart, chains: map[string]*chainState{}}
}

func (c *chainChecker) devices() int { return len(c.chains) }

func (c *chainChecker) add(path string, s *snapshot.Snapshot, hash [32]byte) error {
	st := c.chains[path]
	if st == nil {
		st = &chainState{}
		if !c.fromStart {
			// The export starts inside the chain: its first snapshot
			// anchors it.
			st.last = s.Seq - 1
		}
		c.chains[path] = st
	}
	var l link
	l.hash = hash
	copy(l.prev[:], s.Prev)
	switch {
	case s.Seq <= st.last:
		return fmt.Errorf("seq %d after seq %d of the same device: repeated or out of order", s.Seq, st.last)
	case s.Seq == st.last+1:
		if err := st.link(s.Seq, l); err != nil {
			return err
		}
		return c.drain(path, st)
	default:
		if _, dup := st.pending[s.Seq]; dup {
			return fmt.Errorf("seq %d appears twice", s.Seq)
		}
		if st.pending == nil {
			st.pending = map[uint64]link{}
		}
		st.pending[s.Seq] = l
		if len(st.pending) > maxPending {
			c.skipGap(path, st)
			return c.drain(path, st)
		}
	}
	return nil
}

// link appends seq (= st.last+1) to the chain.
func (st *chainState) link(seq uint64, l link) error {
	if st.hashKnown && seq > 1 && l.prev != st.lastHash {
		return fmt.Errorf("prev hash %x is not the hash of seq %d (%x): the chain is broken", l.prev[:8], seq-1, st.lastHash[:8])
	}
	st.last, st.lastHash, st.hashKnown = seq, l.hash, true
	return nil
}

// drain links pending snapshots that now follow the chain.
func (c *chainChecker) drain(path string, st *chainState) error {
	for {
		l, ok := st.pending[st.last+1]
		if !ok {
			return nil
		}
		delete(st.pending, st.last+1)
		if err := st.link(st.last+1, l); err != nil {
			return fmt.Errorf("%s seq %d: %w", path, st.last+1, err)
		}
	}
}

// skipGap records the seqs missing before the smallest pending one and
// moves the chain past them.
func (c *chainChecker) skipGap(path string, st *chainState) {
	low := uint64(0)
	for seq := range st.pending {
		if low == 0 || seq < low {
			low = seq
		}
	}
	if len(c.gaps) < maxGapsReported {
		c.gaps = append(c.gaps, Gap{Path: path, From: st.last + 1, To: low - 1})
	} else {
		c.moreGaps++
	}
	st.last, st.hashKnown = low-1, false
}

// finish resolves what is still pending into gaps, in a stable order.
func (c *chainChecker) finish() ([]Gap, int, error) {
	var paths []string
	for p, st := range c.chains {
		if len(st.pending) > 0 {
			paths = append(paths, p)
		}
	}
	slices.Sort(paths)
	for _, p := range paths {
		st := c.chains[p]
		for len(st.pending) > 0 {
			c.skipGap(p, st)
			if err := c.drain(p, st); err != nil {
				return c.gaps, c.moreGaps, fmt.Errorf("hash chain: %w", err)
			}
		}
	}
	return c.gaps, c.moreGaps, nil
}
