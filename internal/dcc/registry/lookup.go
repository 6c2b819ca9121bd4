package registry

import (
	"context"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
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

// LatestHead returns the latest signed head.
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
	h := Head{Size: c.Size, Root: hex.EncodeToString(c.Root), Checkpoint: string(text), Signature: base64.StdEncoding.EncodeToString(sig)}
	if r.cert != nil {
		h.Certificate = string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: r.cert.Raw}))
	}
	return h, nil
}

// Lookup returns a DCC's record with proofs.
func (r *Registry) Lookup(ctx context.Context, id string) (*Record, error) {
	l, err := r.LookupDCC(ctx, id)
	if err != nil {
		return nil, err
	}
	return l.Record, nil
}

// LookupDCC is the lookup by DCC id.
func (r *Registry) LookupDCC(ctx context.Context, id string) (*Lookup, error) {
	head, err := r.LatestHead(ctx)
	if err != nil {
		return nil, err
	}
	row, err := r.st.DCC(ctx, id)
	if errors.Is(err, store.ErrNotFound) {
		return nil, fmt.Errorf("%w %s", ErrUnknown, id)
	}
	if err != nil {
		return nil, err
	}
	rec, err := r.recordAt(ctx, row, head.Size, true)
	if err != nil {
		return nil, err
	}
	// Superseded: a later, unrevoked DCC of the same instrument.
	for _, e := range row.Equipment {
		hist, err := r.st.ByEquipment(ctx, e[0], e[1], 1000)
		if err != nil {
			return nil, err
		}
		for _, h := range hist {
			if h.ID != row.ID && h.RevokedAt == 0 && (h.Performed > row.Performed || (h.Performed == row.Performed && h.RegisteredAt > row.RegisteredAt)) && rec.Status == "valid" {
				rec.Status, rec.SupersededBy = "superseded", h.ID
			}
		}
	}
	return &Lookup{Head: head, Record: rec}, nil
}

// LookupEquipment returns an instrument's calibration history (every DCC
// naming the identification, oldest first), each with its status and
// proofs. An empty issuer matches identifications of any issuer.
func (r *Registry) LookupEquipment(ctx context.Context, issuer, value string) (*Lookup, error) {
	head, err := r.LatestHead(ctx)
	if err != nil {
		return nil, err
	}
	h, err := r.history(ctx, issuer, value, head.Size, true)
	if err != nil {
		return nil, err
	}
	return &Lookup{Head: head, History: h}, nil
}

// HistoryOf is LookupEquipment's history without proofs (and without a
// head): what the fleet link needs to flag measurements.
func (r *Registry) HistoryOf(ctx context.Context, issuer, value string) ([]Record, error) {
	return r.history(ctx, issuer, value, 0, false)
}

func (r *Registry) history(ctx context.Context, issuer, value string, size uint64, proofs bool) ([]Record, error) {
	rows, err := r.st.ByEquipment(ctx, issuer, value, 1000)
	if err != nil {
		return nil, err
	}
	out := []Record{}
	var latest int = -1
	for _, row := range rows {
		rec, err := r.recordAt(ctx, row, size, proofs)
		if err != nil {
			return nil, err
		}
		out = append(out, *rec)
		if rec.Status == "valid" {
			if latest >= 0 {
				out[latest].Status, out[latest].SupersededBy = "superseded", rec.DCC.ID
			}
			latest = len(out) - 1
		}
	}
	return out, nil
}

func (r *Registry) record(ctx context.Context, row registrystore.DCC) (*Record, error) {
	head, err := r.LatestHead(ctx)
	if err != nil {
		return nil, err
	}
	return r.recordAt(ctx, row, head.Size, true)
}

// recordAt builds a record with its proofs against the tree of size, or
// without any (proofs false: for the fleet link's flags, which need the
// status only).
func (r *Registry) recordAt(ctx context.Context, row registrystore.DCC, size uint64, proofs bool) (*Record, error) {
	var md struct {
		dcc.Metadata
		SignatureStatus string `json:"signature_status"`
	}
	if err := json.Unmarshal(row.Metadata, &md); err != nil {
		return nil, fmt.Errorf("dcc %s: metadata: %w", row.ID, err)
	}
	rec := &Record{DCC: md.Metadata, Lab: row.Lab, SignatureStatus: md.SignatureStatus, Status: "valid",
		RegisteredAt: time.Unix(row.RegisteredAt, 0).UTC().Format(time.RFC3339), HasContent: row.Content != nil}
	if due, ok := rec.DCC.Due(); ok && !r.now().Before(due) {
		rec.Overdue = true
	}
	leaves := []uint64{row.LeafIndex}
	if row.RevokedAt != 0 {
		rec.Status, rec.RevokeReason = "revoked", row.RevokeReason
		rec.RevokedAt = time.Unix(row.RevokedAt, 0).UTC().Format(time.RFC3339)
		leaves = append(leaves, row.RevokeLeaf)
	}
	if !proofs {
		return rec, nil
	}
	for _, idx := range leaves {
		p, err := r.proof(ctx, idx, size)
		if err != nil {
			return nil, err
		}
		rec.Proofs = append(rec.Proofs, p)
	}
	return rec, nil
}

func (r *Registry) proof(ctx context.Context, idx, size uint64) (Proof, error) {
	data, err := r.st.Entries(ctx, idx, idx+1)
	if err != nil || len(data) != 1 {
		return Proof{}, fmt.Errorf("registry log entry %d: %v", idx, err)
	}
	hashes, err := r.log.InclusionProof(ctx, idx, size)
	if err != nil {
		return Proof{}, err
	}
	p := Proof{LeafIndex: idx, LeafData: base64.StdEncoding.EncodeToString(data[0]), Hashes: []string{}}
	for _, h := range hashes {
		p.Hashes = append(p.Hashes, hex.EncodeToString(h))
	}
	return p, nil
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
