package web

import (
	"context"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/fieldtrust/fieldtrust/internal/dcc/calibration"
	"github.com/fieldtrust/fieldtrust/internal/ledger"
	"github.com/fieldtrust/fieldtrust/internal/pki"
	"github.com/fieldtrust/fieldtrust/internal/store"
	"github.com/fieldtrust/fieldtrust/internal/tacs"
	"github.com/fieldtrust/fieldtrust/internal/topic"
)

// Data is what the query API reads.
type Data interface {
	ListDevices(ctx context.Context, scope string) ([]store.Device, error)
	QuerySnapshots(ctx context.Context, q store.SnapshotQuery) ([]store.SnapshotRecord, error)
	LatestSnapshots(ctx context.Context, scope string) ([]store.SnapshotRecord, error)
	SnapshotByHash(ctx context.Context, scope string, hash []byte) (store.SnapshotRecord, error)
	IntegrityEvents(ctx context.Context, scope string, from, to time.Time, limit int) ([]store.IntegrityEvent, error)
	Rejects(ctx context.Context, from, to time.Time, limit int) ([]store.Reject, error)
	LatestTreeHead(ctx context.Context) (store.TreeHead, error)
}

// Messages reads device messages (the store), by sequence.
type Messages interface {
	DeviceMessages(ctx context.Context, f store.MessageFilter) ([]store.DeviceMessage, error)
}

// Proofs serves ledger proofs (*ledger.Log).
type Proofs interface {
	InclusionProof(ctx context.Context, index, size uint64) ([][]byte, error)
	ConsistencyProof(ctx context.Context, size1, size2 uint64) ([][]byte, error)
}

// API serves /api/v1: devices, snapshots, status, integrity events,
// rejects and ledger proofs, as JSON. Every route needs a client
// certificate; what it returns is limited by the caller's identity:
// accounts see their own subtree (checked with TACS, the same rules as
// MQTT), admin and snapshot-reader services see everything, rejects are
// admin-only. See docs/openapi.yaml.
type API struct {
	Data     Data
	Proofs   Proofs
	Identify func(r *http.Request) (tacs.Subject, bool) // the verified caller
	Grants   tacs.Grants
	Logger   *slog.Logger
	// Calibration, if set, is the DCC fleet link: snapshot and device
	// reads carry a calibration flag, and a device's instrument is read
	// and declared at /api/v1/devices/{path}/calibration and /equipment.
	Calibration Calibration
	// Messages, if set, are the device messages (docs/firmware.md):
	// exports carry those of the caller's scope (version 2), for callers
	// the messages API shows them to (devicemsg.MayRead).
	Messages Messages
	// ExportLimits bound each tenant's exports; zero fields take the
	// defaults.
	ExportLimits ExportLimits
	// Now is the clock of the export limits; nil means time.Now.
	Now func() time.Time
	// Rules serves rules, alarms, tasks and the outbox (rules.go); nil
	// answers those routes with 503.
	Rules RulesData

	gateOnce sync.Once
	gate     *exportGate
}

func (a *API) register(mux *http.ServeMux) {
	mux.HandleFunc("GET /api/v1/devices", a.authed(a.devices))
	mux.HandleFunc("GET /api/v1/devices/{path...}", a.authed(a.deviceRoute))
	mux.HandleFunc("PUT /api/v1/devices/{path...}", a.authed(a.deviceRoute))
	mux.HandleFunc("GET /api/v1/status", a.authed(a.status))
	mux.HandleFunc("GET /api/v1/integrity-events", a.authed(a.events))
	mux.HandleFunc("GET /api/v1/rejects", a.authed(a.rejects))
	mux.HandleFunc("GET /api/v1/ledger/head", a.authed(a.head))
	mux.HandleFunc("GET /api/v1/ledger/proof/{hash}", a.authed(a.proof))
	mux.HandleFunc("GET /api/v1/ledger/consistency", a.authed(a.consistency))
	mux.HandleFunc("GET /api/v1/export", a.authed(a.export))
	// Rules, alarms, tasks and notifications (rules.go).
	mux.HandleFunc("GET /api/v1/rules", a.rulesAuthed(a.listRules))
	mux.HandleFunc("POST /api/v1/rules", a.rulesAuthed(a.addRule))
	mux.HandleFunc("GET /api/v1/rules/{id}", a.rulesAuthed(a.showRule))
	mux.HandleFunc("POST /api/v1/rules/{id}/disable", a.rulesAuthed(a.enableRule(false)))
	mux.HandleFunc("POST /api/v1/rules/{id}/enable", a.rulesAuthed(a.enableRule(true)))
	mux.HandleFunc("GET /api/v1/rule-errors", a.rulesAuthed(a.listRuleErrors))
	mux.HandleFunc("GET /api/v1/alarms", a.rulesAuthed(a.listAlarms))
	mux.HandleFunc("GET /api/v1/alarms/{id}", a.rulesAuthed(a.showAlarm))
	mux.HandleFunc("POST /api/v1/alarms/{id}/ack", a.rulesAuthed(a.changeAlarm(false)))
	mux.HandleFunc("POST /api/v1/alarms/{id}/clear", a.rulesAuthed(a.changeAlarm(true)))
	mux.HandleFunc("GET /api/v1/tasks", a.rulesAuthed(a.listTasks))
	mux.HandleFunc("GET /api/v1/tasks/{id}", a.rulesAuthed(a.showTask))
	mux.HandleFunc("POST /api/v1/tasks/{id}", a.rulesAuthed(a.updateTask))
	mux.HandleFunc("GET /api/v1/outbox", a.rulesAuthed(a.listOutbox))
	mux.HandleFunc("POST /api/v1/outbox/{id}/retry", a.rulesAuthed(a.retryOutbox))
}

type handler func(w http.ResponseWriter, r *http.Request, subj tacs.Subject, scope string)

// authed identifies the caller and derives its scope: "" for services
// that read all snapshots, the identity path for accounts.
func (a *API) authed(h handler) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		subj, ok := a.Identify(r)
		if !ok {
			writeError(w, http.StatusUnauthorized, "a client certificate of this platform is required")
			return
		}
		scope, ok := ReadScope(a.Grants, subj)
		if !ok {
			writeError(w, http.StatusForbidden, "service role "+subj.Role+" may not read snapshots")
			return
		}
		h(w, r, subj, scope)
	}
}

// ReadScope is the store scope of what subj may read: its identity path
// for an account, "" (everything) for a service whose grants read every
// gateway's snapshots; ok is false for a service that may not. The API and
// the console both scope reads with it.
func ReadScope(g tacs.Grants, subj tacs.Subject) (scope string, ok bool) {
	if !subj.IsService() {
		return subj.Path, true
	}
	return "", tacs.Authorize(g, subj, tacs.Subscribe, topic.AllSnapshots).Allowed
}

// CanRead applies TACS: may subj read the snapshots of gateway path gw?
func CanRead(g tacs.Grants, subj tacs.Subject, gw string) bool {
	return tacs.Authorize(g, subj, tacs.Subscribe, topic.SnapshotsOf(gw)).Allowed
}

func (a *API) canRead(subj tacs.Subject, gw string) bool { return CanRead(a.Grants, subj, gw) }

type deviceJSON struct {
	Path             string    `json:"path"`
	Gateway          string    `json:"gateway"`
	Device           string    `json:"device"`
	Type             string    `json:"type,omitempty"`
	LastSeq          uint64    `json:"last_seq"`
	LastSnapshotTime time.Time `json:"last_snapshot_time"`
	Snapshots        uint64    `json:"snapshots"`
	// Calibration is the device's instrument's calibration now (absent
	// without a bound instrument).
	Calibration *calibration.Flag `json:"calibration,omitempty"`
}

func (a *API) devices(w http.ResponseWriter, r *http.Request, _ tacs.Subject, scope string) {
	list, err := a.Data.ListDevices(r.Context(), scope)
	if err != nil {
		a.serverError(w, r, err)
		return
	}
	out := make([]deviceJSON, 0, len(list))
	flag, err := flaggerOf(a, r.Context(), list, func(d store.Device) (string, string) { return d.Gateway, d.Device })
	if err != nil {
		a.serverError(w, r, err)
		return
	}
	now := a.now()
	for _, d := range list {
		out = append(out, deviceJSON{Path: d.Path(), Gateway: d.Gateway, Device: d.Device, Type: d.DeviceType, LastSeq: d.LastSeq, LastSnapshotTime: d.LastTime, Snapshots: d.Snapshots,
			Calibration: flag(d.Gateway, d.Device, now)})
	}
	writeJSON(w, http.StatusOK, map[string]any{"devices": out})
}

// deviceRoute serves /api/v1/devices/{master}/{account}/{gateway}/{device}/
// snapshots (GET), calibration (GET) and equipment (PUT).
func (a *API) deviceRoute(w http.ResponseWriter, r *http.Request, subj tacs.Subject, scope string) {
	rest := r.PathValue("path")
	parts := strings.Split(rest, "/")
	if len(parts) != 5 || (parts[4] != "snapshots" && parts[4] != "calibration" && parts[4] != "equipment") {
		writeError(w, http.StatusNotFound, "use /api/v1/devices/{master}/{account}/{gateway}/{device}/snapshots, …/calibration or …/equipment")
		return
	}
	gw, err := pki.ParsePath(strings.Join(parts[:3], "/"))
	if err != nil || pki.ValidateElement(parts[3]) != nil {
		writeError(w, http.StatusBadRequest, "bad device path: "+errText(err, pki.ValidateElement(parts[3])))
		return
	}
	if !a.canRead(subj, gw.String()) {
		// The same answer as for a device that does not exist: a customer
		// learns nothing about another's fleet.
		writeError(w, http.StatusNotFound, "no such device")
		return
	}
	switch method := map[string]string{"snapshots": "GET", "calibration": "GET", "equipment": "PUT"}[parts[4]]; {
	case r.Method != method:
		w.Header().Set("Allow", method)
		writeError(w, http.StatusMethodNotAllowed, parts[4]+" takes "+method)
		return
	case parts[4] == "calibration":
		a.calibration(w, r, gw.String(), parts[3])
		return
	case parts[4] == "equipment":
		a.bindEquipment(w, r, subj, gw.String(), parts[3])
		return
	}
	q := store.SnapshotQuery{Scope: scope, Gateway: gw.String(), Device: parts[3]}
	var ok bool
	if q.From, q.To, q.Limit, ok = rangeParams(w, r, store.DefaultLimit, store.MaxLimit); !ok {
		return
	}
	vals := r.URL.Query()
	for _, c := range vals["channel"] {
		for _, name := range strings.Split(c, ",") {
			if pki.ValidateElement(name) != nil {
				writeError(w, http.StatusBadRequest, fmt.Sprintf("channel %q: use letters, digits, '.', '_' and '-'", name))
				return
			}
			q.Channels = append(q.Channels, name)
		}
	}
	if c := vals.Get("after"); c != "" {
		if q.After, err = decodeCursor(c); err != nil {
			writeError(w, http.StatusBadRequest, "after: "+err.Error())
			return
		}
	}
	recs, err := a.Data.QuerySnapshots(r.Context(), q)
	if err != nil {
		a.serverError(w, r, err)
		return
	}
	out, ok := a.snapshotsJSON(w, r, recs)
	if !ok {
		return
	}
	resp := map[string]any{"snapshots": out}
	if len(recs) == q.Limit {
		resp["next"] = encodeCursor(recs[len(recs)-1].Cursor())
	}
	writeJSON(w, http.StatusOK, resp)
}

type valueJSON struct {
	Channel string  `json:"channel"`
	Value   float64 `json:"value"`
	Unit    string  `json:"unit,omitempty"`
	Group   string  `json:"group,omitempty"`
}

type snapshotJSON struct {
	Path        string      `json:"path"`
	Seq         uint64      `json:"seq"`
	Time        time.Time   `json:"time"`
	Hash        string      `json:"hash"`
	Prev        string      `json:"prev,omitempty"`
	Type        string      `json:"type,omitempty"`
	Signer      string      `json:"signer"`
	Provenance  string      `json:"provenance"`
	SignedAt    time.Time   `json:"signed_at"`
	ReceivedAt  time.Time   `json:"received_at"`
	LedgerIndex uint64      `json:"ledger_index"`
	Values      []valueJSON `json:"values"`
	// Calibration flags the measurement by its instrument's calibration at
	// the measurement time (absent without a bound instrument).
	Calibration *calibration.Flag `json:"calibration,omitempty"`
}

func toJSON(r store.SnapshotRecord) snapshotJSON {
	s := snapshotJSON{Path: r.Path(), Seq: r.Seq, Time: r.Time, Hash: hex.EncodeToString(r.Hash), Prev: hex.EncodeToString(r.Prev),
		Type: r.DeviceType, Signer: r.Signer, Provenance: r.Provenance(), SignedAt: r.SignedAt, ReceivedAt: r.ReceivedAt, LedgerIndex: r.LedgerIndex}
	if len(r.Values) > 0 {
		s.Values = make([]valueJSON, len(r.Values))
	}
	for i, v := range r.Values {
		s.Values[i] = valueJSON(v)
	}
	return s
}

func (a *API) status(w http.ResponseWriter, r *http.Request, _ tacs.Subject, scope string) {
	recs, err := a.Data.LatestSnapshots(r.Context(), scope)
	if err != nil {
		a.serverError(w, r, err)
		return
	}
	out, ok := a.snapshotsJSON(w, r, recs)
	if !ok {
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"devices": out})
}

// snapshotsJSON converts records, each flagged by its calibration.
func (a *API) snapshotsJSON(w http.ResponseWriter, r *http.Request, recs []store.SnapshotRecord) ([]snapshotJSON, bool) {
	out := make([]snapshotJSON, 0, len(recs))
	flag, err := flaggerOf(a, r.Context(), recs, func(rec store.SnapshotRecord) (string, string) { return rec.Gateway, rec.Device })
	if err != nil {
		a.serverError(w, r, err)
		return nil, false
	}
	for _, rec := range recs {
		j := toJSON(rec)
		j.Calibration = flag(rec.Gateway, rec.Device, rec.Time)
		out = append(out, j)
	}
	return out, true
}

func (a *API) events(w http.ResponseWriter, r *http.Request, _ tacs.Subject, scope string) {
	from, to, limit, ok := rangeParams(w, r, store.DefaultLimit, store.MaxLimit)
	if !ok {
		return
	}
	evs, err := a.Data.IntegrityEvents(r.Context(), scope, from, to, limit)
	if err != nil {
		a.serverError(w, r, err)
		return
	}
	type eventJSON struct {
		Path        string    `json:"path"`
		Kind        string    `json:"kind"`
		Seq         uint64    `json:"seq"`
		ExpectedSeq uint64    `json:"expected_seq,omitempty"`
		Hash        string    `json:"hash,omitempty"`
		Detail      string    `json:"detail,omitempty"`
		At          time.Time `json:"at"`
	}
	out := make([]eventJSON, 0, len(evs))
	for _, e := range evs {
		out = append(out, eventJSON{Path: e.Gateway + "/" + e.Device, Kind: e.Kind, Seq: e.Seq, ExpectedSeq: e.ExpectedSeq, Hash: hex.EncodeToString(e.Hash), Detail: e.Detail, At: e.At})
	}
	writeJSON(w, http.StatusOK, map[string]any{"events": out})
}

func (a *API) rejects(w http.ResponseWriter, r *http.Request, subj tacs.Subject, _ string) {
	// A reject may concern any tenant: reading rejects is for a service
	// whose grants let it read every tenant's topics (admin, by default).
	if !tacs.Authorize(a.Grants, subj, tacs.Subscribe, topic.Everything).Allowed {
		writeError(w, http.StatusForbidden, "rejects are for admins: they may concern any tenant")
		return
	}
	from, to, limit, ok := rangeParams(w, r, store.DefaultLimit, store.MaxLimit)
	if !ok {
		return
	}
	rs, err := a.Data.Rejects(r.Context(), from, to, limit)
	if err != nil {
		a.serverError(w, r, err)
		return
	}
	type rejectJSON struct {
		Topic   string    `json:"topic"`
		Gateway string    `json:"gateway,omitempty"`
		Reason  string    `json:"reason"`
		SHA256  string    `json:"sha256,omitempty"` // absent for a summary
		Size    int       `json:"size"`
		At      time.Time `json:"at"`
		Count   int       `json:"count"`
		LastAt  time.Time `json:"last_at"`
	}
	out := make([]rejectJSON, 0, len(rs))
	for _, x := range rs {
		out = append(out, rejectJSON{x.Topic, x.Gateway, x.Reason, hex.EncodeToString(x.RawHash), x.Size, x.At, x.N(), x.Last()})
	}
	writeJSON(w, http.StatusOK, map[string]any{"rejects": out})
}

// TreeHeadJSON is the signed tree head as the API serves it and
// 'fieldtrust ledger verify' reads it.
type TreeHeadJSON struct {
	Size       uint64 `json:"size"`
	Root       string `json:"root"`       // hex
	Checkpoint string `json:"checkpoint"` // the signed text
	Signature  string `json:"signature"`  // base64 DER ECDSA
	CertChain  string `json:"certificate_chain"`
}

func (a *API) head(w http.ResponseWriter, r *http.Request, _ tacs.Subject, _ string) {
	th, err := a.Data.LatestTreeHead(r.Context())
	if errors.Is(err, store.ErrNotFound) {
		writeError(w, http.StatusNotFound, "no signed tree head yet: nothing has been received")
		return
	}
	if err != nil {
		a.serverError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, TreeHeadJSON{Size: th.Size, Root: hex.EncodeToString(th.Root), Checkpoint: string(th.Checkpoint),
		Signature: base64.StdEncoding.EncodeToString(th.Signature), CertChain: string(th.CertChain)})
}

// ProofJSON is an inclusion proof of one snapshot.
type ProofJSON struct {
	Path      string   `json:"path"`
	Seq       uint64   `json:"seq"`
	Hash      string   `json:"hash"`      // snapshot hash, hex
	LeafData  string   `json:"leaf_data"` // base64 of ledger.LeafData
	LeafIndex uint64   `json:"leaf_index"`
	TreeSize  uint64   `json:"tree_size"`
	Proof     []string `json:"proof"` // hex node hashes
}

// proof serves an inclusion proof of the snapshot with the given hash in
// the tree of ?size= (default: the latest signed head).
func (a *API) proof(w http.ResponseWriter, r *http.Request, subj tacs.Subject, scope string) {
	hash, err := hex.DecodeString(r.PathValue("hash"))
	if err != nil || len(hash) != 32 {
		writeError(w, http.StatusBadRequest, "hash: 64 hex digits of a snapshot's SHA-256")
		return
	}
	rec, err := a.Data.SnapshotByHash(r.Context(), scope, hash)
	if errors.Is(err, store.ErrNotFound) || (err == nil && !a.canRead(subj, rec.Gateway)) {
		writeError(w, http.StatusNotFound, "no such snapshot")
		return
	}
	if err != nil {
		a.serverError(w, r, err)
		return
	}
	size, asked, ok := a.treeSize(w, r)
	if !ok {
		return
	}
	if rec.LedgerIndex >= size {
		if asked {
			writeError(w, http.StatusBadRequest, fmt.Sprintf("size %d: the snapshot is leaf %d, in trees of size %d and more; ask for the size of a later signed tree head", size, rec.LedgerIndex, rec.LedgerIndex+1))
			return
		}
		writeError(w, http.StatusConflict, fmt.Sprintf("snapshot is leaf %d, not yet in a signed tree of size %d; retry shortly", rec.LedgerIndex, size))
		return
	}
	p, err := a.Proofs.InclusionProof(r.Context(), rec.LedgerIndex, size)
	if err != nil {
		a.proofError(w, r, err)
		return
	}
	var h [32]byte
	copy(h[:], rec.Hash)
	writeJSON(w, http.StatusOK, ProofJSON{Path: rec.Path(), Seq: rec.Seq, Hash: hex.EncodeToString(rec.Hash),
		LeafData: base64.StdEncoding.EncodeToString(ledger.LeafData(rec.Gateway, h)), LeafIndex: rec.LedgerIndex, TreeSize: size, Proof: hexAll(p)})
}

func (a *API) consistency(w http.ResponseWriter, r *http.Request, _ tacs.Subject, _ string) {
	from, err1 := strconv.ParseUint(r.URL.Query().Get("from"), 10, 64)
	to, err2 := strconv.ParseUint(r.URL.Query().Get("to"), 10, 64)
	if err1 != nil || err2 != nil || from == 0 || from > to {
		writeError(w, http.StatusBadRequest, "from and to: tree sizes with 0 < from <= to")
		return
	}
	p, err := a.Proofs.ConsistencyProof(r.Context(), from, to)
	if err != nil {
		a.proofError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"from": from, "to": to, "proof": hexAll(p)})
}

// proofError answers a failed proof: a tree larger than the ledger is the
// client's mistake (400), anything else the platform's.
func (a *API) proofError(w http.ResponseWriter, r *http.Request, err error) {
	if errors.Is(err, ledger.ErrBeyondTree) {
		writeError(w, http.StatusBadRequest, err.Error()+"; ask for the size of a signed tree head (GET /api/v1/ledger/head)")
		return
	}
	a.serverError(w, r, err)
}

// treeSize is ?size= (asked is true) or the latest signed head's size.
func (a *API) treeSize(w http.ResponseWriter, r *http.Request) (size uint64, asked, ok bool) {
	if s := r.URL.Query().Get("size"); s != "" {
		n, err := strconv.ParseUint(s, 10, 64)
		if err != nil || n == 0 {
			writeError(w, http.StatusBadRequest, "size: a positive tree size")
			return 0, true, false
		}
		return n, true, true
	}
	th, err := a.Data.LatestTreeHead(r.Context())
	if errors.Is(err, store.ErrNotFound) {
		writeError(w, http.StatusConflict, "no signed tree head yet; retry shortly")
		return 0, false, false
	}
	if err != nil {
		a.serverError(w, r, err)
		return 0, false, false
	}
	return th.Size, false, true
}

// rangeParams reads the parameters every list shares: from and to (RFC
// 3339, from before to) and limit (1 to maxLimit, default def).
func rangeParams(w http.ResponseWriter, r *http.Request, def, maxLimit int) (from, to time.Time, limit int, ok bool) {
	var err error
	vals := r.URL.Query()
	if from, err = parseTime(vals.Get("from")); err != nil {
		writeError(w, http.StatusBadRequest, "from: "+err.Error())
		return
	}
	if to, err = parseTime(vals.Get("to")); err != nil {
		writeError(w, http.StatusBadRequest, "to: "+err.Error())
		return
	}
	if !from.IsZero() && !to.IsZero() && !from.Before(to) {
		writeError(w, http.StatusBadRequest, "from must be before to")
		return
	}
	limit = def
	if l := vals.Get("limit"); l != "" {
		if limit, err = strconv.Atoi(l); err != nil || limit < 1 || limit > maxLimit {
			writeError(w, http.StatusBadRequest, fmt.Sprintf("limit %q: a number from 1 to %d", l, maxLimit))
			return
		}
	}
	return from, to, limit, true
}

func parseTime(s string) (time.Time, error) {
	if s == "" {
		return time.Time{}, nil
	}
	t, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		return t, fmt.Errorf("%q is not an RFC 3339 time such as 2026-11-22T08:00:00Z", s)
	}
	return t, nil
}

func hexAll(hs [][]byte) []string {
	out := make([]string, len(hs))
	for i, h := range hs {
		out[i] = hex.EncodeToString(h)
	}
	return out
}

// serverError answers a failure of the store or ledger: the client gets a
// safe message, the log the detail.
func (a *API) serverError(w http.ResponseWriter, r *http.Request, err error) {
	if errors.Is(err, store.ErrInvalidScope) {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	if a.Logger != nil {
		a.Logger.Error("api request failed", "path", r.URL.Path, "err", err)
	}
	writeError(w, http.StatusInternalServerError, "internal error; the platform log has the details")
}

func errText(errs ...error) string {
	for _, e := range errs {
		if e != nil {
			return e.Error()
		}
	}
	return ""
}
