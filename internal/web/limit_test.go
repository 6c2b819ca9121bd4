package web

import (
	"fmt"
	"testing"
	"time"

	"github.com/fieldtrust/fieldtrust/internal/store"
	"github.com/fieldtrust/fieldtrust/internal/tacs"
)

// TestExportGateForgetsIdleTenants: the gate's memory stays bounded
// however many tenants ask: idle ones with a full bucket are forgotten,
// busy ones kept.
func TestExportGateForgetsIdleTenants(t *testing.T) {
	now := time.Date(2026, 6, 1, 0, 0, 0, 0, time.UTC)
	g := newExportGate(ExportLimits{}, func() time.Time { return now }, nil)
	busy, err := g.acquire(tacs.Account("busy"))
	if err != nil {
		t.Fatal(err)
	}
	for i := range 3 * gateSweepAt {
		release, err := g.acquire(tacs.Account(fmt.Sprintf("ms-%d/acc", i)))
		if err != nil {
			t.Fatal(err)
		}
		release()
		release() // twice is harmless
		now = now.Add(DefaultExportEvery * DefaultExportBurst / gateSweepAt)
	}
	if n := len(g.tenants); n > gateSweepAt+1 {
		t.Fatalf("the gate remembers %d tenants; want at most %d", n, gateSweepAt+1)
	}
	if b := g.tenants["busy"]; b == nil || b.active != 1 {
		t.Fatal("a tenant with an export in progress was forgotten")
	}
	busy()
	if _, err := g.acquire(tacs.Account("busy/acc")); err != nil {
		t.Fatalf("after its export ended: %v", err)
	}
}

// FuzzDecodeCursor: whatever a client sends as after=, decoding fails
// cleanly or yields a position a store record could have, which encodes
// back to the same cursor.
func FuzzDecodeCursor(f *testing.F) {
	at := time.Date(2026, 6, 1, 0, 0, 0, 0, time.UTC)
	f.Add(encodeCursor(&store.Cursor{Time: at, Gateway: "ms/acc/gw", Device: "d", Seq: 1}))
	f.Add(encodeToken(exportCursor{Cursor: store.Cursor{Time: at, Gateway: "ms/acc/gw", Device: "d", Seq: 7}, Covered: 9}))
	f.Add(encodeToken(map[string]any{"Seq": -1}))
	f.Add("bnVsbA")
	f.Add("")
	f.Add("!!")
	f.Add(encodeToken(map[string]any{"Time": "2026-06-01T01:00:00+01:00", "Gateway": "ms/acc/gw", "Device": "d", "Seq": 1, "Covered": 1}))
	f.Fuzz(func(t *testing.T, s string) {
		if c, err := decodeCursor(s); err == nil {
			if checkPosition(*c) != nil {
				t.Fatalf("decodeCursor(%q) = %+v, not a position", s, c)
			}
			if again, err := decodeCursor(encodeCursor(c)); err != nil || encodeCursor(again) != encodeCursor(c) {
				t.Fatalf("cursor %+v does not round-trip: %+v %v", c, again, err)
			}
		}
		if c, err := decodeExportCursor(s); err == nil {
			if checkPosition(c.Cursor) != nil || c.Covered == 0 {
				t.Fatalf("decodeExportCursor(%q) = %+v", s, c)
			}
			if again, err := decodeExportCursor(encodeToken(c)); err != nil || encodeToken(again) != encodeToken(c) {
				t.Fatalf("export cursor %+v does not round-trip: %+v %v", c, again, err)
			}
		}
	})
}
