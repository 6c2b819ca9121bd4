// Package campaignapi serves the operators' API of firmware campaigns,
// the HTTPS twin of 'fieldtrust firmware campaign ...':
//
//	GET  /api/v1/firmware/campaigns[?state=S]        the campaigns
//	POST /api/v1/firmware/campaigns                  create one
//	GET  /api/v1/firmware/campaigns/{id}             per-device states
//	POST /api/v1/firmware/campaigns/{id}/{action}    pause, resume, abort
//
// Managing a campaign is ordering notices on its gateways' firmware
// topics, so TACS decides with the caller's role grants, as on MQTT: a
// service may see and steer a campaign only if its role may publish on the
// firmware topic of every gateway in it (admin and device-manager may, by
// default). Account identities are refused: campaigns are the vendor's.
// Package rollout decides everything else; the platform's device
// messaging service sends the notices.
package campaignapi

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"time"

	"github.com/fieldtrust/fieldtrust/internal/firmware/rollout"
	"github.com/fieldtrust/fieldtrust/internal/firmware/tufrepo"
	"github.com/fieldtrust/fieldtrust/internal/store"
	"github.com/fieldtrust/fieldtrust/internal/tacs"
	"github.com/fieldtrust/fieldtrust/internal/topic"
)

// Path is the collection's route.
const Path = "/api/v1/firmware/campaigns"

// maxBody bounds a create request.
const maxBody = 16 << 10

// Store is what the API reads and writes.
type Store interface {
	rollout.Store
	Campaigns(ctx context.Context, states ...string) ([]store.Campaign, error)
}

// Handler serves the routes.
type Handler struct {
	Store    Store
	Repo     *tufrepo.Repo
	Identify func(r *http.Request) (tacs.Subject, bool) // the verified caller
	Grants   tacs.Grants
	Wake     func() // tells the device messaging service to look now (may be nil)
	Log      *slog.Logger
}

// Register adds the routes to mux (the caller wraps them in the guard).
func (h *Handler) Register(mux *http.ServeMux, wrap func(http.Handler) http.Handler) {
	// Literal patterns: internal/web's OpenAPI test reads them here.
	mux.Handle("GET /api/v1/firmware/campaigns", wrap(http.HandlerFunc(h.list)))
	mux.Handle("POST /api/v1/firmware/campaigns", wrap(http.HandlerFunc(h.create)))
	mux.Handle("GET /api/v1/firmware/campaigns/{id}", wrap(http.HandlerFunc(h.status)))
	mux.Handle("POST /api/v1/firmware/campaigns/{id}/{action}", wrap(http.HandlerFunc(h.move)))
}

// Summary is a campaign in the list.
type Summary struct {
	ID            string    `json:"id"`
	State         string    `json:"state"`
	Reason        string    `json:"reason,omitempty"`
	DeviceType    string    `json:"device_type"`
	Version       string    `json:"version"`
	Target        string    `json:"target"`
	Scope         []string  `json:"scope"`
	CanaryPercent int       `json:"canary_percent"`
	MaxFailures   int       `json:"max_failures"`
	Stage         int       `json:"stage"`
	Created       time.Time `json:"created"`
	Updated       time.Time `json:"updated"`
}

// CreateRequest is the body of a create.
type CreateRequest struct {
	Version       string   `json:"version"`
	DeviceType    string   `json:"device_type"`
	Scope         []string `json:"scope"`
	CanaryPercent int      `json:"canary_percent"`
	MaxFailures   int      `json:"max_failures"`
}

// caller is the verified service, or an answer has been written.
func (h *Handler) caller(w http.ResponseWriter, r *http.Request) (tacs.Subject, bool) {
	subj, ok := h.Identify(r)
	if !ok {
		http.Error(w, "client certificate required", http.StatusUnauthorized)
		return subj, false
	}
	if !subj.IsService() {
		http.Error(w, "forbidden: firmware campaigns need a service certificate whose role may publish on the gateways' firmware topics (admin)", http.StatusForbidden)
		return subj, false
	}
	return subj, true
}

// MayOrder is the one rule of who sees and steers a campaign: subj is a
// service (account identities are refused: campaigns are the vendor's)
// whose role may publish on every gateway's firmware topic. It names the
// first gateway it may not (none for an account identity). The API and
// the console's campaign pages both ask it.
func MayOrder(g tacs.Grants, subj tacs.Subject, gateways []string) (string, bool) {
	if !subj.IsService() {
		return "", false
	}
	for _, gw := range gateways {
		if !tacs.Authorize(g, subj, tacs.Publish, topic.FirmwareOf(gw)).Allowed {
			return gw, false
		}
	}
	return "", true
}

func (h *Handler) mayOrder(subj tacs.Subject, gateways []string) (string, bool) {
	return MayOrder(h.Grants, subj, gateways)
}

// campaign loads a campaign the caller may steer; a campaign it may not is
// not found, as a foreign scope is elsewhere.
func (h *Handler) campaign(w http.ResponseWriter, r *http.Request, subj tacs.Subject) (store.Campaign, bool) {
	id := r.PathValue("id")
	c, err := h.Store.Campaign(r.Context(), id)
	if err == nil {
		var devs []store.CampaignDevice
		if devs, err = h.Store.CampaignDevices(r.Context(), id); err == nil {
			if _, ok := h.mayOrder(subj, paths(devs)); !ok {
				err = store.ErrNotFound
			}
		}
	}
	if errors.Is(err, store.ErrNotFound) {
		http.Error(w, fmt.Sprintf("campaign %q not found", id), http.StatusNotFound)
		return c, false
	}
	if err != nil {
		h.Log.Error("campaign", "id", id, "err", err)
		http.Error(w, "campaigns unavailable", http.StatusInternalServerError)
		return c, false
	}
	return c, true
}

func (h *Handler) list(w http.ResponseWriter, r *http.Request) {
	subj, ok := h.caller(w, r)
	if !ok {
		return
	}
	var states []string
	if s := r.URL.Query().Get("state"); s != "" {
		states = append(states, s)
	}
	cs, err := h.Store.Campaigns(r.Context(), states...)
	if err != nil {
		h.Log.Error("campaigns", "err", err)
		http.Error(w, "campaigns unavailable", http.StatusInternalServerError)
		return
	}
	out := struct {
		Campaigns []Summary `json:"campaigns"`
	}{Campaigns: []Summary{}}
	for _, c := range cs {
		devs, err := h.Store.CampaignDevices(r.Context(), c.ID)
		if err != nil {
			h.Log.Error("campaign devices", "id", c.ID, "err", err)
			http.Error(w, "campaigns unavailable", http.StatusInternalServerError)
			return
		}
		if _, ok := h.mayOrder(subj, paths(devs)); ok {
			out.Campaigns = append(out.Campaigns, summary(c))
		}
	}
	writeJSON(w, http.StatusOK, out)
}

func (h *Handler) create(w http.ResponseWriter, r *http.Request) {
	subj, ok := h.caller(w, r)
	if !ok {
		return
	}
	var req CreateRequest
	dec := json.NewDecoder(io.LimitReader(r.Body, maxBody))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		http.Error(w, `body: want {"version":...,"device_type":...,"scope":[...],"canary_percent":N,"max_failures":N}: `+err.Error(), http.StatusBadRequest)
		return
	}
	if req.Version == "" || req.DeviceType == "" {
		http.Error(w, "version and device_type are required", http.StatusBadRequest)
		return
	}
	c, err := Create(r.Context(), h.Store, h.Repo, h.Grants, subj, rollout.Spec{Version: req.Version, DeviceType: req.DeviceType, Scope: req.Scope, CanaryPercent: req.CanaryPercent, MaxFailures: req.MaxFailures})
	if err != nil {
		status := http.StatusInternalServerError
		switch {
		case errors.Is(err, ErrForbidden):
			status = http.StatusForbidden
		case errors.Is(err, rollout.ErrSpec), errors.Is(err, tufrepo.ErrNotFound):
			status = http.StatusBadRequest
		}
		if status == http.StatusInternalServerError {
			h.Log.Error("campaign not created", "by", subj.String(), "err", err)
			http.Error(w, "campaign not created", status)
			return
		}
		h.Log.Info("campaign refused", "by", subj.String(), "err", err)
		http.Error(w, err.Error(), status)
		return
	}
	h.Log.Info("campaign created", "id", c.ID, "by", subj.String(), "device_type", c.DeviceType, "version", c.Version)
	h.wake()
	h.report(w, r, c.ID, http.StatusCreated)
}

func (h *Handler) status(w http.ResponseWriter, r *http.Request) {
	subj, ok := h.caller(w, r)
	if !ok {
		return
	}
	if c, ok := h.campaign(w, r, subj); ok {
		h.report(w, r, c.ID, http.StatusOK)
	}
}

func (h *Handler) move(w http.ResponseWriter, r *http.Request) {
	subj, ok := h.caller(w, r)
	if !ok {
		return
	}
	if _, known := moves[r.PathValue("action")]; !known {
		http.Error(w, "use POST "+Path+"/{id}/pause, .../resume or .../abort", http.StatusNotFound)
		return
	}
	c, ok := h.campaign(w, r, subj)
	if !ok {
		return
	}
	if _, err := Move(r.Context(), h.Store, h.Grants, subj, c.ID, r.PathValue("action")); err != nil {
		if errors.Is(err, rollout.ErrState) {
			http.Error(w, err.Error(), http.StatusConflict)
			return
		}
		h.Log.Error("campaign move", "id", c.ID, "action", r.PathValue("action"), "err", err)
		http.Error(w, "campaign unchanged", http.StatusInternalServerError)
		return
	}
	h.Log.Info("campaign "+r.PathValue("action"), "id", c.ID, "by", subj.String())
	h.wake()
	h.report(w, r, c.ID, http.StatusOK)
}

func (h *Handler) report(w http.ResponseWriter, r *http.Request, id string, status int) {
	rep, err := rollout.Status(r.Context(), h.Store, id)
	if err != nil {
		h.Log.Error("campaign status", "id", id, "err", err)
		http.Error(w, "campaign status unavailable", http.StatusInternalServerError)
		return
	}
	writeJSON(w, status, rep)
}

func (h *Handler) wake() {
	if h.Wake != nil {
		h.Wake()
	}
}

// ErrForbidden: the caller may not order a gateway of the campaign.
var ErrForbidden = errors.New("forbidden")

// Create is rollout.Create for subj: a campaign naming a gateway subj may
// not order (MayOrder) is refused with ErrForbidden before anything is
// stored. The API and the console both create through it.
func Create(ctx context.Context, st Store, repo *tufrepo.Repo, g tacs.Grants, subj tacs.Subject, spec rollout.Spec) (store.Campaign, error) {
	gs := &guarded{Store: st, check: func(gws []string) error {
		if gw, ok := MayOrder(g, subj, gws); !ok {
			if !subj.IsService() {
				return fmt.Errorf("%w: campaigns are ordered by the vendor's services and operators", ErrForbidden)
			}
			return fmt.Errorf("%w: service role %s may not publish on %s", ErrForbidden, subj.Role, topic.FirmwareOf(gw))
		}
		return nil
	}}
	c, _, err := rollout.Create(ctx, gs, repo, spec)
	return c, err
}

// moves are the steps Move takes, by name.
var moves = map[string]func(context.Context, rollout.Store, string) (store.Campaign, error){
	"pause": rollout.Pause, "resume": rollout.Resume, "abort": rollout.Abort,
}

// Move pauses, resumes or aborts campaign id for subj. A campaign subj
// may not steer is store.ErrNotFound, as an unknown one; a move its state
// does not allow is rollout.ErrState.
func Move(ctx context.Context, st Store, g tacs.Grants, subj tacs.Subject, id, action string) (store.Campaign, error) {
	mv, known := moves[action]
	if !known {
		return store.Campaign{}, fmt.Errorf("%w: action %q: pause, resume or abort", rollout.ErrSpec, action)
	}
	devs, err := st.CampaignDevices(ctx, id)
	if err != nil {
		return store.Campaign{}, err
	}
	if _, err := st.Campaign(ctx, id); err != nil {
		return store.Campaign{}, err
	}
	if _, ok := MayOrder(g, subj, paths(devs)); !ok {
		return store.Campaign{}, fmt.Errorf("campaign %q: %w", id, store.ErrNotFound)
	}
	return mv(ctx, st, id)
}

// guarded refuses to store a campaign whose gateways the caller may not
// order: rollout.Create resolves the scope to gateways, the check sees
// them before anything is stored.
type guarded struct {
	Store
	check func(gateways []string) error
}

func (g *guarded) CreateCampaign(ctx context.Context, c store.Campaign, devs []store.CampaignDevice) error {
	if err := g.check(paths(devs)); err != nil {
		return err
	}
	return g.Store.CreateCampaign(ctx, c, devs)
}

func paths(devs []store.CampaignDevice) []string {
	out := make([]string, len(devs))
	for i, d := range devs {
		out[i] = d.Path
	}
	return out
}

func summary(c store.Campaign) Summary {
	return Summary{ID: c.ID, State: c.State, Reason: c.Reason, DeviceType: c.DeviceType, Version: c.Version, Target: c.Target,
		Scope: c.Scope, CanaryPercent: c.CanaryPercent, MaxFailures: c.MaxFailures, Stage: c.Stage, Created: c.Created, Updated: c.Updated}
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(v)
}
