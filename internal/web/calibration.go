package web

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"slices"
	"time"

	"github.com/fieldtrust/fieldtrust/internal/dcc"
	"github.com/fieldtrust/fieldtrust/internal/dcc/calibration"
	"github.com/fieldtrust/fieldtrust/internal/store/registrystore"
	"github.com/fieldtrust/fieldtrust/internal/tacs"
	"github.com/fieldtrust/fieldtrust/internal/topic"
)

// Calibration is the DCC fleet link (*calibration.Link): which instrument
// a device is, and whether its measurements were taken under a valid
// calibration (docs/dcc.md "The fleet link").
type Calibration interface {
	FlagsOf(ctx context.Context, devices []registrystore.Device) (map[registrystore.Device]func(time.Time) *calibration.Flag, error)
	Report(ctx context.Context, gateway, device string) (*calibration.Report, error)
	Bind(ctx context.Context, gateway, device string, e dcc.EquipmentID, since time.Time, by string) error
}

// flaggerOf returns the calibration flag of a device's measurement at t
// for the devices of a response's items, reading their bindings at once and each
// bound instrument's history once per request; a nil flag when the API
// has no fleet link or the device no instrument.
func flaggerOf[T any](a *API, ctx context.Context, items []T, device func(T) (gateway, device string)) (func(gateway, device string, t time.Time) *calibration.Flag, error) {
	if a.Calibration == nil {
		return func(string, string, time.Time) *calibration.Flag { return nil }, nil
	}
	devices := make([]registrystore.Device, len(items))
	for i, it := range items {
		devices[i].Gateway, devices[i].Device = device(it)
	}
	byDevice, err := a.Calibration.FlagsOf(ctx, slices.Compact(devices))
	if err != nil {
		return nil, err
	}
	return func(gateway, device string, t time.Time) *calibration.Flag {
		if f := byDevice[registrystore.Device{Gateway: gateway, Device: device}]; f != nil {
			return f(t)
		}
		return nil
	}, nil
}

// calibration serves GET /api/v1/devices/{path}/calibration: the device's
// bindings, its calibration now, and the bound instrument's DCC history
// with the registry's proofs. Scoped as the device's snapshots are
// (deviceRoute checked).
func (a *API) calibration(w http.ResponseWriter, r *http.Request, gateway, device string) {
	if a.Calibration == nil {
		writeError(w, http.StatusServiceUnavailable, "this platform has no DCC registry")
		return
	}
	rep, err := a.Calibration.Report(r.Context(), gateway, device)
	if errors.Is(err, calibration.ErrUnavailable) {
		w.Header().Set("Retry-After", "1")
		writeError(w, http.StatusServiceUnavailable, err.Error())
		return
	}
	if err != nil {
		a.serverError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, rep)
}

// bindingRequest is the body of PUT /api/v1/devices/{path}/equipment.
type bindingRequest struct {
	Issuer string    `json:"issuer"`
	Value  string    `json:"value"`
	Since  time.Time `json:"since"` // zero: now
}

// maxBindingBody bounds the PUT body (an identification of at most
// dcc.MaxText bytes, JSON-escaped, and a time).
const maxBindingBody = 8 << 10

// bindEquipment serves PUT /api/v1/devices/{path}/equipment: who may
// publish the device's snapshots (the gateway itself, its account or
// master account, an admin) declares which instrument it is.
func (a *API) bindEquipment(w http.ResponseWriter, r *http.Request, subj tacs.Subject, gateway, device string) {
	if a.Calibration == nil {
		writeError(w, http.StatusServiceUnavailable, "this platform has no DCC registry")
		return
	}
	if !tacs.Authorize(a.Grants, subj, tacs.Publish, topic.SnapshotsOf(gateway)).Allowed {
		writeError(w, http.StatusForbidden, "only who may publish this device's snapshots (its gateway, account or an admin) may declare its instrument")
		return
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxBindingBody))
	if err != nil {
		writeError(w, http.StatusRequestEntityTooLarge, "body larger than 8 KiB or unreadable")
		return
	}
	var req bindingRequest
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil || dec.More() {
		writeError(w, http.StatusBadRequest, `body: {"issuer":"manufacturer","value":"SN-1","since":"2026-01-01T00:00:00Z"} (since optional; an empty value ends the binding)`)
		return
	}
	by := subj.Path
	if subj.IsService() {
		by = "service:" + subj.Service
	}
	if err := a.Calibration.Bind(r.Context(), gateway, device, dcc.EquipmentID{Issuer: req.Issuer, Value: req.Value}, req.Since, by); err != nil {
		if errors.Is(err, calibration.ErrInvalid) {
			writeError(w, http.StatusBadRequest, err.Error())
			return
		}
		if errors.Is(err, calibration.ErrNotTheirs) { // logged by the link
			writeError(w, http.StatusConflict, err.Error())
			return
		}
		a.serverError(w, r, err)
		return
	}
	a.calibration(w, r, gateway, device)
}
