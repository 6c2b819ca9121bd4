package gateway

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"

	"github.com/fieldtrust/fieldtrust/internal/snapshot"
)

// Reading is one measurement from local equipment, as posted to the local
// input: POST /v1/readings with a JSON body
//
//	{"device": "press-3", "type": "press", "values": [
//	  {"channel": "force", "value": 412.5, "unit": "kN", "group": "mechanical"}]}
//
// The local input listens on loopback only (plain HTTP: it never leaves
// the machine); everything that leaves the site is sealed.
type Reading struct {
	Device string           `json:"device"`
	Type   string           `json:"type,omitempty"`
	Values []snapshot.Value `json:"values"`
}

// maxReadingBody bounds one posted reading.
const maxReadingBody = 1 << 20

// localHandler accepts readings and hands them to submit, which seals and
// queues them; its error is the client's answer.
func localHandler(submit func(Reading) error, log *slog.Logger) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /v1/readings", func(w http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxReadingBody))
		if err != nil {
			http.Error(w, "body too large or unreadable", http.StatusRequestEntityTooLarge)
			return
		}
		var rd Reading
		dec := json.NewDecoder(bytes.NewReader(body))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&rd); err != nil {
			http.Error(w, "bad reading: "+err.Error(), http.StatusBadRequest)
			return
		}
		if err := submit(rd); err != nil {
			status := http.StatusBadRequest
			if !errors.Is(err, snapshot.ErrMalformed) {
				status = http.StatusServiceUnavailable
			}
			log.Warn("local reading refused", "device", rd.Device, "err", err)
			http.Error(w, err.Error(), status)
			return
		}
		w.WriteHeader(http.StatusAccepted)
		fmt.Fprintln(w, "queued")
	})
	return mux
}
