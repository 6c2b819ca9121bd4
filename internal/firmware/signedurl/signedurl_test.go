package signedurl

import (
	"errors"
	"net/url"
	"strings"
	"testing"
	"time"
)

const sha = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"

func split(t testing.TB, u string) (string, string) {
	p, q, _ := strings.Cut(strings.TrimPrefix(u, PathPrefix), "?")
	return p, q
}

func TestVerify(t *testing.T) {
	s, err := New([]byte(strings.Repeat("k", 32)))
	if err != nil {
		t.Fatal(err)
	}
	other, _ := New([]byte(strings.Repeat("o", 32)))
	now := time.Unix(1_800_000_000, 0)
	good := s.Sign(sha, "ms/acc/gw-1", now.Add(DefaultValidity))
	alter := func(f func(url.Values)) string {
		p, q := split(t, good)
		v, _ := url.ParseQuery(q)
		f(v)
		return PathPrefix + p + "?" + v.Encode()
	}
	for _, c := range []struct {
		name, url, requester string
		at                   time.Time
		want                 error
	}{
		{"good", good, "ms/acc/gw-1", now, nil},
		{"another gateway", good, "ms/acc/gw-2", now, ErrWrongGateway},
		{"expired", good, "ms/acc/gw-1", now.Add(DefaultValidity), ErrExpired},
		{"gateway altered", alter(func(v url.Values) { v.Set("gw", "ms/acc/gw-2") }), "ms/acc/gw-2", now, ErrBadSignature},
		{"expiry extended", alter(func(v url.Values) { v.Set("exp", "9999999999") }), "ms/acc/gw-1", now, ErrBadSignature},
		{"other artifact", PathPrefix + strings.Repeat("0", 64) + "?" + strings.SplitN(good, "?", 2)[1], "ms/acc/gw-1", now, ErrBadSignature},
		{"other platform", other.Sign(sha, "ms/acc/gw-1", now.Add(time.Hour)), "ms/acc/gw-1", now, ErrBadSignature},
		{"extra parameter", alter(func(v url.Values) { v.Set("x", "1") }), "ms/acc/gw-1", now, ErrMalformed},
		{"duplicate gw", alter(func(v url.Values) { v.Add("gw", "ms/acc/gw-1") }), "ms/acc/gw-1", now, ErrMalformed},
		{"no sig", alter(func(v url.Values) { v.Del("sig") }), "ms/acc/gw-1", now, ErrMalformed},
		{"short sig", alter(func(v url.Values) { v.Set("sig", "AAAA") }), "ms/acc/gw-1", now, ErrMalformed},
		{"exp with sign", alter(func(v url.Values) { v.Set("exp", "+1800000000") }), "ms/acc/gw-1", now, ErrMalformed},
		{"gw traversal", alter(func(v url.Values) { v.Set("gw", "../acc/gw") }), "ms/acc/gw-1", now, ErrMalformed},
		{"bad hash", PathPrefix + "ABC?" + strings.SplitN(good, "?", 2)[1], "ms/acc/gw-1", now, ErrMalformed},
	} {
		t.Run(c.name, func(t *testing.T) {
			p, q := split(t, c.url)
			parsed, err := Parse(p, q)
			if err == nil {
				err = s.Verify(parsed, c.requester, c.at)
			}
			if !errors.Is(err, c.want) && !(c.want == nil && err == nil) {
				t.Fatalf("got %v, want %v", err, c.want)
			}
		})
	}
}

// FuzzParse: no input panics, and whatever parses re-signs to itself only
// with the right key.
func FuzzParse(f *testing.F) {
	s, _ := New([]byte(strings.Repeat("k", 32)))
	p0, q0 := split(f, s.Sign(sha, "ms/acc/gw-1", time.Unix(1_900_000_000, 0)))
	f.Add(p0, q0)
	f.Add(sha, "gw=a%2Fb%2Fc&exp=1&sig=")
	f.Add("", "")
	f.Add(sha, "gw=a/b/c&exp=1&exp=2&sig=x")
	f.Fuzz(func(t *testing.T, p, q string) {
		parsed, err := Parse(p, q)
		if err != nil {
			return
		}
		if err := s.Verify(parsed, parsed.Gateway, time.Unix(0, 0)); err == nil {
			if s.Sign(parsed.SHA256, parsed.Gateway, parsed.Expires) == "" {
				t.Fatal("empty")
			}
		}
	})
}
