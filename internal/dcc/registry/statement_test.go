package registry

import (
	"encoding/json"
	"reflect"
	"strings"
	"testing"
)

const hash = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"

func TestParseStatement(t *testing.T) {
	long := strings.Repeat("x", 1001)
	for _, tt := range []struct {
		name, in, err string // err "": accepted
	}{
		{"register", `{"action":"register","dcc":{"dcc_id":"D1","schema_version":"3.3.0","lab":"L","equipment":[{"issuer":"manufacturer","value":"SN-1"}],"performance_date":"2025-01-02","due_date":"2026-01-02+01:00","content_hash":"` + hash + `"}}`, ""},
		{"revoke", `{"action":"revoke","dcc_id":"D1","reason":"wrong reference"}`, ""},
		{"revoke without reason", `{"action":"revoke","dcc_id":"D1"}`, ""},
		{"unknown action", `{"action":"replace","dcc_id":"D1"}`, "unknown action"},
		{"no action", `{}`, "unknown action"},
		{"unknown field", `{"action":"revoke","dcc_id":"D1","lab":"other"}`, "unknown field"},
		{"trailing data", `{"action":"revoke","dcc_id":"D1"} {}`, "after the JSON"},
		{"not JSON", `register D1`, "statement"},
		{"register without dcc", `{"action":"register"}`, "needs dcc"},
		{"register with dcc_id", `{"action":"register","dcc_id":"D1","dcc":{"dcc_id":"D1","equipment":[],"content_hash":"` + hash + `"}}`, "not dcc_id"},
		{"short hash", `{"action":"register","dcc":{"dcc_id":"D1","equipment":[],"content_hash":"abc"}}`, "content_hash"},
		{"upper-case hash", `{"action":"register","dcc":{"dcc_id":"D1","equipment":[],"content_hash":"` + strings.ToUpper(hash) + `"}}`, "content_hash"},
		{"empty id", `{"action":"register","dcc":{"dcc_id":"","equipment":[],"content_hash":"` + hash + `"}}`, "dcc_id is empty"},
		{"control character in id", `{"action":"register","dcc":{"dcc_id":"D\u001b[31m","equipment":[],"content_hash":"` + hash + `"}}`, "printable"},
		{"long lab", `{"action":"register","dcc":{"dcc_id":"D1","lab":"` + long + `","equipment":[],"content_hash":"` + hash + `"}}`, "at most 1000"},
		{"bad date", `{"action":"register","dcc":{"dcc_id":"D1","due_date":"next year","equipment":[],"content_hash":"` + hash + `"}}`, "xs:date"},
		{"bad issuer", `{"action":"register","dcc":{"dcc_id":"D1","equipment":[{"issuer":"vendor","value":"SN"}],"content_hash":"` + hash + `"}}`, "issuer"},
		{"empty value", `{"action":"register","dcc":{"dcc_id":"D1","equipment":[{"issuer":"owner","value":""}],"content_hash":"` + hash + `"}}`, "empty"},
		{"too many identifications", `{"action":"register","dcc":{"dcc_id":"D1","equipment":[` + strings.Repeat(`{"issuer":"owner","value":"v"},`, 100) + `{"issuer":"owner","value":"v"}],"content_hash":"` + hash + `"}}`, "at most 100"},
		{"revoke with dcc", `{"action":"revoke","dcc_id":"D1","dcc":{"dcc_id":"D1"}}`, "not dcc"},
		{"revoke without id", `{"action":"revoke","reason":"x"}`, "dcc_id is empty"},
		{"long reason", `{"action":"revoke","dcc_id":"D1","reason":"` + long + `"}`, "at most 1000"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			st, err := ParseStatement([]byte(tt.in))
			switch {
			case tt.err == "" && err != nil:
				t.Fatalf("refused: %v", err)
			case tt.err != "" && (err == nil || !strings.Contains(err.Error(), tt.err)):
				t.Fatalf("got %v (%+v), want an error with %q", err, st, tt.err)
			}
		})
	}
}

// FuzzStatement: the statement parser never panics, and what it accepts
// survives a round trip (it is what the log records).
func FuzzStatement(f *testing.F) {
	f.Add([]byte(`{"action":"register","dcc":{"dcc_id":"D1","schema_version":"3.3.0","lab":"L","equipment":[{"issuer":"manufacturer","value":"SN-1"}],"performance_date":"2025-01-02","due_date":"2026-01-02","content_hash":"` + hash + `"}}`))
	f.Add([]byte(`{"action":"revoke","dcc_id":"D1","reason":"wrong reference"}`))
	f.Add([]byte(`{"action":"revoke","dcc_id":"D\u00e9","reason":"\ud800"}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		st, err := ParseStatement(b)
		if err != nil {
			return
		}
		out, err := json.Marshal(st)
		if err != nil {
			t.Fatal(err)
		}
		again, err := ParseStatement(out)
		if err != nil {
			t.Fatalf("re-encoded statement refused: %v: %s", err, out)
		}
		if !reflect.DeepEqual(st, again) {
			t.Fatalf("round trip changed the statement: %+v != %+v", st, again)
		}
	})
}
