package command

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"
)

func valid() Command {
	now := time.Unix(1_800_000_000, 0).UTC()
	return Command{ID: "0123456789abcdef", Type: "set-interval", Args: map[string]string{"seconds": "30"}, Gateway: "ms/acc/gw", Issued: now, Expires: now.Add(time.Hour), Nonce: strings.Repeat("ab", 16)}
}

func TestParseAndValid(t *testing.T) {
	b, _ := json.Marshal(valid())
	c, err := Parse(b)
	if err != nil {
		t.Fatal(err)
	}
	at := c.Issued.Add(time.Minute)
	for _, tc := range []struct {
		name    string
		gateway string
		now     time.Time
		want    error
	}{
		{"valid", "ms/acc/gw", at, nil},
		{"other gateway", "ms/acc/gw2", at, ErrOtherGateway},
		{"expired", "ms/acc/gw", c.Expires, ErrExpired},
		{"future", "ms/acc/gw", c.Issued.Add(-MaxSkew - time.Second), ErrNotYetValid},
	} {
		if err := c.Valid(tc.gateway, tc.now); !errors.Is(err, tc.want) && !(err == nil && tc.want == nil) {
			t.Errorf("%s: %v, want %v", tc.name, err, tc.want)
		}
	}
	for name, mod := range map[string]func(*Command){
		"bad id":       func(c *Command) { c.ID = "x" },
		"bad name":     func(c *Command) { c.Type = "Reboot" },
		"bad arg":      func(c *Command) { c.Args = map[string]string{"a b": "1"} },
		"bad gateway":  func(c *Command) { c.Gateway = "ms/acc" },
		"no nonce":     func(c *Command) { c.Nonce = "" },
		"no expiry":    func(c *Command) { c.Expires = time.Time{} },
		"too long":     func(c *Command) { c.Expires = c.Issued.Add(MaxLifetime + time.Second) },
		"backwards":    func(c *Command) { c.Expires = c.Issued.Add(-time.Second) },
		"gateway trav": func(c *Command) { c.Gateway = "../acc/gw" },
	} {
		c := valid()
		mod(&c)
		b, _ := json.Marshal(c)
		if _, err := Parse(b); !errors.Is(err, ErrInvalid) {
			t.Errorf("%s: %v", name, err)
		}
	}
	if _, err := Parse(append(b, '{', '}')); err == nil {
		t.Error("trailing data accepted")
	}
	if _, err := ParseArgs([]string{"seconds=30", "seconds=40"}); err == nil {
		t.Error("duplicate argument accepted")
	}
	if a, err := ParseArgs([]string{"mode=deep", "empty="}); err != nil || a["mode"] != "deep" || a["empty"] != "" {
		t.Errorf("ParseArgs: %v %v", a, err)
	}
}

// FuzzParse: no input panics, and an accepted command re-encodes to one
// that is accepted again.
func FuzzParse(f *testing.F) {
	b, _ := json.Marshal(valid())
	f.Add(b)
	f.Add([]byte(`{"id":"0123456789abcdef","type":"reboot"}`))
	f.Add([]byte(`[]`))
	f.Fuzz(func(t *testing.T, b []byte) {
		c, err := Parse(b)
		if err != nil {
			return
		}
		again, _ := json.Marshal(c)
		if _, err := Parse(again); err != nil {
			t.Fatalf("accepted %s, but not its re-encoding: %v", b, err)
		}
	})
}

// FuzzParseResult: no input panics.
func FuzzParseResult(f *testing.F) {
	f.Add([]byte(`{"id":"0123456789abcdef","status":"ok","time":"2026-01-01T00:00:00Z"}`))
	f.Add([]byte(`{"status":"refused","error":"x","digest":"ab","count":2,"time":"2026-01-01T00:00:00Z"}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := ParseResult(b)
		if err == nil && r.Status != StatusOK && r.Status != StatusError && r.Status != StatusRefused {
			t.Fatalf("status %q accepted", r.Status)
		}
	})
}
