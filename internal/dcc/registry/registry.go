// Package registry is the independent verification and validation (V&V)
// authority for DCCs: labs register as issuers (the roots their signing
// chains verify to), submit each DCC they issue (whole, or only its
// metadata and hash), and anyone can look up, by DCC id or equipment
// identification, who issued it, whether it is valid, superseded or
// revoked, and the instrument's calibration history — each answer with an
// inclusion proof against a signed checkpoint of the registry's Merkle
// transparency log (package ledger's log, its own tree and origin
// "fieldtrust.registry/v1"). Every registration and status change is a
// leaf of that log first and a row of the tables second (the tables are a
// projection of the log), so a lab cannot backdate, replace or silently
// withdraw a certificate, and a second registry can mirror the log,
// recompute its root and serve the same proofs while the first is down.
//
// Writes carry the lab's identity in their signature, not in a session: a
// whole DCC by its XAdES signature, metadata and status changes by CMS
// SignedData (envelope.Sign), each verified against the registered roots.
package registry

import (
	"context"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/fieldtrust/fieldtrust/internal/dcc"
	"github.com/fieldtrust/fieldtrust/internal/dcc/xades"
	"github.com/fieldtrust/fieldtrust/internal/envelope"
	"github.com/fieldtrust/fieldtrust/internal/ledger"
	"github.com/fieldtrust/fieldtrust/internal/store"
	"github.com/fieldtrust/fieldtrust/internal/store/registrystore"
)

// Origin names the registry's log in its checkpoints.
const Origin = "fieldtrust.registry/v1"

// Errors of writes, for errors.Is.
var (
	ErrCollision = errors.New("DCC id collision: another lab registered this id")
	ErrReplace   = errors.New("a registered DCC cannot be replaced: issue a new DCC with a new id")
	ErrNotIssuer = errors.New("not signed by a registered lab")
	ErrReadOnly  = errors.New("this registry is a mirror: write to the registry it mirrors")
	ErrUnknown   = errors.New("unknown DCC")
)

// Event is one leaf of the log (its JSON is the leaf data).
type Event struct {
	Type            string        `json:"type"` // issuer | register | revoke
	Lab             string        `json:"lab"`
	Time            string        `json:"time"` // RFC 3339, the registry's clock
	DCC             *dcc.Metadata `json:"dcc,omitempty"`
	SignatureStatus string        `json:"signature_status,omitempty"` // valid (whole DCC verified) | declared (metadata only)
	DCCID           string        `json:"dcc_id,omitempty"`           // revoke
	Reason          string        `json:"reason,omitempty"`           // revoke
	Roots           []byte        `json:"roots,omitempty"`            // issuer: PEM certificates
}

// Registry is one registry instance.
type Registry struct {
	st    *registrystore.Store
	log   *ledger.Log
	nodes *cachedNodes      // the log's storage
	key   *ecdsa.PrivateKey // signs checkpoints; nil for a mirror
	cert  *x509.Certificate // the checkpoint signer's certificate
	now   func() time.Time
	lg    *slog.Logger
	mu    sync.Mutex // one writer

	lookupRate float64 // per client address

	pendingContent []byte // the whole DCC of the registration being applied; guarded by mu

	certPEM  string     // cert, PEM, as every head carries it
	headMu   sync.Mutex // guards head and headRead
	head     *Head      // the latest signed head read (lookups reuse it: headFor)
	headRead time.Time
}

// Options configure New.
type Options struct {
	Key    *ecdsa.PrivateKey // checkpoint key; nil makes a read-only mirror
	Cert   *x509.Certificate // its certificate (for a mirror: the source's)
	Now    func() time.Time
	Logger *slog.Logger
	// LookupRate is the lookups per second each client address may make
	// (bursts of twice that); zero: the public default, LookupRate. Only a
	// load test on loopback raises it.
	LookupRate float64
}

const replayPage = 10000

// New opens a registry on its storage and replays log entries the tables
// do not reflect yet (a crash between the two writes).
func New(ctx context.Context, st *registrystore.Store, o Options) (*Registry, error) {
	nodes := newCachedNodes(st)
	l, err := ledger.Open(ctx, nodes)
	if err != nil {
		return nil, fmt.Errorf("registry log: %w", err)
	}
	r := &Registry{st: st, log: l, nodes: nodes, key: o.Key, cert: o.Cert, now: o.Now, lg: o.Logger, lookupRate: o.LookupRate}
	if r.cert != nil {
		r.certPEM = string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: r.cert.Raw}))
	}
	if r.lookupRate <= 0 {
		r.lookupRate = LookupRate
	}
	if r.now == nil {
		r.now = time.Now
	}
	if r.lg == nil {
		r.lg = slog.New(slog.DiscardHandler)
	}
	size, _, err := l.Size()
	if err != nil {
		return nil, err
	}
	applied, err := st.Applied(ctx)
	if err != nil {
		return nil, err
	}
	// Replayed a page at a time (a registry loaded in bulk has a million
	// entries to apply, not to hold in memory at once).
	for applied < size {
		end := min(size, applied+replayPage)
		entries, err := st.Entries(ctx, applied, end)
		if err != nil {
			return nil, err
		}
		for i, e := range entries {
			if err := r.apply(ctx, e, applied+uint64(i)); err != nil {
				return nil, fmt.Errorf("replay registry log entry %d: %w", applied+uint64(i), err)
			}
		}
		if err := st.SetApplied(ctx, end); err != nil {
			return nil, err
		}
		applied = end
	}
	return r, nil
}

// AddIssuer registers a lab with the roots its signatures verify to.
func (r *Registry) AddIssuer(ctx context.Context, lab string, roots []*x509.Certificate) error {
	if lab == "" || len(lab) > 200 || len(roots) == 0 {
		return errors.New("an issuer needs a name (at most 200 bytes) and at least one root certificate")
	}
	if r.key == nil {
		return ErrReadOnly
	}
	var b []byte
	for _, c := range roots {
		b = append(b, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})...)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	// Logged like every other change: who may speak for a lab, and since
	// when, is part of what the registry proves.
	return r.appendEvent(ctx, Event{Type: "issuer", Lab: lab, Time: r.now().UTC().Format(time.RFC3339), Roots: b}, nil)
}

type issuer struct {
	lab   string
	roots []*x509.Certificate
}

func (r *Registry) issuers(ctx context.Context) ([]issuer, error) {
	rows, err := r.st.Issuers(ctx)
	if err != nil {
		return nil, err
	}
	var out []issuer
	for _, row := range rows {
		is := issuer{lab: row.Lab}
		rest := row.RootsPEM
		for {
			var p *pem.Block
			if p, rest = pem.Decode(rest); p == nil {
				break
			}
			if c, err := x509.ParseCertificate(p.Bytes); err == nil {
				is.roots = append(is.roots, c)
			}
		}
		out = append(out, is)
	}
	return out, nil
}

// Roots returns every registered lab root (the trust of the public verify
// endpoint).
func (r *Registry) Roots(ctx context.Context) ([]*x509.Certificate, error) {
	iss, err := r.issuers(ctx)
	if err != nil {
		return nil, err
	}
	var out []*x509.Certificate
	for _, is := range iss {
		out = append(out, is.roots...)
	}
	return out, nil
}

// SubmitDCC registers a whole signed DCC: it must verify as valid to a
// registered lab's roots, and that lab is its issuer.
func (r *Registry) SubmitDCC(ctx context.Context, signed []byte) (*Record, *dcc.Report, error) {
	iss, err := r.issuers(ctx)
	if err != nil {
		return nil, nil, err
	}
	var last *dcc.Report
	for _, is := range iss {
		rep := dcc.Verify(signed, xades.VerifyOptions{Roots: is.roots})
		if rep.Status == xades.Valid {
			if rep.Metadata == nil {
				return nil, rep, errors.New("the DCC has no coreData/uniqueIdentifier")
			}
			rec, err := r.register(ctx, is.lab, *rep.Metadata, "valid", signed)
			return rec, rep, err
		}
		last = rep
		if rep.Status != xades.Untrusted {
			break // manipulated, revoked, invalid: no other root changes that
		}
	}
	if last == nil {
		return nil, nil, fmt.Errorf("%w: no lab is registered", ErrNotIssuer)
	}
	return nil, last, fmt.Errorf("%w: the DCC is %s: %s", ErrNotIssuer, last.Status, last.Reason)
}

// Statement is the content of a lab's signed metadata submission or
// status change (CMS SignedData over its JSON).
type Statement struct {
	Action   string        `json:"action"` // register | revoke
	Metadata *dcc.Metadata `json:"dcc,omitempty"`
	DCCID    string        `json:"dcc_id,omitempty"`
	Reason   string        `json:"reason,omitempty"`
}

// SubmitStatement applies a lab's signed statement: metadata-only
// registration (the content stays private; its hash is logged) or
// revocation of one of its own DCCs.
func (r *Registry) SubmitStatement(ctx context.Context, signedData []byte) (*Record, error) {
	iss, err := r.issuers(ctx)
	if err != nil {
		return nil, err
	}
	var lab string
	var content []byte
	for _, is := range iss {
		pool := x509.NewCertPool()
		for _, c := range is.roots {
			pool.AddCert(c)
		}
		o, err := envelope.Verify(ctx, signedData, envelope.VerifyOptions{Verifier: &envelope.ChainVerifier{Roots: pool}})
		if err == nil {
			lab, content = is.lab, o.Content
			break
		}
	}
	if lab == "" {
		return nil, fmt.Errorf("%w: the statement's signature does not verify to any registered lab root", ErrNotIssuer)
	}
	st, err := ParseStatement(content)
	if err != nil {
		return nil, err
	}
	if st.Action == "register" {
		return r.register(ctx, lab, *st.Metadata, "declared", nil)
	}
	return r.revoke(ctx, lab, st.DCCID, st.Reason)
}

func (r *Registry) register(ctx context.Context, lab string, md dcc.Metadata, status string, content []byte) (*Record, error) {
	if r.key == nil {
		return nil, ErrReadOnly
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if old, err := r.st.DCC(ctx, md.ID); err == nil {
		var om dcc.Metadata
		json.Unmarshal(old.Metadata, &om)
		switch {
		case old.Lab != lab:
			return nil, fmt.Errorf("%w (%s, by %s)", ErrCollision, md.ID, old.Lab)
		case om.ContentHash != md.ContentHash:
			return nil, fmt.Errorf("%w (%s)", ErrReplace, md.ID)
		}
		return r.Lookup(ctx, md.ID) // the same submission again
	} else if !errors.Is(err, store.ErrNotFound) {
		return nil, err
	}
	ev := Event{Type: "register", Lab: lab, Time: r.now().UTC().Format(time.RFC3339), DCC: &md, SignatureStatus: status}
	if err := r.appendEvent(ctx, ev, content); err != nil {
		return nil, err
	}
	return r.Lookup(ctx, md.ID)
}

func (r *Registry) revoke(ctx context.Context, lab, id, reason string) (*Record, error) {
	if r.key == nil {
		return nil, ErrReadOnly
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	old, err := r.st.DCC(ctx, id)
	if errors.Is(err, store.ErrNotFound) {
		return nil, fmt.Errorf("%w %s", ErrUnknown, id)
	}
	if err != nil {
		return nil, err
	}
	if old.Lab != lab {
		return nil, fmt.Errorf("%w: %s was issued by %s", ErrNotIssuer, id, old.Lab)
	}
	if old.RevokedAt == 0 {
		ev := Event{Type: "revoke", Lab: lab, Time: r.now().UTC().Format(time.RFC3339), DCCID: id, Reason: reason}
		if err := r.appendEvent(ctx, ev, nil); err != nil {
			return nil, err
		}
	}
	return r.Lookup(ctx, id)
}

// appendEvent logs an event, applies it and signs the new head.
func (r *Registry) appendEvent(ctx context.Context, ev Event, content []byte) error {
	data, err := json.Marshal(ev)
	if err != nil {
		return err
	}
	before, _, err := r.log.Size()
	if err != nil {
		return err
	}
	first, size, root, err := r.log.Append(ctx, [][]byte{data})
	if errors.Is(err, registrystore.ErrConflict) {
		// An operator command on the same database ('fieldtrust registry
		// issuer' beside 'up') appended first; the log reloads itself.
		first, size, root, err = r.log.Append(ctx, [][]byte{data})
	}
	if err != nil {
		return fmt.Errorf("registry log: %w", err)
	}
	if first > before {
		// What the other writer appended is applied too (apply is
		// idempotent), so SetApplied below never skips an entry.
		es, err := r.st.Entries(ctx, before, first)
		if err != nil {
			return err
		}
		for i, e := range es {
			if err := r.apply(ctx, e, before+uint64(i)); err != nil {
				return err
			}
		}
	}
	r.pendingContent = content
	err = r.apply(ctx, data, first)
	r.pendingContent = nil
	if err != nil {
		return err
	}
	if err := r.st.SetApplied(ctx, size); err != nil {
		return err
	}
	return r.signHead(ctx, size, root)
}

func (r *Registry) signHead(ctx context.Context, size uint64, root []byte) error {
	text := ledger.Checkpoint{Size: size, Root: root, Time: r.now().UTC().Truncate(time.Second)}.MarshalFor(Origin)
	d := sha256.Sum256(text)
	sig, err := ecdsa.SignASN1(rand.Reader, r.key, d[:])
	if err != nil {
		return err
	}
	defer r.forgetHead()
	return r.st.PutHead(ctx, size, text, sig)
}

// apply projects a log entry onto the tables (idempotently).
func (r *Registry) apply(ctx context.Context, data []byte, index uint64) error {
	var ev Event
	if err := json.Unmarshal(data, &ev); err != nil {
		return fmt.Errorf("log entry %d: %w", index, err)
	}
	t, err := time.Parse(time.RFC3339, ev.Time)
	if err != nil {
		return fmt.Errorf("log entry %d: time: %w", index, err)
	}
	switch ev.Type {
	case "issuer":
		return r.st.PutIssuer(ctx, registrystore.Issuer{Lab: ev.Lab, RootsPEM: ev.Roots, CreatedAt: t.Unix()})
	case "register":
		if ev.DCC == nil {
			return fmt.Errorf("log entry %d: register without dcc", index)
		}
		md, _ := json.Marshal(struct {
			dcc.Metadata
			SignatureStatus string `json:"signature_status"`
		}{*ev.DCC, ev.SignatureStatus})
		row := registrystore.DCC{ID: ev.DCC.ID, Lab: ev.Lab, Performed: ev.DCC.PerformanceDate, RegisteredAt: t.Unix(), LeafIndex: index, Metadata: md, Content: r.pendingContent}
		for _, e := range ev.DCC.Equipment {
			row.Equipment = append(row.Equipment, [2]string{e.Issuer, e.Value})
		}
		if err := r.st.PutDCC(ctx, row); err != nil && !errors.Is(err, store.ErrExists) {
			return err
		}
	case "revoke":
		return r.st.RevokeDCC(ctx, ev.DCCID, t.Unix(), ev.Reason, index)
	default:
		return fmt.Errorf("log entry %d: unknown type %q", index, ev.Type)
	}
	return nil
}
