package registry

import (
	"context"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/fieldtrust/fieldtrust/internal/dcc"
	"github.com/fieldtrust/fieldtrust/internal/ledger"
	"github.com/fieldtrust/fieldtrust/internal/store"
	"github.com/fieldtrust/fieldtrust/internal/store/registrystore"
)

// Head is a signed checkpoint as the API serves it.
type Head struct {
	Size        uint64 `json:"size"`
	Root        string `json:"root"`       // hex
	Checkpoint  string `json:"checkpoint"` // the signed text
	Signature   string `json:"signature"`  // base64 ASN.1 ECDSA over SHA-256 of the checkpoint
	Certificate string `json:"certificate"`
}

// Proof is an inclusion proof of one log entry.
type Proof struct {
	LeafIndex uint64   `json:"leaf_index"`
	LeafData  string   `json:"leaf_data"` // base64 of the entry (its JSON)
	Hashes    []string `json:"hashes"`    // hex
}

// Record is what a lookup returns for one DCC.
type Record struct {
	DCC             dcc.Metadata `json:"dcc"`
	Lab             string       `json:"lab"`
	SignatureStatus string       `json:"signature_status"`
	Status          string       `json:"status"` // valid | superseded | revoked
	SupersededBy    string       `json:"superseded_by,omitempty"`
	RevokedAt       string       `json:"revoked_at,omitempty"`
	RevokeReason    string       `json:"revoke_reason,omitempty"`
	RegisteredAt    string       `json:"registered_at"`
	Overdue         bool         `json:"overdue,omitempty"` // the due date has passed
	HasContent      bool         `json:"has_content"`
	Proofs          []Proof      `json:"proofs"` // registration, then revocation
}

// Lookup answers a lookup by DCC id, with proofs against the latest head.
type Lookup struct {
	Head    Head     `json:"tree_head"`
	Record  *Record  `json:"record,omitempty"`
	History []Record `json:"history,omitempty"` // equipment lookups: in calibration order
}

// headTTL is how long a lookup reuses the signed head it read: the head
// changes only when the log grows, which this process knows of (signHead,
// a mirror's sync) and an operator command beside it ('registry issuer')
// does only with entries no lookup returns. A record whose entries the
// cached head does not cover reads the head again whatever its age.
const headTTL = time.Second

// LatestHead returns the latest signed head, read from storage.
func (r *Registry) LatestHead(ctx context.Context) (Head, error) {
	text, sig, err := r.st.LatestHead(ctx)
	if errors.Is(err, store.ErrNotFound) {
		return Head{}, fmt.Errorf("%w: the registry's log is empty (no signed head yet)", ErrUnknown)
	}
	if err != nil {
		return Head{}, err
	}
	c, err := ledger.ParseCheckpointFor(text, Origin)
	if err != nil {
		return Head{}, err
	}
	if size, _, err := r.log.Size(); err == nil && c.Size > size {
		// Another process on the database signed a larger head (an
		// operator command beside 'up'): the proofs need its tree.
		if err := r.log.Reload(ctx); err != nil {
			return Head{}, err
		}
	}
	h := Head{Size: c.Size, Root: hex.EncodeToString(c.Root), Checkpoint: string(text), Signature: base64.StdEncoding.EncodeToString(sig), Certificate: r.certPEM}
	r.headMu.Lock()
	r.head, r.headRead = &h, time.Now()
	r.headMu.Unlock()
	return h, nil
}

// headFor returns a signed head whose tree holds every leaf below need:
// the one read within headTTL if it does, else the latest from storage.
// Lookups never sign (a head is signed once per write).
func (r *Registry) headFor(ctx context.Context, need uint64) (Head, error) {
	r.headMu.Lock()
	h, at := r.head, r.headRead
	r.headMu.Unlock()
	if h != nil && h.Size >= need && time.Since(at) < headTTL {
		return *h, nil
	}
	return r.LatestHead(ctx)
}

// forgetHead drops the cached head: the log grew.
func (r *Registry) forgetHead() {
	r.headMu.Lock()
	r.head = nil
	r.headMu.Unlock()
}

// Lookup returns a DCC's record with proofs.
func (r *Registry) Lookup(ctx context.Context, id string) (*Record, error) {
	l, err := r.LookupDCC(ctx, id)
	if err != nil {
		return nil, err
	}
	return l.Record, nil
}

// LookupDCC is the lookup by DCC id: two queries (the record with its log
// entries and supersession; its proofs' nodes) and the cached head.
func (r *Registry) LookupDCC(ctx context.Context, id string) (*Lookup, error) {
	row, by, err := r.st.Lookup(ctx, id)
	if errors.Is(err, store.ErrNotFound) {
		return nil, fmt.Errorf("%w %s", ErrUnknown, id)
	}
	if err != nil {
		return nil, err
	}
	rec, err := r.recordOf(row)
	if err != nil {
		return nil, err
	}
	if by != "" && rec.Status == "valid" {
		// Superseded: a later, unrevoked DCC of the same instrument.
		rec.Status, rec.SupersededBy = "superseded", by
	}
	l := &Lookup{Record: rec}
	if err := r.prove(ctx, l, []registrystore.DCC{row}, []*Record{rec}); err != nil {
		return nil, err
	}
	return l, nil
}

// LookupEquipment returns an instrument's calibration history (every DCC
// naming the identification, oldest first), each with its status and
// proofs: two queries (the records with their log entries; all their
// proofs' nodes) and the cached head.
func (r *Registry) LookupEquipment(ctx context.Context, issuer, value string) (*Lookup, error) {
	rows, h, err := r.history(ctx, issuer, value)
	if err != nil {
		return nil, err
	}
	l := &Lookup{History: h}
	recs := make([]*Record, len(h))
	for i := range h {
		recs[i] = &h[i]
	}
	if err := r.prove(ctx, l, rows, recs); err != nil {
		return nil, err
	}
	return l, nil
}

// HistoryOf is LookupEquipment's history without proofs (and without a
// head): what the fleet link needs to flag measurements.
func (r *Registry) HistoryOf(ctx context.Context, issuer, value string) ([]Record, error) {
	_, h, err := r.history(ctx, issuer, value)
	return h, err
}

func (r *Registry) history(ctx context.Context, issuer, value string) ([]registrystore.DCC, []Record, error) {
	rows, err := r.st.ByEquipment(ctx, issuer, value, 1000)
	if err != nil {
		return nil, nil, err
	}
	out := make([]Record, 0, len(rows))
	var latest int = -1
	for _, row := range rows {
		rec, err := r.recordOf(row)
		if err != nil {
			return nil, nil, err
		}
		out = append(out, *rec)
		if rec.Status == "valid" {
			if latest >= 0 {
				out[latest].Status, out[latest].SupersededBy = "superseded", rec.DCC.ID
			}
			latest = len(out) - 1
		}
	}
	return rows, out, nil
}

// recordOf builds a record, without proofs, from a row a lookup read.
func (r *Registry) recordOf(row registrystore.DCC) (*Record, error) {
	var md struct {
		dcc.Metadata
		SignatureStatus string `json:"signature_status"`
	}
	if err := json.Unmarshal(row.Metadata, &md); err != nil {
		return nil, fmt.Errorf("dcc %s: metadata: %w", row.ID, err)
	}
	rec := &Record{DCC: md.Metadata, Lab: row.Lab, SignatureStatus: md.SignatureStatus, Status: "valid",
		RegisteredAt: time.Unix(row.RegisteredAt, 0).UTC().Format(time.RFC3339), HasContent: row.HasContent}
	if due, ok := rec.DCC.Due(); ok && !r.now().Before(due) {
		rec.Overdue = true
	}
	if row.RevokedAt != 0 {
		rec.Status, rec.RevokeReason = "revoked", row.RevokeReason
		rec.RevokedAt = time.Unix(row.RevokedAt, 0).UTC().Format(time.RFC3339)
	}
	return rec, nil
}

// prove sets the lookup's head and each record's proofs (registration,
// then revocation) against it, reading the nodes of all proofs at once.
func (r *Registry) prove(ctx context.Context, l *Lookup, rows []registrystore.DCC, recs []*Record) error {
	var need uint64
	var idx []uint64
	var data [][]byte
	for _, row := range rows {
		idx, data = append(idx, row.LeafIndex), append(data, row.Entry)
		need = max(need, row.LeafIndex+1)
		if row.RevokedAt != 0 {
			idx, data = append(idx, row.RevokeLeaf), append(data, row.RevokeEntry)
			need = max(need, row.RevokeLeaf+1)
		}
	}
	head, err := r.headFor(ctx, need)
	if err != nil {
		return err
	}
	l.Head = head
	if len(idx) == 0 {
		return nil
	}
	proofs, err := r.log.InclusionProofs(ctx, idx, head.Size)
	if err != nil {
		return fmt.Errorf("registry proofs: %w", err)
	}
	k := 0
	for i, row := range rows {
		n := 1
		if row.RevokedAt != 0 {
			n = 2
		}
		recs[i].Proofs = make([]Proof, 0, n)
		for range n {
			p := Proof{LeafIndex: idx[k], LeafData: base64.StdEncoding.EncodeToString(data[k]), Hashes: make([]string, len(proofs[k]))}
			for j, h := range proofs[k] {
				p.Hashes[j] = hex.EncodeToString(h)
			}
			recs[i].Proofs = append(recs[i].Proofs, p)
			k++
		}
	}
	return nil
}

// Content returns the signed DCC exactly as submitted (ErrUnknown when the
// lab registered only metadata).
func (r *Registry) Content(ctx context.Context, id string) ([]byte, error) {
	row, err := r.st.DCC(ctx, id)
	if err != nil || row.Content == nil {
		return nil, fmt.Errorf("%w: no stored content for %s", ErrUnknown, id)
	}
	return row.Content, nil
}

// Entries returns log entries [start, end) for mirrors.
func (r *Registry) Entries(ctx context.Context, start, end uint64) ([][]byte, error) {
	return r.st.Entries(ctx, start, end)
}

// Consistency returns a consistency proof between two sizes.
func (r *Registry) Consistency(ctx context.Context, from, to uint64) ([][]byte, error) {
	return r.log.ConsistencyProof(ctx, from, to)
}
