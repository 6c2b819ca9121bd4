package agent

import (
	"encoding/json"
	"errors"
	"net/http"
	"strings"

	"github.com/fieldtrust/fieldtrust/internal/store"
	"github.com/fieldtrust/fieldtrust/internal/tacs"
	"github.com/fieldtrust/fieldtrust/internal/topic"
)

// Register mounts the agents' API (agent management and MindConnect
// exchange) on mux. These routes authenticate with OAuth, not client
// certificates; the platform serves them on its HTTPS listener.
func (s *Service) Register(mux *http.ServeMux) {
	mux.HandleFunc("POST "+RegisterPath, s.register)
	mux.HandleFunc("PUT "+RegisterPath+"/{client_id}", s.rotate)
	mux.HandleFunc("POST "+TokenPath, s.token)
	mux.HandleFunc("GET "+TokenKeyPath, s.tokenKey)
	mux.HandleFunc("GET "+TokenKeysPath, s.tokenKey)
	mux.HandleFunc("GET "+ManagementPrefix+"/agents/{id}/dataSourceConfiguration", s.configuration)
	mux.HandleFunc("PUT "+ManagementPrefix+"/agents/{id}/dataSourceConfiguration", s.configuration)
	mux.HandleFunc("POST "+ExchangePath, s.exchange)
	mux.HandleFunc("GET "+MappingsPath, s.mappings)
	mux.HandleFunc("POST "+MappingsPath, s.mappings)
	mux.HandleFunc("DELETE "+MappingsPath+"/{id}", s.mappings)
	// Anything else under the two prefixes is a JSON 404, not the
	// platform's fallback.
	notFound := func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusNotFound, map[string]string{"error": "not_found", "error_description": "fieldtrust does not serve " + clip(r.URL.Path) + " (docs/agents.md lists what it serves)"})
	}
	mux.HandleFunc(ManagementPrefix+"/", notFound)
	mux.HandleFunc(MindConnectPrefix+"/", notFound)
}

// Admin serves the operators' agent API under /api/v1/agents for callers
// with a verified client certificate: an admin service, a master account
// or an account, each for agents in its own subtree (whoever may publish
// a path's snapshots may create an agent there; a device may not).
type Admin struct {
	Service  *Service
	Identify func(r *http.Request) (tacs.Subject, bool)
	Grants   tacs.Grants
}

// mayManage reports whether subj may manage the agent at path.
func (h *Admin) mayManage(subj tacs.Subject, path string) bool {
	if !subj.IsService() && strings.Count(subj.Path, "/") >= 2 {
		return false // a device identity manages no agents
	}
	return tacs.Authorize(h.Grants, subj, tacs.Publish, topic.SnapshotsOf(path)).Allowed
}

// scope is what subj may list: everything for a service that may read all
// snapshots, its own subtree for an account.
func (h *Admin) scope(subj tacs.Subject) (string, bool) {
	if subj.IsService() {
		return "", tacs.Authorize(h.Grants, subj, tacs.Subscribe, topic.AllSnapshots).Allowed
	}
	return subj.Path, strings.Count(subj.Path, "/") < 2
}

func adminError(w http.ResponseWriter, status int, msg string) {
	writeJSON(w, status, map[string]string{"error": msg})
}

// AdminPath is the operators' agent API.
const AdminPath = "/api/v1/agents"

// ServeHTTP routes /api/v1/agents requests (the platform mounts the
// routes; docs/openapi.yaml documents them).
func (h *Admin) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	subj, ok := h.Identify(r)
	if !ok {
		adminError(w, http.StatusUnauthorized, "a client certificate of this platform is required")
		return
	}
	ctx := r.Context()
	path := strings.Join([]string{r.PathValue("master"), r.PathValue("account"), r.PathValue("agent")}, "/")
	if r.PathValue("master") == "" {
		path = ""
	}
	switch {
	case r.Method == http.MethodGet && path == "":
		scope, ok := h.scope(subj)
		if !ok {
			adminError(w, http.StatusForbidden, "this identity may not list agents")
			return
		}
		list, err := h.Service.List(ctx, scope)
		h.answer(w, r, http.StatusOK, list, err)
		return
	case r.Method == http.MethodPost && path == "":
		var req struct {
			Path    string `json:"path"`
			Profile string `json:"profile"`
		}
		if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, 4096)).Decode(&req); err != nil {
			adminError(w, http.StatusBadRequest, `the body must be JSON {"path": "master/account/agent", "profile": "SHARED_SECRET" or "RSA_3072"}`)
			return
		}
		if err := CheckPath(req.Path); err != nil {
			adminError(w, http.StatusBadRequest, err.Error())
			return
		}
		if !h.mayManage(subj, req.Path) {
			adminError(w, http.StatusForbidden, "this identity may not create agents at "+req.Path)
			return
		}
		b, _, err := h.Service.Create(ctx, req.Path, req.Profile)
		h.answer(w, r, http.StatusCreated, b, err)
		return
	}
	if err := CheckPath(path); err != nil {
		adminError(w, http.StatusBadRequest, err.Error())
		return
	}
	if !h.mayManage(subj, path) {
		adminError(w, http.StatusNotFound, "no such agent") // a foreign agent is a 404, as a foreign device is
		return
	}
	var v any
	var err error
	action := ""
	if parts := strings.Split(strings.TrimPrefix(r.URL.Path, AdminPath+"/"), "/"); len(parts) == 4 && r.Method == http.MethodPost {
		action = parts[3]
	}
	switch action {
	case "":
		v, err = h.Service.Show(ctx, path)
	case "revoke":
		v, err = h.Service.Revoke(ctx, path)
	case "rotate-iat":
		v, _, err = h.Service.RotateIAT(ctx, path)
	default:
		adminError(w, http.StatusNotFound, "unknown action; use revoke or rotate-iat")
		return
	}
	h.answer(w, r, http.StatusOK, v, err)
}

func (h *Admin) answer(w http.ResponseWriter, r *http.Request, status int, v any, err error) {
	switch {
	case err == nil:
		writeJSON(w, status, v)
	case errors.Is(err, store.ErrNotFound):
		adminError(w, http.StatusNotFound, "no such agent")
	case errors.Is(err, store.ErrExists):
		adminError(w, http.StatusConflict, err.Error())
	case errors.Is(err, ErrInvalid), errors.Is(err, errRevoked):
		adminError(w, http.StatusBadRequest, err.Error())
	default:
		h.Service.log.Error("agent admin request failed", "path", r.URL.Path, "err", err)
		adminError(w, http.StatusInternalServerError, "internal error")
	}
}
