// Package fwhttp serves the firmware repository over the platform's HTTPS
// listener (behind est.GuardOperational: only valid transport
// certificates): TUF metadata under /firmware/v1/metadata/ and artifacts
// under /firmware/v1/download/{sha256} through signed URLs bound to the
// requesting gateway, with range requests so that a broken WAN link
// resumes where it broke. Every download is recorded.
package fwhttp

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/fieldtrust/fieldtrust/internal/est"
	"github.com/fieldtrust/fieldtrust/internal/firmware/signedurl"
	"github.com/fieldtrust/fieldtrust/internal/firmware/tufclient"
	"github.com/fieldtrust/fieldtrust/internal/firmware/tufrepo"
	"github.com/fieldtrust/fieldtrust/internal/store"
)

// Recorder records a download (devicemsg.Service).
type Recorder interface {
	Downloaded(ctx context.Context, m store.DeviceMessage) error
}

// Handler serves metadata and downloads.
type Handler struct {
	Repo     *tufrepo.Repo
	URLs     *signedurl.Signer
	Recorder Recorder
	NewID    func() string
	Now      func() time.Time
	Log      *slog.Logger
}

// Register adds the routes to mux (the caller wraps them in the guard).
func (h *Handler) Register(mux *http.ServeMux, wrap func(http.Handler) http.Handler) {
	mux.Handle("GET "+tufclient.MetadataPath+"{name}", wrap(http.HandlerFunc(h.metadata)))
	mux.Handle("GET "+signedurl.PathPrefix+"{sha}", wrap(http.HandlerFunc(h.download)))
}

func (h *Handler) metadata(w http.ResponseWriter, r *http.Request) {
	if _, ok := est.IdentityFromContext(r.Context()); !ok {
		http.Error(w, "client certificate required: TUF metadata is served to gateways and services", http.StatusUnauthorized)
		return
	}
	b, err := h.Repo.Metadata(r.PathValue("name"))
	if errors.Is(err, tufrepo.ErrNotFound) {
		http.Error(w, err.Error(), http.StatusNotFound)
		return
	}
	if err != nil {
		h.Log.Error("firmware metadata", "name", r.PathValue("name"), "err", err)
		http.Error(w, "firmware metadata unavailable", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.Write(b)
}

func (h *Handler) download(w http.ResponseWriter, r *http.Request) {
	id, ok := est.IdentityFromContext(r.Context())
	if !ok {
		h.refuse(w, r, "", http.StatusUnauthorized, errors.New("client certificate required: a download URL is valid only for the gateway it names"))
		return
	}
	requester := id.String()
	p, err := signedurl.Parse(r.PathValue("sha"), r.URL.RawQuery)
	if err != nil {
		h.refuse(w, r, requester, http.StatusBadRequest, err)
		return
	}
	now := time.Now()
	if h.Now != nil {
		now = h.Now()
	}
	if err := h.URLs.Verify(p, requester, now); err != nil {
		h.refuse(w, r, requester, http.StatusForbidden, err)
		return
	}
	file, err := h.Repo.ArtifactFile(p.SHA256)
	if err != nil {
		h.refuse(w, r, requester, http.StatusNotFound, err)
		return
	}
	f, err := os.Open(file)
	if err != nil {
		h.Log.Error("firmware artifact", "sha256", p.SHA256, "err", err)
		http.Error(w, "artifact unavailable", http.StatusInternalServerError)
		return
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		http.Error(w, "artifact unavailable", http.StatusInternalServerError)
		return
	}
	rng := r.Header.Get("Range")
	if len(rng) > 128 {
		rng = rng[:128]
	}
	if h.Recorder != nil {
		body, _ := json.Marshal(map[string]any{"sha256": p.SHA256, "range": rng, "size": fi.Size(), "remote": r.RemoteAddr, "url_expires": p.Expires.UTC()})
		name := "bytes=0-"
		if rng != "" {
			name = strings.TrimPrefix(rng, "bytes=")
			name = "bytes=" + name
		}
		if err := h.Recorder.Downloaded(r.Context(), store.DeviceMessage{ID: h.NewID(), Kind: "download", Gateway: p.Gateway, Ref: p.SHA256, Sender: requester, Name: name, At: now, Body: body}); err != nil {
			// Fail closed: a download the customer could not see in the
			// audit is not served.
			h.Log.Error("download not recorded; refused", "gateway", p.Gateway, "err", err)
			http.Error(w, "the download cannot be recorded right now; retry later", http.StatusServiceUnavailable)
			return
		}
	}
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Header().Set("Cache-Control", "private, no-store")
	http.ServeContent(w, r, p.SHA256, fi.ModTime(), f)
}

func (h *Handler) refuse(w http.ResponseWriter, r *http.Request, requester string, status int, err error) {
	h.Log.Warn("firmware download refused", "remote", r.RemoteAddr, "requester", requester, "status", status, "reason", err)
	http.Error(w, fmt.Sprintf("download refused: %v", err), status)
}
