// Package web serves the platform's HTTPS endpoints: health, the root CA
// certificates, and (as later parts land) EST, bootstrap, the query API and
// the dashboard.
package web

import (
	"crypto/x509"
	"encoding/json"
	"log/slog"
	"net/http"
	"time"

	"github.com/fieldtrust/fieldtrust/internal/pki"
)

// Options configure the handler.
type Options struct {
	// Roots are the trust anchors published under /ca, by domain.
	Roots map[pki.Domain]*x509.Certificate
	// Metrics serves /metrics (Prometheus); the caller guards access.
	Metrics http.Handler
	// Health, if set, judges /healthz: it returns whether the platform is
	// healthy (200, else 503) and the body to serve as JSON. It is public:
	// the body must not say more than states.
	Health func() (healthy bool, body any)
	// API, if set, serves /api/v1.
	API *API
	// Pages, if set, adds the web console's routes (package console) to
	// the same mux: explicit patterns only, so every other path answers
	// exactly as without it.
	Pages  interface{ Register(mux *http.ServeMux) }
	Logger *slog.Logger
}

// New returns the platform's HTTP handler.
func New(opts Options) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		if opts.Health == nil {
			writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
			return
		}
		w.Header().Set("Cache-Control", "no-store")
		ok, body := opts.Health()
		status := http.StatusOK
		if !ok {
			status = http.StatusServiceUnavailable
		}
		writeJSON(w, status, body)
	})
	// /ca serves every root, /ca/{domain}.pem one: what a client needs to
	// verify the platform and what a customer needs to check e2e signatures.
	mux.HandleFunc("GET /ca", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/x-pem-file")
		for _, d := range []pki.Domain{pki.Transport, pki.E2E} {
			if c := opts.Roots[d]; c != nil {
				w.Write(pki.EncodeCertsPEM(c))
			}
		}
	})
	mux.HandleFunc("GET /ca/{file}", func(w http.ResponseWriter, r *http.Request) {
		for d, c := range opts.Roots {
			if r.PathValue("file") == string(d)+".pem" {
				w.Header().Set("Content-Type", "application/x-pem-file")
				w.Write(pki.EncodeCertsPEM(c))
				return
			}
		}
		writeError(w, http.StatusNotFound, "no such CA; use /ca/transport.pem or /ca/e2e.pem")
	})
	if opts.API != nil {
		opts.API.register(mux)
	}
	if opts.Metrics != nil {
		mux.Handle("GET /metrics", opts.Metrics)
	}
	if opts.Pages != nil {
		opts.Pages.Register(mux)
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return logRequests(log, mux)
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(v)
}

func writeError(w http.ResponseWriter, status int, msg string) {
	writeJSON(w, status, map[string]string{"error": msg})
}

type statusRecorder struct {
	http.ResponseWriter
	status int
}

func (s *statusRecorder) WriteHeader(code int) {
	s.status = code
	s.ResponseWriter.WriteHeader(code)
}

// Unwrap lets http.ResponseController reach the connection (the console's
// event stream flushes through it).
func (s *statusRecorder) Unwrap() http.ResponseWriter { return s.ResponseWriter }

// logRequests logs each request with the client identity when it presented
// a certificate.
func logRequests(log *slog.Logger, next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		rec := &statusRecorder{ResponseWriter: w, status: http.StatusOK}
		next.ServeHTTP(rec, r)
		attrs := []any{"method", r.Method, "path", r.URL.Path, "status", rec.status, "duration", time.Since(start), "remote", r.RemoteAddr}
		if r.TLS != nil && len(r.TLS.PeerCertificates) > 0 {
			attrs = append(attrs, "client_cn", r.TLS.PeerCertificates[0].Subject.CommonName)
		}
		log.Debug("http request", attrs...)
	})
}
