package web

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/fieldtrust/fieldtrust/internal/devicemsg"
	"github.com/fieldtrust/fieldtrust/internal/ledger"
	"github.com/fieldtrust/fieldtrust/internal/snapshot"
	"github.com/fieldtrust/fieldtrust/internal/store"
	"github.com/fieldtrust/fieldtrust/internal/tacs"
)

// The API's JSON forms of heads and proofs are the ledger package's, which
// 'fieldtrust ledger verify' reads: these conversions stop compiling if
// their fields ever drift apart (export_test.go checks the JSON names).
var (
	_ = ledger.SignedHead(TreeHeadJSON{})
	_ = ledger.InclusionProof(ProofJSON{})
)

// exportPage is the page size of the store queries behind an export: the
// export holds at most one page of records in memory, whatever its size.
const exportPage = 500

// Export pages: how many snapshots one response covers at most, unless
// ?limit= asks for fewer (default) or more (up to the maximum). A page's
// cost (a proof per snapshot, ~1.5 KB of JSON each) is bounded by these.
const (
	DefaultExportLimit = 10000
	MaxExportLimit     = 50000
)

func (a *API) exportGate() *exportGate {
	a.gateOnce.Do(func() { a.gate = newExportGate(a.ExportLimits, a.Now, a.Logger) })
	return a.gate
}

// export serves GET /api/v1/export?from=&to=&limit=&after=: a page of the
// snapshots in the caller's scope measured in [from, to), each with its
// exact encoding and an inclusion proof against the latest signed tree
// head, as one JSON document written as a stream (format:
// ledger.ExportHeader). A page looks at up to limit snapshots; when more
// follow, its trailer's "next" is the cursor to pass as after= for the
// next page. Snapshots that arrived after the head the first page was
// proved against are left out of every page and counted in
// not_yet_covered.
//
// Each tenant may stream a bounded number of pages at once and ask for
// them at a bounded rate (ExportLimits); beyond that it gets 429 with
// Retry-After.
//
// Once the first bytes are out, the status is 200; a failure after that
// aborts the connection, so the client sees a truncated document (which
// 'fieldtrust ledger verify' refuses: it requires the closing count), never
// a complete-looking partial one.
func (a *API) export(w http.ResponseWriter, r *http.Request, subj tacs.Subject, scope string) {
	ctx := r.Context()
	from, to, limit, ok := rangeParams(w, r, DefaultExportLimit, MaxExportLimit)
	if !ok {
		return
	}
	var after *exportCursor
	if s := r.URL.Query().Get("after"); s != "" {
		c, err := decodeExportCursor(s)
		if err != nil {
			writeError(w, http.StatusBadRequest, "after: "+err.Error())
			return
		}
		after = &c
	}
	if _, _, err := store.ScopeRange(scope); err != nil {
		a.serverError(w, r, err)
		return
	}
	release, err := a.exportGate().acquire(subj)
	if err != nil {
		var le *limitError
		if errors.As(err, &le) {
			w.Header().Set("Retry-After", le.retryAfterSeconds())
			writeError(w, http.StatusTooManyRequests, le.Error())
			return
		}
		a.serverError(w, r, err)
		return
	}
	defer release()
	th, err := a.Data.LatestTreeHead(ctx)
	if errors.Is(err, store.ErrNotFound) {
		writeError(w, http.StatusConflict, "no signed tree head yet; retry shortly")
		return
	}
	if err != nil {
		a.serverError(w, r, err)
		return
	}
	covered := th.Size
	if after != nil {
		if after.Covered > th.Size {
			writeError(w, http.StatusBadRequest, fmt.Sprintf("after: %v (it covers %d leaves, the ledger's latest head %d)", errCursor, after.Covered, th.Size))
			return
		}
		covered = after.Covered
	}
	// Device messages (version 2) for callers the messages API would show
	// them to; others get the snapshots-only export.
	withMessages := a.Messages != nil && devicemsg.MayRead(a.Grants, subj, scope)
	version := ledger.ExportVersionSnapshots
	if withMessages {
		version = ledger.ExportVersion
	}
	hdr := ledger.ExportHeader{Version: version, Scope: scope,
		TreeHead: ledger.SignedHead{Size: th.Size, Root: hex.EncodeToString(th.Root), Checkpoint: string(th.Checkpoint),
			Signature: base64.StdEncoding.EncodeToString(th.Signature), CertChain: string(th.CertChain)}}
	if !from.IsZero() {
		hdr.From = from.UTC().Format(time.RFC3339Nano)
	}
	if !to.IsZero() {
		hdr.To = to.UTC().Format(time.RFC3339Nano)
	}
	if after != nil {
		hdr.After = encodeToken(after)
	}
	head, err := json.Marshal(hdr)
	if err != nil {
		a.serverError(w, r, err)
		return
	}

	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Disposition", `attachment; filename="fieldtrust-export.json"`)
	w.WriteHeader(http.StatusOK)
	bw := bufio.NewWriterSize(w, 64<<10)
	abort := func(err error) {
		if a.Logger != nil {
			a.Logger.Error("export aborted", "path", r.URL.Path, "scope", scope, "err", err)
		}
		panic(http.ErrAbortHandler)
	}
	// The header object, left open for the snapshots.
	bw.Write(bytes.TrimSuffix(head, []byte("}")))
	bw.WriteString(`,"snapshots":[`)
	var trailer ledger.ExportTrailer
	q := store.SnapshotQuery{Scope: scope, From: from, To: to}
	if after != nil {
		q.After = &after.Cursor
	}
	for seen := 0; ; {
		q.Limit = min(exportPage, limit-seen)
		if q.Limit == 0 {
			// The page is full: a next page only if there is more.
			q.Limit = 1
			more, err := a.Data.QuerySnapshots(ctx, q)
			if err != nil {
				abort(err)
			}
			if len(more) > 0 {
				trailer.Next = encodeToken(exportCursor{Cursor: *q.After, Covered: covered})
			}
			break
		}
		recs, err := a.Data.QuerySnapshots(ctx, q)
		if err != nil {
			abort(err)
		}
		seen += len(recs)
		for _, rec := range recs {
			if !a.canRead(subj, rec.Gateway) {
				continue // the scope already excludes it; TACS has the last word
			}
			if rec.LedgerIndex >= covered {
				trailer.NotYetCovered++
				continue
			}
			e, err := a.exportEntry(r, rec, th.Size)
			if err != nil {
				abort(err)
			}
			if trailer.Count > 0 {
				bw.WriteByte(',')
			}
			bw.WriteByte('\n')
			bw.Write(e)
			trailer.Count++
		}
		if _, err := bw.Write(nil); err != nil || ctx.Err() != nil {
			return // the client went away
		}
		if len(recs) < q.Limit {
			break
		}
		q.After = recs[len(recs)-1].Cursor()
	}
	fmt.Fprintf(bw, "\n],\"count\":%d", trailer.Count)
	if withMessages && trailer.Next == "" {
		// The last page carries the device messages.
		mt, err := a.exportMessages(r, bw, subj, scope, from, to, covered, th.Size)
		if err != nil {
			abort(err)
		}
		if ctx.Err() != nil {
			return
		}
		fmt.Fprintf(bw, ",\"message_count\":%d,\"messages_not_yet_covered\":%d", mt.MessageCount, mt.MessagesNotYetCovered)
	}
	fmt.Fprintf(bw, ",\"not_yet_covered\":%d", trailer.NotYetCovered)
	if trailer.Next != "" {
		next, _ := json.Marshal(trailer.Next)
		bw.WriteString(`,"next":`)
		bw.Write(next)
	}
	bw.WriteString("}\n")
	bw.Flush()
}

// exportMessages writes the device_messages member: every message of the
// scope's gateways recorded in [from, to) and in the ledger below covered,
// proved against the head of size size; the others are counted as not yet
// covered.
func (a *API) exportMessages(r *http.Request, bw *bufio.Writer, subj tacs.Subject, scope string, from, to time.Time, covered, size uint64) (ledger.ExportMessagesTrailer, error) {
	ctx := r.Context()
	var mt ledger.ExportMessagesTrailer
	bw.WriteString(`,"device_messages":[`)
	f := store.MessageFilter{Scope: scope, Limit: exportPage}
	for {
		ms, err := a.Messages.DeviceMessages(ctx, f)
		if err != nil {
			return mt, err
		}
		for _, m := range ms {
			if !a.canRead(subj, m.Gateway) || (!from.IsZero() && m.At.Before(from)) || (!to.IsZero() && !m.At.Before(to)) {
				continue
			}
			if m.LedgerIndex < 0 || uint64(m.LedgerIndex) >= covered {
				mt.MessagesNotYetCovered++
				continue
			}
			p, err := a.Proofs.InclusionProof(ctx, uint64(m.LedgerIndex), size)
			if err != nil {
				return mt, fmt.Errorf("inclusion proof of message %s, leaf %d: %w", m.ID, m.LedgerIndex, err)
			}
			e, err := json.Marshal(ledger.ExportMessageOf(m.Gateway, devicemsg.Record(m), uint64(m.LedgerIndex), p))
			if err != nil {
				return mt, err
			}
			if mt.MessageCount > 0 {
				bw.WriteByte(',')
			}
			bw.WriteByte('\n')
			bw.Write(e)
			mt.MessageCount++
		}
		if _, err := bw.Write(nil); err != nil || ctx.Err() != nil {
			return mt, nil // the client went away
		}
		if len(ms) < f.Limit {
			break
		}
		f.After = ms[len(ms)-1].Seq
	}
	bw.WriteString("\n]")
	return mt, nil
}

// exportEntry re-encodes a stored snapshot and proves its leaf.
func (a *API) exportEntry(r *http.Request, rec store.SnapshotRecord, size uint64) ([]byte, error) {
	enc, err := snapshot.Encode(rec.Snapshot())
	if err != nil {
		return nil, fmt.Errorf("re-encode %s seq %d: %w", rec.Path(), rec.Seq, err)
	}
	if h := sha256.Sum256(enc); !bytes.Equal(h[:], rec.Hash) {
		// The store no longer re-encodes what was signed: serving it would
		// hand the customer a snapshot that fails verification for a
		// reason of ours.
		return nil, fmt.Errorf("stored snapshot %s seq %d re-encodes to %x, not its hash %x", rec.Path(), rec.Seq, h, rec.Hash)
	}
	p, err := a.Proofs.InclusionProof(r.Context(), rec.LedgerIndex, size)
	if err != nil {
		return nil, fmt.Errorf("inclusion proof of leaf %d: %w", rec.LedgerIndex, err)
	}
	return json.Marshal(ledger.ExportSnapshot{Path: rec.Path(), Seq: rec.Seq, Hash: hex.EncodeToString(rec.Hash),
		Snapshot: base64.StdEncoding.EncodeToString(enc), LeafIndex: rec.LedgerIndex, Proof: hexAll(p), Provenance: rec.Provenance()})
}
