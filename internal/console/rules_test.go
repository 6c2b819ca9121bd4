package console

import (
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/fieldtrust/fieldtrust/internal/store"
)

func TestBuckets(t *testing.T) {
	t0 := time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)
	// Few points: kept exactly.
	b := newBuckets(t0, t0.Add(time.Hour), 10)
	for i := range 5 {
		b.add(t0.Add(time.Duration(i)*time.Minute), float64(i))
	}
	ts, vs := b.points()
	if len(ts) != 5 || vs[4] != 4 || ts[1] != float64(t0.Add(time.Minute).Unix()) {
		t.Fatalf("small series: %v %v", ts, vs)
	}
	// A day of 1 Hz data into 100 buckets: at most 2 points per bucket,
	// and a single spike survives.
	b = newBuckets(t0, t0.Add(24*time.Hour), 100)
	for i := range 86400 {
		v := 1.0
		if i == 50000 {
			v = 99
		}
		b.add(t0.Add(time.Duration(i)*time.Second), v)
	}
	b.add(t0.Add(-time.Second), 1e9) // before the range: ignored
	b.add(t0.Add(24*time.Hour), 1e9) // at its end (exclusive): ignored
	ts, vs = b.points()
	if len(ts) > 200 || len(ts) != len(vs) {
		t.Fatalf("downsampled to %d points", len(ts))
	}
	max, at := 0.0, 0.0
	for i, v := range vs {
		if v > max {
			max, at = v, ts[i]
		}
		if i > 0 && ts[i] < ts[i-1] {
			t.Fatalf("points out of time order at %d", i)
		}
	}
	if max != 99 || at != float64(t0.Add(50000*time.Second).Unix()) {
		t.Fatalf("the spike: max %v at %v", max, at)
	}
}

func TestInputRules(t *testing.T) {
	for _, tt := range []struct {
		in, want string
		ok       bool
	}{
		{"acme-pumps", "acme-pumps", true},
		{"acme-pumps/plant-berlin", "acme-pumps/plant-berlin", true},
		{"/", "", true},
		{"", "", false},
		{"a/b/c/d", "", false},
		{"../x", "", false},
		{"pki", "", false},
		{"acme pumps", "", false},
	} {
		got, err := ParseScope(tt.in)
		if (err == nil) != tt.ok || got != tt.want {
			t.Errorf("ParseScope(%q) = %q, %v", tt.in, got, err)
		}
	}
	for _, tt := range []struct {
		in, want string
		ok       bool
	}{
		{"Anna@Acme.Example", "anna@acme.example", true},
		{"Anna <anna@acme.example>", "", false},
		{"not-an-email", "", false},
		{strings.Repeat("a", 250) + "@b.example", "", false},
		{"a\"<script>\"@x.example", "", false},
	} {
		got, err := ParseEmail(tt.in)
		if (err == nil) != tt.ok || got != tt.want {
			t.Errorf("ParseEmail(%q) = %q, %v", tt.in, got, err)
		}
	}
	for _, tt := range []struct{ in, want string }{
		{"/devices/a/b/c/d", "/devices/a/b/c/d"},
		{"//evil.example/", "/fleet"},
		{"/\\evil.example", "/fleet"},
		{"https://evil.example/", "/fleet"},
		{"/fleet\r\nSet-Cookie: x", "/fleet"},
		{"", "/fleet"},
	} {
		if got := safeNext(tt.in); got != tt.want {
			t.Errorf("safeNext(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
	for _, tt := range []struct {
		role, need string
		ok         bool
	}{
		{store.RoleViewer, store.RoleViewer, true},
		{store.RoleViewer, store.RoleOperator, false},
		{store.RoleOperator, store.RoleViewer, true},
		{store.RoleAdmin, store.RoleOperator, true},
		{store.RoleOperator, store.RoleAdmin, false},
		{"root", store.RoleViewer, false},
		{store.RoleAdmin, "root", false},
	} {
		v := &Viewer{User: store.ConsoleUser{Role: tt.role}}
		if v.Has(tt.need) != tt.ok {
			t.Errorf("role %s has %s = %v", tt.role, tt.need, !tt.ok)
		}
	}
}

func FuzzAuditCursor(f *testing.F) {
	f.Add("1764547200000~acme/plant/gw-1~pump-1~5")
	f.Add("~~~")
	f.Add("1~a/b/c~../..~1")
	f.Fuzz(func(t *testing.T, s string) {
		c, err := decodeAuditCursor(s)
		if err != nil {
			return
		}
		// What decodes is a valid path and round-trips.
		if _, _, err := gatewayOf(c.Gateway + "/" + c.Device); err != nil {
			t.Fatalf("decoded an invalid path %q", c.Gateway+"/"+c.Device)
		}
		if back, err := decodeAuditCursor(encodeAuditCursor(c)); err != nil || *back != *c {
			t.Fatalf("round trip of %q: %+v, %v", s, back, err)
		}
	})
}

func FuzzStatusMessage(f *testing.F) {
	f.Add("acme/plant/gw-1/status", []byte(`{"state":"online","time":"2026-12-01T00:00:00Z","devices":3}`))
	f.Add("acme/plant/gw-1/status", []byte(`{"state":"offline"}`))
	f.Add("acme/plant/gw-1/snapshots", []byte(`{"state":"online"}`))
	f.Add("pki/crl/transport", []byte(`{"state":"online"}`))
	f.Add("a/b/c/status", []byte(`{"state":"sideways"}`))
	f.Fuzz(func(t *testing.T, topic string, payload []byte) {
		w := &StatusWatcher{}
		w.handle(topic, payload, slog.New(slog.DiscardHandler))
		for gw := range w.state {
			if strings.Count(gw, "/") != 2 || !strings.HasPrefix(topic, gw+"/") {
				t.Fatalf("state for %q from topic %q", gw, topic)
			}
		}
	})
}

func FuzzSearchParam(f *testing.F) {
	f.Add("pump")
	f.Add("\x00\x1b[31m")
	f.Fuzz(func(t *testing.T, s string) {
		got, err := searchParam(s)
		if err == nil && (len(got) > 128 || strings.ContainsAny(got, "\x00\r\n")) {
			t.Fatalf("searchParam(%q) = %q", s, got)
		}
	})
}
