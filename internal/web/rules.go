package web

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/fieldtrust/fieldtrust/internal/rules"
	"github.com/fieldtrust/fieldtrust/internal/store"
	"github.com/fieldtrust/fieldtrust/internal/tacs"
	"github.com/fieldtrust/fieldtrust/internal/topic"
)

// RulesData is what the rules, alarms and tasks routes use of the store.
type RulesData interface {
	rules.RuleStore
	Rule(ctx context.Context, id string) (store.Rule, error)
	ListRules(ctx context.Context, scope string) ([]store.Rule, error)
	SetRuleEnabled(ctx context.Context, id string, enabled bool) error
	Alarms(ctx context.Context, q store.AlarmQuery) ([]store.Alarm, error)
	Alarm(ctx context.Context, id string) (store.Alarm, error)
	AckAlarm(ctx context.Context, id, by string, at time.Time) (store.Alarm, error)
	ClearAlarm(ctx context.Context, id, by string, at time.Time) (store.Alarm, error)
	Tasks(ctx context.Context, q store.TaskQuery) ([]store.Task, error)
	Task(ctx context.Context, id string) (store.Task, error)
	UpdateTask(ctx context.Context, id string, u store.TaskUpdate) (store.Task, error)
	Outbox(ctx context.Context, q store.OutboxQuery) ([]store.OutboxMessage, error)
	OutboxMessage(ctx context.Context, id string) (store.OutboxMessage, error)
	RetryOutbox(ctx context.Context, id string, at time.Time) error
	RuleErrors(ctx context.Context, scope string, limit int) ([]store.RuleError, error)
}

// author is the caller as the rules see it: an admin service (whose
// grants let it read every tenant's topics) is the vendor; an account
// identity is a customer of its subtree. Other services only read.
func (a *API) author(subj tacs.Subject) (rules.Author, bool) {
	if subj.IsService() {
		return rules.Author{Vendor: true, Path: "service:" + subj.Service}, tacs.Authorize(a.Grants, subj, tacs.Subscribe, topic.Everything).Allowed
	}
	return rules.Author{Path: subj.Path}, true
}

// rulesAuthed is authed for the rules routes: 503 if the platform runs
// without rules.
func (a *API) rulesAuthed(h handler) http.HandlerFunc {
	return a.authed(func(w http.ResponseWriter, r *http.Request, subj tacs.Subject, scope string) {
		if a.Rules == nil {
			writeError(w, http.StatusServiceUnavailable, "rules are not available on this platform")
			return
		}
		h(w, r, subj, scope)
	})
}

// RuleJSON is a rule as the API serves it.
type RuleJSON struct {
	ID        string    `json:"id"`
	Name      string    `json:"name"`
	Scope     string    `json:"scope"`
	Author    string    `json:"author"`
	Revision  int       `json:"revision"`
	Enabled   bool      `json:"enabled"`
	UpdatedAt time.Time `json:"updated_at"`
	Kind      string    `json:"kind,omitempty"`     // when, silent, integrity, overdue
	Mode      string    `json:"mode,omitempty"`     // alarm or each
	Severity  string    `json:"severity,omitempty"` // info, warning, critical
	Source    string    `json:"source,omitempty"`   // the rule file (GET of one rule)
}

func ruleJSON(sr store.Rule, withSource bool) RuleJSON {
	out := RuleJSON{ID: sr.ID, Name: sr.Name, Scope: sr.Scope, Author: sr.Author, Revision: sr.Revision, Enabled: sr.Enabled, UpdatedAt: sr.UpdatedAt}
	if r, err := rules.FromStore(sr); err == nil {
		out.Kind, out.Mode, out.Severity = r.Kind(), r.Mode, r.Severity
	}
	if withSource {
		out.Source = string(sr.Source)
	}
	return out
}

// visibleRule reports whether subj may see a rule: the vendor all, a
// customer those whose scope lies in its subtree.
func (a *API) visibleRule(subj tacs.Subject, scope string, sr store.Rule) bool {
	return scope == "" || (sr.Scope != store.VendorScope && store.InScope(scope, sr.Scope))
}

func (a *API) listRules(w http.ResponseWriter, r *http.Request, _ tacs.Subject, scope string) {
	list, err := a.Rules.ListRules(r.Context(), scope)
	if err != nil {
		a.serverError(w, r, err)
		return
	}
	out := make([]RuleJSON, 0, len(list))
	for _, sr := range list {
		out = append(out, ruleJSON(sr, false))
	}
	writeJSON(w, http.StatusOK, map[string]any{"rules": out})
}

func (a *API) addRule(w http.ResponseWriter, r *http.Request, subj tacs.Subject, _ string) {
	au, ok := a.author(subj)
	if !ok {
		writeError(w, http.StatusForbidden, "service role "+subj.Role+" may not write rules")
		return
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, rules.MaxFileSize+1))
	if err != nil || len(body) > rules.MaxFileSize {
		writeError(w, http.StatusRequestEntityTooLarge, "a rule file is at most 64 KiB")
		return
	}
	name := "rule.yaml"
	if strings.Contains(r.Header.Get("Content-Type"), "json") {
		name = "rule.json"
	}
	sr, err := rules.Add(r.Context(), a.Rules, au, name, body, a.now())
	var pe *rules.Error
	switch {
	case errors.As(err, &pe):
		writeJSON(w, http.StatusBadRequest, map[string]any{"error": err.Error(), "line": pe.Line, "column": pe.Col})
		return
	case errors.Is(err, rules.ErrForbidden):
		writeError(w, http.StatusForbidden, err.Error())
		return
	case err != nil && !errors.Is(err, context.Canceled) && strings.HasPrefix(err.Error(), "rule "):
		writeError(w, http.StatusBadRequest, err.Error())
		return
	case err != nil:
		a.serverError(w, r, err)
		return
	}
	writeJSON(w, http.StatusCreated, ruleJSON(sr, false))
}

// ruleFor finds a rule the caller may see (else 404, as for a rule that
// does not exist).
func (a *API) ruleFor(w http.ResponseWriter, r *http.Request, subj tacs.Subject, scope string) (store.Rule, bool) {
	sr, err := a.Rules.Rule(r.Context(), r.PathValue("id"))
	if errors.Is(err, store.ErrNotFound) || (err == nil && !a.visibleRule(subj, scope, sr)) {
		writeError(w, http.StatusNotFound, "no such rule")
		return sr, false
	}
	if err != nil {
		a.serverError(w, r, err)
		return sr, false
	}
	return sr, true
}

func (a *API) showRule(w http.ResponseWriter, r *http.Request, subj tacs.Subject, scope string) {
	if sr, ok := a.ruleFor(w, r, subj, scope); ok {
		writeJSON(w, http.StatusOK, ruleJSON(sr, true))
	}
}

func (a *API) enableRule(enabled bool) handler {
	return func(w http.ResponseWriter, r *http.Request, subj tacs.Subject, scope string) {
		sr, ok := a.ruleFor(w, r, subj, scope)
		if !ok {
			return
		}
		if au, ok := a.author(subj); !ok || !au.MayManage(sr.Scope) {
			writeError(w, http.StatusForbidden, "you may not change rules of scope "+sr.Scope)
			return
		}
		if err := a.Rules.SetRuleEnabled(r.Context(), sr.ID, enabled); err != nil {
			a.serverError(w, r, err)
			return
		}
		sr.Enabled = enabled
		writeJSON(w, http.StatusOK, ruleJSON(sr, false))
	}
}

// AlarmJSON is an alarm as the API serves it.
type AlarmJSON struct {
	ID        string     `json:"id"`
	Rule      string     `json:"rule"`
	RuleID    string     `json:"rule_id"`
	Device    string     `json:"device"`
	Severity  string     `json:"severity"`
	State     string     `json:"state"` // active, acknowledged, cleared
	Summary   string     `json:"summary"`
	Snapshot  string     `json:"snapshot,omitempty"` // hex hash of the snapshot that raised it
	RaisedAt  time.Time  `json:"raised_at"`
	AckedAt   *time.Time `json:"acknowledged_at,omitempty"`
	AckedBy   string     `json:"acknowledged_by,omitempty"`
	ClearedAt *time.Time `json:"cleared_at,omitempty"`
	ClearedBy string     `json:"cleared_by,omitempty"`
}

func optTime(t time.Time) *time.Time {
	if t.IsZero() {
		return nil
	}
	return &t
}

func alarmJSON(x store.Alarm) AlarmJSON {
	return AlarmJSON{ID: x.ID, Rule: x.RuleName, RuleID: x.RuleID, Device: x.Device, Severity: x.Severity, State: x.State, Summary: x.Summary,
		Snapshot: hex.EncodeToString(x.Snapshot), RaisedAt: x.RaisedAt, AckedAt: optTime(x.AckedAt), AckedBy: x.AckedBy,
		ClearedAt: optTime(x.ClearedAt), ClearedBy: x.ClearedBy}
}

var alarmStates = map[string]bool{"": true, "open": true, store.AlarmActive: true, store.AlarmAcknowledged: true, store.AlarmCleared: true}

func listLimit(w http.ResponseWriter, r *http.Request) (int, bool) {
	l := r.URL.Query().Get("limit")
	if l == "" {
		return store.DefaultLimit, true
	}
	n, err := strconv.Atoi(l)
	if err != nil || n < 1 || n > store.MaxLimit {
		writeError(w, http.StatusBadRequest, "limit: a number from 1 to "+strconv.Itoa(store.MaxLimit))
		return 0, false
	}
	return n, true
}

func (a *API) listAlarms(w http.ResponseWriter, r *http.Request, _ tacs.Subject, scope string) {
	q := r.URL.Query()
	aq := store.AlarmQuery{Scope: scope, State: q.Get("state"), RuleID: q.Get("rule"), Device: q.Get("device")}
	if !alarmStates[aq.State] {
		writeError(w, http.StatusBadRequest, "state: open, active, acknowledged or cleared")
		return
	}
	var ok bool
	if aq.Limit, ok = listLimit(w, r); !ok {
		return
	}
	list, err := a.Rules.Alarms(r.Context(), aq)
	if err != nil {
		a.serverError(w, r, err)
		return
	}
	out := make([]AlarmJSON, 0, len(list))
	for _, x := range list {
		out = append(out, alarmJSON(x))
	}
	writeJSON(w, http.StatusOK, map[string]any{"alarms": out})
}

func (a *API) alarmFor(w http.ResponseWriter, r *http.Request, scope string) (store.Alarm, bool) {
	x, err := a.Rules.Alarm(r.Context(), r.PathValue("id"))
	if errors.Is(err, store.ErrNotFound) || (err == nil && !store.InScope(scope, x.Gateway)) {
		writeError(w, http.StatusNotFound, "no such alarm")
		return x, false
	}
	if err != nil {
		a.serverError(w, r, err)
		return x, false
	}
	return x, true
}

func (a *API) showAlarm(w http.ResponseWriter, r *http.Request, _ tacs.Subject, scope string) {
	if x, ok := a.alarmFor(w, r, scope); ok {
		writeJSON(w, http.StatusOK, alarmJSON(x))
	}
}

// changeAlarm acknowledges or clears an alarm the caller may see.
func (a *API) changeAlarm(clear bool) handler {
	return func(w http.ResponseWriter, r *http.Request, subj tacs.Subject, scope string) {
		x, ok := a.alarmFor(w, r, scope)
		if !ok {
			return
		}
		by := subj.Path
		if subj.IsService() {
			by = "service:" + subj.Service
		}
		change := a.Rules.AckAlarm
		if clear {
			change = a.Rules.ClearAlarm
		}
		x, err := change(r.Context(), x.ID, by, a.now())
		if errors.Is(err, store.ErrConflict) {
			writeError(w, http.StatusConflict, err.Error())
			return
		}
		if err != nil {
			a.serverError(w, r, err)
			return
		}
		writeJSON(w, http.StatusOK, alarmJSON(x))
	}
}

// TaskJSON is a task as the API serves it.
type TaskJSON struct {
	ID        string        `json:"id"`
	Title     string        `json:"title"`
	Device    string        `json:"device"`
	Assignee  string        `json:"assignee,omitempty"`
	Due       *time.Time    `json:"due,omitempty"`
	State     string        `json:"state"` // open, in_progress, done
	RuleID    string        `json:"rule_id,omitempty"`
	AlarmID   string        `json:"alarm_id,omitempty"`
	CreatedAt time.Time     `json:"created_at"`
	UpdatedAt time.Time     `json:"updated_at"`
	Comments  []CommentJSON `json:"comments,omitempty"`
}

// CommentJSON is a comment on a task.
type CommentJSON struct {
	Author string    `json:"author"`
	Text   string    `json:"text"`
	At     time.Time `json:"at"`
}

func taskJSON(t store.Task) TaskJSON {
	out := TaskJSON{ID: t.ID, Title: t.Title, Device: t.Device, Assignee: t.Assignee, Due: optTime(t.Due), State: t.State,
		RuleID: t.RuleID, AlarmID: t.AlarmID, CreatedAt: t.CreatedAt, UpdatedAt: t.UpdatedAt}
	for _, c := range t.Comments {
		out.Comments = append(out.Comments, CommentJSON(c))
	}
	return out
}

var taskStates = map[string]bool{store.TaskOpen: true, store.TaskInProgress: true, store.TaskDone: true}

func (a *API) listTasks(w http.ResponseWriter, r *http.Request, _ tacs.Subject, scope string) {
	q := r.URL.Query()
	tq := store.TaskQuery{Scope: scope, State: q.Get("state"), Assignee: q.Get("assignee")}
	if tq.State != "" && !taskStates[tq.State] {
		writeError(w, http.StatusBadRequest, "state: open, in_progress or done")
		return
	}
	var ok bool
	if tq.Limit, ok = listLimit(w, r); !ok {
		return
	}
	list, err := a.Rules.Tasks(r.Context(), tq)
	if err != nil {
		a.serverError(w, r, err)
		return
	}
	out := make([]TaskJSON, 0, len(list))
	for _, t := range list {
		out = append(out, taskJSON(t))
	}
	writeJSON(w, http.StatusOK, map[string]any{"tasks": out})
}

func (a *API) taskFor(w http.ResponseWriter, r *http.Request, scope string) (store.Task, bool) {
	t, err := a.Rules.Task(r.Context(), r.PathValue("id"))
	if errors.Is(err, store.ErrNotFound) || (err == nil && !store.InScope(scope, t.Gateway)) {
		writeError(w, http.StatusNotFound, "no such task")
		return t, false
	}
	if err != nil {
		a.serverError(w, r, err)
		return t, false
	}
	return t, true
}

func (a *API) showTask(w http.ResponseWriter, r *http.Request, _ tacs.Subject, scope string) {
	if t, ok := a.taskFor(w, r, scope); ok {
		writeJSON(w, http.StatusOK, taskJSON(t))
	}
}

// updateTask changes a task's state or assignee, or adds a comment:
// {"state": "in_progress", "assignee": "tech-2", "comment": "on my way"}.
func (a *API) updateTask(w http.ResponseWriter, r *http.Request, subj tacs.Subject, scope string) {
	t, ok := a.taskFor(w, r, scope)
	if !ok {
		return
	}
	var in struct {
		State    string `json:"state"`
		Assignee string `json:"assignee"`
		Comment  string `json:"comment"`
	}
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, 64<<10))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&in); err != nil {
		writeError(w, http.StatusBadRequest, "body: a JSON object with state, assignee and/or comment: "+err.Error())
		return
	}
	if in.State != "" && !taskStates[in.State] {
		writeError(w, http.StatusBadRequest, "state: open, in_progress or done")
		return
	}
	if len(in.Assignee) > 200 || len(in.Comment) > 4000 {
		writeError(w, http.StatusBadRequest, "assignee: at most 200 bytes; comment: at most 4000")
		return
	}
	now := a.now()
	u := store.TaskUpdate{State: in.State, Assignee: in.Assignee, At: now}
	if in.Comment != "" {
		by := subj.Path
		if subj.IsService() {
			by = "service:" + subj.Service
		}
		u.Comment = &store.TaskComment{Author: by, Text: in.Comment, At: now}
	}
	t, err := a.Rules.UpdateTask(r.Context(), t.ID, u)
	if err != nil {
		a.serverError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, taskJSON(t))
}

// OutboxJSON is an outbox message as the API serves it (without its
// payload, which holds addresses and values).
type OutboxJSON struct {
	ID        string     `json:"id"`
	Kind      string     `json:"kind"`
	RuleID    string     `json:"rule_id"`
	Gateway   string     `json:"gateway"`
	State     string     `json:"state"` // pending, sent, dead, suppressed
	Attempts  int        `json:"attempts"`
	NextAt    time.Time  `json:"next_at"`
	LastError string     `json:"last_error,omitempty"`
	CreatedAt time.Time  `json:"created_at"`
	SentAt    *time.Time `json:"sent_at,omitempty"`
}

var outboxStates = map[string]bool{"": true, store.OutboxPending: true, store.OutboxSent: true, store.OutboxDead: true, store.OutboxSuppressed: true}

func (a *API) listOutbox(w http.ResponseWriter, r *http.Request, _ tacs.Subject, scope string) {
	q := store.OutboxQuery{Scope: scope, State: r.URL.Query().Get("state")}
	if !outboxStates[q.State] {
		writeError(w, http.StatusBadRequest, "state: pending, sent, dead or suppressed")
		return
	}
	var ok bool
	if q.Limit, ok = listLimit(w, r); !ok {
		return
	}
	list, err := a.Rules.Outbox(r.Context(), q)
	if err != nil {
		a.serverError(w, r, err)
		return
	}
	out := make([]OutboxJSON, 0, len(list))
	for _, m := range list {
		out = append(out, OutboxJSON{ID: m.ID, Kind: m.Kind, RuleID: m.RuleID, Gateway: m.Gateway, State: m.State, Attempts: m.Attempts,
			NextAt: m.NextAt, LastError: m.LastError, CreatedAt: m.CreatedAt, SentAt: optTime(m.SentAt)})
	}
	writeJSON(w, http.StatusOK, map[string]any{"messages": out})
}

func (a *API) retryOutbox(w http.ResponseWriter, r *http.Request, subj tacs.Subject, scope string) {
	m, err := a.Rules.OutboxMessage(r.Context(), r.PathValue("id"))
	if errors.Is(err, store.ErrNotFound) || (err == nil && !store.InScope(scope, m.Gateway)) {
		writeError(w, http.StatusNotFound, "no such message")
		return
	}
	if err != nil {
		a.serverError(w, r, err)
		return
	}
	if au, ok := a.author(subj); !ok || !au.MayManage(m.Gateway) {
		writeError(w, http.StatusForbidden, "you may not retry messages of "+m.Gateway)
		return
	}
	if err := a.Rules.RetryOutbox(r.Context(), m.ID, a.now()); errors.Is(err, store.ErrConflict) {
		writeError(w, http.StatusConflict, err.Error())
		return
	} else if err != nil {
		a.serverError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]string{"id": m.ID, "state": store.OutboxPending})
}

func (a *API) listRuleErrors(w http.ResponseWriter, r *http.Request, _ tacs.Subject, scope string) {
	limit, ok := listLimit(w, r)
	if !ok {
		return
	}
	list, err := a.Rules.RuleErrors(r.Context(), scope, limit)
	if err != nil {
		a.serverError(w, r, err)
		return
	}
	type errJSON struct {
		RuleID   string    `json:"rule_id"`
		Device   string    `json:"device"`
		Message  string    `json:"message"`
		Snapshot string    `json:"snapshot,omitempty"`
		Count    int       `json:"count"`
		First    time.Time `json:"first_at"`
		Last     time.Time `json:"last_at"`
	}
	out := make([]errJSON, 0, len(list))
	for _, e := range list {
		out = append(out, errJSON{e.RuleID, e.Device, e.Message, hex.EncodeToString(e.Snapshot), max(e.Count, 1), e.At, e.LastAt})
	}
	writeJSON(w, http.StatusOK, map[string]any{"errors": out})
}

func (a *API) now() time.Time {
	if a.Now != nil {
		return a.Now()
	}
	return time.Now()
}
