package registry

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/time/rate"

	"github.com/fieldtrust/fieldtrust/internal/dcc"
	"github.com/fieldtrust/fieldtrust/internal/dcc/xades"
	"github.com/fieldtrust/fieldtrust/internal/envelope"
)

// Limits of the public endpoints, per client address.
const (
	LookupRate  = 20 // lookups per second (bursts of 2x)
	VerifyRate  = 2  // verifications per second (bursts of 5): each costs a schema validation and a signature check
	maxClients  = 10000
	maxEntries  = 1000
	clientIdleT = 10 * time.Minute
)

// Handler serves the registry's HTTP API under /api/v1/registry/.
func (r *Registry) Handler() http.Handler {
	mux := http.NewServeMux()
	lookups := newLimiter(r.lookupRate, int(2*r.lookupRate))
	verifies := newLimiter(VerifyRate, 5)
	mux.Handle("GET /api/v1/registry/dcc/{id}", lookups.wrap(http.HandlerFunc(r.serveDCC)))
	mux.Handle("GET /api/v1/registry/dcc/{id}/content", lookups.wrap(http.HandlerFunc(r.serveContent)))
	mux.Handle("GET /api/v1/registry/equipment", lookups.wrap(http.HandlerFunc(r.serveEquipment)))
	mux.Handle("POST /api/v1/registry/verify", verifies.wrap(http.HandlerFunc(r.serveVerify)))
	mux.Handle("POST /api/v1/registry/dcc", verifies.wrap(http.HandlerFunc(r.serveSubmit)))
	mux.Handle("GET /api/v1/registry/log/head", lookups.wrap(http.HandlerFunc(r.serveHead)))
	mux.Handle("GET /api/v1/registry/log/entries", lookups.wrap(http.HandlerFunc(r.serveEntries)))
	mux.Handle("GET /api/v1/registry/log/consistency", lookups.wrap(http.HandlerFunc(r.serveConsistency)))
	return mux
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	json.NewEncoder(w).Encode(v)
}

func (r *Registry) fail(w http.ResponseWriter, err error) {
	code := http.StatusInternalServerError
	switch {
	case errors.Is(err, ErrUnknown):
		code = http.StatusNotFound
	case errors.Is(err, ErrCollision), errors.Is(err, ErrReplace):
		code = http.StatusConflict
	case errors.Is(err, ErrNotIssuer), errors.Is(err, ErrReadOnly):
		code = http.StatusForbidden
	}
	if code == http.StatusInternalServerError {
		r.lg.Error("registry request failed", "err", err)
		writeJSON(w, code, map[string]string{"error": "internal error"})
		return
	}
	writeJSON(w, code, map[string]string{"error": err.Error()})
}

func (r *Registry) serveDCC(w http.ResponseWriter, req *http.Request) {
	l, err := r.LookupDCC(req.Context(), req.PathValue("id"))
	if err != nil {
		r.fail(w, err)
		return
	}
	writeJSON(w, http.StatusOK, l)
}

func (r *Registry) serveContent(w http.ResponseWriter, req *http.Request) {
	b, err := r.Content(req.Context(), req.PathValue("id"))
	if err != nil {
		r.fail(w, err)
		return
	}
	w.Header().Set("Content-Type", "application/xml")
	w.Write(b) // exactly as signed
}

func (r *Registry) serveEquipment(w http.ResponseWriter, req *http.Request) {
	q := req.URL.Query()
	v := q.Get("value")
	if v == "" || len(v) > 1000 || len(q.Get("issuer")) > 100 {
		writeJSON(w, http.StatusBadRequest, map[string]string{"error": "give value= (and optionally issuer=: manufacturer, calibrationLaboratory, customer, owner, other)"})
		return
	}
	l, err := r.LookupEquipment(req.Context(), q.Get("issuer"), v)
	if err != nil {
		r.fail(w, err)
		return
	}
	writeJSON(w, http.StatusOK, l)
}

// readBody reads a request body up to the DCC bound.
func readBody(w http.ResponseWriter, req *http.Request) ([]byte, bool) {
	b, err := io.ReadAll(http.MaxBytesReader(w, req.Body, int64(dcc.MaxBytes)))
	if err != nil {
		writeJSON(w, http.StatusRequestEntityTooLarge, map[string]string{"error": "body larger than the DCC bound or unreadable"})
		return nil, false
	}
	return b, true
}

// serveVerify verifies a posted DCC against the registered labs' roots and
// says which lab issued it and what the registry knows of it.
func (r *Registry) serveVerify(w http.ResponseWriter, req *http.Request) {
	b, ok := readBody(w, req)
	if !ok {
		return
	}
	iss, err := r.issuers(req.Context())
	if err != nil {
		r.fail(w, err)
		return
	}
	var rep *dcc.Report
	lab := ""
	for _, is := range iss {
		rep = dcc.Verify(b, xades.VerifyOptions{Roots: is.roots})
		if rep.Status != xades.Untrusted {
			if rep.Status == xades.Valid {
				lab = is.lab
			}
			break
		}
	}
	if rep == nil {
		rep = dcc.Verify(b, xades.VerifyOptions{})
	}
	out := struct {
		dcc.JSONReport
		Lab      string  `json:"lab,omitempty"`
		Registry *Record `json:"registry,omitempty"`
	}{JSONReport: rep.JSON(), Lab: lab}
	if rep.Metadata != nil {
		if rec, err := r.Lookup(req.Context(), rep.Metadata.ID); err == nil && rec.DCC.ContentHash == rep.Metadata.ContentHash {
			out.Registry = rec
		}
	}
	writeJSON(w, http.StatusOK, out)
}

// serveSubmit takes a lab's write: a signed DCC (application/xml) or a
// signed statement (application/pkcs7-mime or application/cms, DER).
func (r *Registry) serveSubmit(w http.ResponseWriter, req *http.Request) {
	b, ok := readBody(w, req)
	if !ok {
		return
	}
	ct := req.Header.Get("Content-Type")
	if strings.Contains(ct, "xml") {
		rec, rep, err := r.SubmitDCC(req.Context(), b)
		if err != nil {
			if rep != nil && rep.Status != xades.Valid {
				writeJSON(w, http.StatusForbidden, struct {
					Error string `json:"error"`
					dcc.JSONReport
				}{err.Error(), rep.JSON()})
				return
			}
			r.fail(w, err)
			return
		}
		writeJSON(w, http.StatusOK, rec)
		return
	}
	if len(b) > envelope.MaxEnvelopeBytes {
		writeJSON(w, http.StatusRequestEntityTooLarge, map[string]string{"error": "statement too large"})
		return
	}
	rec, err := r.SubmitStatement(req.Context(), b)
	if err != nil {
		if !errors.Is(err, ErrNotIssuer) && !errors.Is(err, ErrCollision) && !errors.Is(err, ErrReplace) && !errors.Is(err, ErrUnknown) && !errors.Is(err, ErrReadOnly) {
			writeJSON(w, http.StatusBadRequest, map[string]string{"error": err.Error()})
			return
		}
		r.fail(w, err)
		return
	}
	writeJSON(w, http.StatusOK, rec)
}

func (r *Registry) serveHead(w http.ResponseWriter, req *http.Request) {
	h, err := r.LatestHead(req.Context())
	if err != nil {
		r.fail(w, err)
		return
	}
	writeJSON(w, http.StatusOK, h)
}

func uintParam(req *http.Request, name string) (uint64, bool) {
	v, err := strconv.ParseUint(req.URL.Query().Get(name), 10, 63)
	return v, err == nil
}

func (r *Registry) serveEntries(w http.ResponseWriter, req *http.Request) {
	start, ok1 := uintParam(req, "start")
	end, ok2 := uintParam(req, "end")
	if !ok1 || !ok2 || end <= start || end-start > maxEntries {
		writeJSON(w, http.StatusBadRequest, map[string]string{"error": "give start= and end= with 0 < end-start <= 1000"})
		return
	}
	es, err := r.Entries(req.Context(), start, end)
	if err != nil {
		r.fail(w, err)
		return
	}
	out := struct {
		Entries []string `json:"entries"`
	}{[]string{}}
	for _, e := range es {
		out.Entries = append(out.Entries, base64.StdEncoding.EncodeToString(e))
	}
	writeJSON(w, http.StatusOK, out)
}

func (r *Registry) serveConsistency(w http.ResponseWriter, req *http.Request) {
	from, ok1 := uintParam(req, "from")
	to, ok2 := uintParam(req, "to")
	if !ok1 || !ok2 || from > to {
		writeJSON(w, http.StatusBadRequest, map[string]string{"error": "give from= and to= sizes with from <= to"})
		return
	}
	p, err := r.Consistency(req.Context(), from, to)
	if err != nil {
		writeJSON(w, http.StatusBadRequest, map[string]string{"error": err.Error()})
		return
	}
	out := struct {
		Hashes []string `json:"hashes"`
	}{[]string{}}
	for _, h := range p {
		out.Hashes = append(out.Hashes, base64.StdEncoding.EncodeToString(h))
	}
	writeJSON(w, http.StatusOK, out)
}

// limiter is a token bucket per client address, bounded in clients.
type limiter struct {
	mu      sync.Mutex
	r       rate.Limit
	burst   int
	clients map[string]*client
}

type client struct {
	l    *rate.Limiter
	seen time.Time
}

func newLimiter(r float64, burst int) *limiter {
	return &limiter{r: rate.Limit(r), burst: burst, clients: map[string]*client{}}
}

func (l *limiter) allow(addr string) (bool, time.Duration) {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		host = addr
	}
	now := time.Now()
	l.mu.Lock()
	defer l.mu.Unlock()
	c := l.clients[host]
	if c == nil {
		if len(l.clients) >= maxClients {
			for k, v := range l.clients {
				if now.Sub(v.seen) > clientIdleT {
					delete(l.clients, k)
				}
			}
			if len(l.clients) >= maxClients {
				return false, time.Second // the table is full of active clients
			}
		}
		c = &client{l: rate.NewLimiter(l.r, l.burst)}
		l.clients[host] = c
	}
	c.seen = now
	res := c.l.ReserveN(now, 1)
	if d := res.DelayFrom(now); d > 0 {
		res.CancelAt(now)
		return false, d
	}
	return true, 0
}

func (l *limiter) wrap(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		if ok, wait := l.allow(req.RemoteAddr); !ok {
			w.Header().Set("Retry-After", strconv.Itoa(int(wait/time.Second)+1))
			writeJSON(w, http.StatusTooManyRequests, map[string]string{"error": "rate limited: retry after the Retry-After seconds"})
			return
		}
		h.ServeHTTP(w, req)
	})
}
