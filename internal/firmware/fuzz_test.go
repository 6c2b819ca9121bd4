package firmware

import (
	"testing"
)

// FuzzParseNotice: no input panics; what parses is consistent.
func FuzzParseNotice(f *testing.F) {
	f.Add([]byte(`{"campaign":"c1","action":"install","gateway":"a/b/c","target":"pump/1.0.0","device_type":"pump","version":"1.0.0","url":"/fw/x","issued":"2026-01-01T00:00:00Z"}`))
	f.Add([]byte(`{"campaign":"c1","action":"abort","gateway":"a/b/c","target":"","device_type":"","version":"","url":"","issued":"2026-01-01T00:00:00Z"}`))
	f.Add([]byte(`{"action":"install"}`))
	f.Add([]byte(`{}{}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		n, err := ParseNotice(b)
		if err != nil {
			return
		}
		if n.Action == ActionInstall && (n.Target != TargetName(n.DeviceType, n.Version) || CheckVersion(n.Version) != nil) {
			t.Fatalf("inconsistent notice accepted: %+v", n)
		}
	})
}

// FuzzParseStatus: no input panics; accepted states are known.
func FuzzParseStatus(f *testing.F) {
	f.Add([]byte(`{"campaign":"c1","state":"installed","version":"1.0.0","time":"2026-01-01T00:00:00Z"}`))
	f.Add([]byte(`{"state":"","refused":true,"reason":"x","digest":"ab","count":3,"time":"2026-01-01T00:00:00Z"}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		s, err := ParseStatus(b)
		if err == nil && Rank(s.State) < 0 && !s.Refused {
			t.Fatalf("unknown state accepted: %+v", s)
		}
	})
}

func TestVersions(t *testing.T) {
	for _, c := range []struct {
		v  string
		ok bool
	}{{"1.0.0", true}, {"2.4.1", true}, {"1.0.0-rc.1", true}, {"v1.0.0", false}, {"1.0", false}, {"1.0.0+build", false}, {"", false}, {"01.0.0", false}} {
		if err := CheckVersion(c.v); (err == nil) != c.ok {
			t.Errorf("CheckVersion(%q) = %v", c.v, err)
		}
	}
	for _, c := range []struct {
		a, b string
		want int
	}{{"1.0.0", "1.0.1", -1}, {"1.10.0", "1.9.0", 1}, {"1.0.0-rc.1", "1.0.0", -1}, {"", "0.0.1", -1}, {"2.0.0", "2.0.0", 0}} {
		if got := Compare(c.a, c.b); got != c.want {
			t.Errorf("Compare(%q, %q) = %d", c.a, c.b, got)
		}
	}
}
