package web_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/fieldtrust/fieldtrust/internal/ledger"
	"github.com/fieldtrust/fieldtrust/internal/logbuf"
	"github.com/fieldtrust/fieldtrust/internal/tacs"
	"github.com/fieldtrust/fieldtrust/internal/web"
)

// pageOf reads what a client needs of a page to ask for the next one.
func pageOf(t *testing.T, raw []byte) (next string, count int) {
	t.Helper()
	var p struct {
		Count int    `json:"count"`
		Next  string `json:"next"`
	}
	if err := json.Unmarshal(raw, &p); err != nil {
		t.Fatalf("page: %v\n%.500s", err, raw)
	}
	return p.Next, p.Count
}

// TestExportPaging: a client follows "next" from page to page and gets
// every snapshot exactly once, each page bounded by limit; the pages
// verify together, even though a new head was signed between them; pages
// missing, repeated, out of order or of another export fail; one page
// alone verifies and says the export continues.
func TestExportPaging(t *testing.T) {
	const n, uncovered, limit = 250, 4, 20
	f := newPagedFixture(t, n, n-uncovered)
	api := &web.API{Data: f.data, Proofs: f.lg, Grants: tacs.DefaultGrants(), Identify: identifyByHeader,
		ExportLimits: web.ExportLimits{Burst: 1000}}
	srv := httptest.NewServer(web.New(web.Options{API: api}))
	defer srv.Close()
	get := func(path string) []byte {
		t.Helper()
		req, _ := http.NewRequest("GET", srv.URL+path, nil)
		req.Header.Set(subjectHeader, "ms")
		resp, err := srv.Client().Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		if err != nil || resp.StatusCode != 200 {
			t.Fatalf("GET %s: %d %v %.300s", path, resp.StatusCode, err, b)
		}
		return b
	}
	follow := func(query string) [][]byte {
		var pages [][]byte
		next := ""
		for {
			path := "/api/v1/export?" + query
			if next != "" {
				path += "&after=" + next
			}
			raw := get(path)
			pages = append(pages, raw)
			if next, _ = pageOf(t, raw); next == "" {
				return pages
			}
			if len(pages) == 1 {
				// The ledger signs a new head while the client pages.
				f.data.setHead(f.sign(t))
			}
		}
	}
	verify := func(pages ...[]byte) (*ledger.ExportReport, error) {
		v, err := ledger.NewExportVerifier(ledger.ExportOptions{Root: f.e2e.Root()})
		if err != nil {
			t.Fatal(err)
		}
		for i, p := range pages {
			if err := v.Page(bytes.NewReader(p)); err != nil {
				return nil, fmt.Errorf("page %d: %w", i+1, err)
			}
		}
		return v.Finish()
	}

	before := len(f.data.queries())
	pages := follow(fmt.Sprintf("limit=%d", limit))
	if len(pages) != 13 {
		t.Fatalf("%d pages of at most %d of %d snapshots; want 13", len(pages), limit, n)
	}
	for i, p := range pages[:12] {
		if _, c := pageOf(t, p); c != limit {
			t.Fatalf("page %d holds %d snapshots, want %d", i+1, c, limit)
		}
	}
	for _, q := range f.data.queries()[before:] {
		if q > limit {
			t.Fatalf("a page of %d asked the store for %d records", limit, q)
		}
	}
	rep, err := verify(pages...)
	if err != nil {
		t.Fatalf("the pages do not verify: %v", err)
	}
	if rep.Pages != 13 || rep.Snapshots != n-uncovered || rep.NotYetCovered != uncovered || rep.Next != "" || rep.Head.Size != n || rep.Devices != 1 {
		t.Fatalf("report %+v; want 13 pages, %d snapshots, %d not yet covered, the last head of size %d", rep, n-uncovered, uncovered, n)
	}
	if !bytes.Contains(pages[0], []byte(fmt.Sprintf(`"size":%d`, n-uncovered))) || bytes.Contains(pages[0], []byte(`"after"`)) || !bytes.Contains(pages[1], []byte(`"after"`)) {
		t.Fatal("the first page is not against the first head, or after is misplaced")
	}

	for _, tt := range []struct {
		name  string
		pages [][]byte
		want  string
	}{
		{"missing page", [][]byte{pages[0], pages[2]}, "pages are missing, repeated or out of order"},
		{"repeated page", [][]byte{pages[0], pages[0]}, "pages are missing, repeated or out of order"},
		{"swapped pages", [][]byte{pages[1], pages[0]}, "pages are missing, repeated or out of order"},
		{"page after the last", append(append([][]byte{}, pages...), pages[12]), "follows a page without \"next\""},
		{"another export's page", [][]byte{pages[0], bytes.Replace(pages[1], []byte(`"scope":"ms"`), []byte(`"scope":"ms","from":"1970-01-01T00:00:01Z"`), 1)}, "not the same export"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := verify(tt.pages...); err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("verify = %v; want an error saying %q", err, tt.want)
			}
		})
	}
	// One page, or the first pages, verify, and say the export goes on.
	for _, k := range []int{1, 12} {
		rep, err := verify(pages[:k]...)
		if err != nil || rep.Next == "" || rep.Snapshots != limit*k {
			t.Fatalf("the first %d pages: %+v %v; want %d snapshots and a next", k, rep, err, limit*k)
		}
	}
	// A page from the middle verifies alone: its chain starts there.
	if rep, err := verify(pages[5]); err != nil || rep.Snapshots != limit {
		t.Fatalf("page 6 alone: %+v %v", rep, err)
	}
	// A full last page ends the export: no empty page follows.
	if p := follow(fmt.Sprintf("limit=%d", n/2)); len(p) != 2 {
		t.Fatalf("%d pages of %d of %d snapshots; want 2", len(p), n/2, n)
	}
	// Without limit, pages are DefaultExportLimit: this export is one.
	if p := follow(""); len(p) != 1 {
		t.Fatalf("%d pages by default; want 1", len(p))
	}
}

// TestExportLimits: a tenant may stream a bounded number of export pages
// at once and ask for them at a bounded rate; beyond either it gets 429
// with Retry-After, and other tenants are not affected. Every identity
// below a master account counts for it.
func TestExportLimits(t *testing.T) {
	f := newPagedFixture(t, 10, 10)
	var mu sync.Mutex
	now := time.Date(2026, 6, 1, 0, 0, 0, 0, time.UTC)
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	advance := func(d time.Duration) { mu.Lock(); now = now.Add(d); mu.Unlock() }
	var logs logbuf.Buffer
	api := &web.API{Data: f.data, Proofs: f.lg, Grants: tacs.DefaultGrants(), Identify: identifyByHeader, Now: clock,
		ExportLimits: web.ExportLimits{Concurrent: 1, Every: 2 * time.Second, Burst: 2}, Logger: slog.New(slog.NewTextHandler(&logs, nil))}
	srv := httptest.NewServer(web.New(web.Options{API: api}))
	defer srv.Close()
	type answer struct {
		code       int
		retryAfter string
		body       string
	}
	get := func(who string) answer {
		req, _ := http.NewRequest("GET", srv.URL+"/api/v1/export", nil)
		req.Header.Set(subjectHeader, who)
		resp, err := srv.Client().Do(req)
		if err != nil {
			t.Error(err)
			return answer{}
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return answer{resp.StatusCode, resp.Header.Get("Retry-After"), string(b)}
	}
	want := func(a answer, code int, retryAfter, says string) {
		t.Helper()
		if a.code != code || a.retryAfter != retryAfter || !strings.Contains(a.body, says) {
			t.Fatalf("answer %d (Retry-After %q) %.300s; want %d (Retry-After %q) saying %q", a.code, a.retryAfter, a.body, code, retryAfter, says)
		}
	}

	// ms's first export holds its one slot while it streams.
	f.data.mu.Lock()
	f.data.hold, f.data.holdScope, f.data.entered = make(chan struct{}), "ms", make(chan struct{}, 1)
	f.data.mu.Unlock()
	first := make(chan answer, 1)
	go func() { first <- get("ms") }()
	<-f.data.entered
	want(get("ms/acc"), http.StatusTooManyRequests, "1", "in progress")
	want(get("ms/acc/gw"), http.StatusTooManyRequests, "1", "in progress")
	want(get("ms-2"), http.StatusOK, "", `"count":0`) // another tenant
	close(f.data.hold)
	want(<-first, http.StatusOK, "", `"count":10`)
	f.data.mu.Lock()
	f.data.hold = nil
	f.data.mu.Unlock()

	// Burst 2: ms's second page passes, the third is early.
	want(get("ms"), http.StatusOK, "", `"count":10`)
	want(get("ms/acc"), http.StatusTooManyRequests, "2", "faster than one per 2s")
	advance(time.Second)
	want(get("ms"), http.StatusTooManyRequests, "1", "faster than one per 2s")
	advance(time.Second)
	want(get("ms"), http.StatusOK, "", `"count":10`)
	want(get("ms"), http.StatusTooManyRequests, "2", "faster")
	// Services are tenants of their own.
	want(get("service:ops/admin"), http.StatusOK, "", `"count":10`)

	// Refusals are logged once per run, not once each: three runs.
	out := logs.String()
	if n := strings.Count(out, "export refused"); n != 3 {
		t.Errorf("%d refusal log lines, want 3:\n%s", n, out)
	}
	if n := strings.Count(out, "refused_meanwhile=2"); n != 2 {
		t.Errorf("%d admissions logged with 2 refusals before, want 2:\n%s", n, out)
	}
}
