package devicemsg

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/fieldtrust/fieldtrust/internal/ident"
	"github.com/fieldtrust/fieldtrust/internal/store"
	"github.com/fieldtrust/fieldtrust/internal/tacs"
	"github.com/fieldtrust/fieldtrust/internal/topic"
)

// Audit serves what was sent to a customer's gateways and what they
// answered:
//
//	GET /api/v1/gateways/{scope}/messages[?after=SEQ&limit=N&kind=K]
//
// where scope is a master account, an account or a gateway. An account
// identity reads its own subtree (a foreign scope is a 404, as elsewhere);
// a service needs a role that may read every tenant's topics (admin).
// Each record carries its ledger leaf index and record hash: the leaf is
// ledger.LeafData(gateway, record_hash) and record_hash is RecordHash of
// the record (body included), so the customer can check it against a
// signed tree head with the ledger's inclusion proofs.
type Audit struct {
	Store interface {
		DeviceMessages(ctx context.Context, f store.MessageFilter) ([]store.DeviceMessage, error)
	}
	Identify func(r *http.Request) (tacs.Subject, bool)
	Grants   tacs.Grants
	Log      *slog.Logger
}

// MayRead is the one rule of who reads the device messages of a scope (a
// master account, an account or a gateway path; "" for everything):
// reading a scope's messages is reading its gateways' topics, so TACS
// decides, as on MQTT. An account identity reads its own subtree; a
// service needs a role that may read every tenant's topics (admin). The
// API and the console's audit page both ask it.
func MayRead(g tacs.Grants, subj tacs.Subject, scope string) bool {
	all := tacs.Authorize(g, subj, tacs.Subscribe, topic.Everything).Allowed
	if scope == "" {
		return all
	}
	return tacs.Authorize(g, subj, tacs.Subscribe, scope+"/#").Allowed && (!subj.IsService() || all)
}

// Outbound reports whether a message of the kind went to the gateway
// (command, notice, download) rather than came from it (result, status,
// refusal).
func Outbound(kind string) bool {
	return kind == KindCommand || kind == KindNotice || kind == KindDownload
}

// TopicOf is the MQTT topic a device message travelled on: commands and
// results on the gateway's commands channels, notices, downloads (an
// HTTPS download is also announced on the firmware topic) and status
// reports on its firmware channels; a refusal on the channel it refers to.
func TopicOf(m store.DeviceMessage) string {
	switch {
	case m.Kind == KindCommand:
		return topic.CommandsOf(m.Gateway)
	case m.Kind == KindResult, m.Kind == KindRefusal && m.Name == "commands":
		return topic.CommandResultsOf(m.Gateway)
	case m.Kind == KindNotice, m.Kind == KindDownload:
		return topic.FirmwareOf(m.Gateway)
	default:
		return topic.FirmwareStatusOf(m.Gateway)
	}
}

// AuditRecord is one record of the audit answer.
type AuditRecord struct {
	Seq         int64     `json:"seq"`
	ID          string    `json:"id"`
	Kind        string    `json:"kind"`
	Gateway     string    `json:"gateway"`
	Ref         string    `json:"ref,omitempty"`
	Sender      string    `json:"sender,omitempty"`
	Name        string    `json:"name,omitempty"`
	At          time.Time `json:"at"`
	State       string    `json:"state,omitempty"`
	LedgerIndex int64     `json:"ledger_index"`
	RecordHash  string    `json:"record_hash"`
	Body        []byte    `json:"body"` // base64: the exact envelope or record
}

const maxAuditPage = 1000

func (a *Audit) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	subj, ok := a.Identify(r)
	if !ok {
		http.Error(w, "client certificate required", http.StatusUnauthorized)
		return
	}
	scope, found := strings.CutSuffix(r.PathValue("path"), "/messages")
	if !found {
		http.Error(w, "use GET /api/v1/gateways/{master}[/{account}[/{gateway}]]/messages", http.StatusNotFound)
		return
	}
	parts, err := ident.SplitPath(scope)
	if err != nil || len(parts) > 3 {
		http.Error(w, fmt.Sprintf("bad scope %q: want master, master/account or master/account/gateway", scope), http.StatusBadRequest)
		return
	}
	if !MayRead(a.Grants, subj, scope) {
		http.Error(w, "not found", http.StatusNotFound)
		return
	}
	q := r.URL.Query()
	f := store.MessageFilter{Scope: scope, Kind: q.Get("kind"), Limit: 100}
	if v := q.Get("after"); v != "" {
		if f.After, err = strconv.ParseInt(v, 10, 64); err != nil || f.After < 0 {
			http.Error(w, "after: want a record's seq", http.StatusBadRequest)
			return
		}
	}
	if v := q.Get("limit"); v != "" {
		if f.Limit, err = strconv.Atoi(v); err != nil || f.Limit < 1 || f.Limit > maxAuditPage {
			http.Error(w, fmt.Sprintf("limit: want 1 to %d", maxAuditPage), http.StatusBadRequest)
			return
		}
	}
	msgs, err := a.Store.DeviceMessages(r.Context(), f)
	if errors.Is(err, store.ErrInvalidScope) {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	if err != nil {
		a.Log.Error("device messages", "err", err)
		http.Error(w, "device messages unavailable", http.StatusInternalServerError)
		return
	}
	out := struct {
		Messages []AuditRecord `json:"messages"`
		Next     int64         `json:"next,omitempty"`
	}{Messages: []AuditRecord{}}
	for _, m := range msgs {
		h := RecordHash(m)
		out.Messages = append(out.Messages, AuditRecord{Seq: m.Seq, ID: m.ID, Kind: m.Kind, Gateway: m.Gateway, Ref: m.Ref, Sender: m.Sender, Name: m.Name,
			At: m.At, State: m.State, LedgerIndex: m.LedgerIndex, RecordHash: hex.EncodeToString(h[:]), Body: m.Body})
	}
	if len(msgs) == f.Limit {
		out.Next = msgs[len(msgs)-1].Seq
	}
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(out)
}
