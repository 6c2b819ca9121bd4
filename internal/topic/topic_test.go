package topic

import (
	"errors"
	"strings"
	"testing"

	"github.com/fieldtrust/fieldtrust/internal/tacs"
)

func TestParse(t *testing.T) {
	tests := []struct {
		topic   string
		path    string
		ch      Channel
		wantErr string // substring of the error; "" for success
	}{
		{"ms-1/acc-1/gw-1/snapshots", "ms-1/acc-1/gw-1", Snapshots, ""},
		{"ms-1/acc-1/gw-1/status", "ms-1/acc-1/gw-1", Status, ""},
		{"ms-1/acc-1/gw-1/events", "ms-1/acc-1/gw-1", Events, ""},
		{"ms-1/acc-1/gw-1/firmware", "ms-1/acc-1/gw-1", Firmware, ""},
		{"ms-1/acc-1/gw-1/firmware/status", "ms-1/acc-1/gw-1", FirmwareStatus, ""},
		{"ms-1/acc-1/gw-1/commands", "ms-1/acc-1/gw-1", Commands, ""},
		{"ms-1/acc-1/gw-1/commands/result", "ms-1/acc-1/gw-1", CommandResults, ""},
		{"A.b_c-9/x/y/snapshots", "A.b_c-9/x/y", Snapshots, ""},

		{"", "", "", "empty_level"},
		{"ms-1/acc-1/snapshots", "", "", "fewer than 4 levels"},
		{"ms-1/acc-1/gw-1", "", "", "fewer than 4 levels"},
		{"ms-1/acc-1/gw-1/", "", "", "empty_level"},
		{"ms-1//gw-1/snapshots", "", "", "empty_level"},
		{"/ms-1/acc-1/gw-1/snapshots", "", "", "empty_level"},
		{"ms-1/acc-1/gw-1/other", "", "", `unknown channel "other"`},
		{"ms-1/acc-1/gw-1/snapshots/x", "", "", `unknown channel "snapshots/x"`},
		{"ms-1/acc-1/gw-1/commands/result/x", "", "", "unknown channel"},
		{"ms-1/acc-1/gw-1/Snapshots", "", "", "unknown channel"},
		{"ms-1/acc-1/+/snapshots", "", "", "wildcard_in_topic"},
		{"ms-1/acc-1/#", "", "", "wildcard_in_topic"},
		{"ms-1/acc 1/gw-1/snapshots", "", "", "identity path"},
		{"ms-1/../gw-1/snapshots", "", "", "identity path"},
		{"ms-1/./gw-1/snapshots", "", "", "identity path"},
		{"$SYS/acc-1/gw-1/snapshots", "", "", "identity path"},
		{"$share/g/gw-1/snapshots", "", "", "identity path"},
		{"pki/crl/transport", "", "", "fewer than 4 levels"},
		{"pki/crl/transport/snapshots", "", "", "reserved"},
		{"ms-1/acc-1/gw-1/snap\x00shots", "", "", "bad_encoding"},
		{"ms-1/acc-1/gw-\xff/snapshots", "", "", "bad_encoding"},
		{strings.Repeat("a", 65) + "/acc-1/gw-1/snapshots", "", "", "identity path"},
		{"ms-1/acc-1/gw-1/" + strings.Repeat("x/", 40) + "snapshots", "", "", "too_deep"},
	}
	for _, tt := range tests {
		path, ch, err := Parse(tt.topic)
		if tt.wantErr == "" {
			if err != nil || path != tt.path || ch != tt.ch {
				t.Errorf("Parse(%q) = %q, %q, %v; want %q, %q", tt.topic, path, ch, err, tt.path, tt.ch)
			}
			if got := Of(path, ch); got != tt.topic {
				t.Errorf("Of(Parse(%q)) = %q", tt.topic, got)
			}
			continue
		}
		if err == nil || !strings.Contains(err.Error(), tt.wantErr) || !errors.Is(err, ErrNotInScheme) {
			t.Errorf("Parse(%q) = %q, %q, %v; want an ErrNotInScheme saying %q", tt.topic, path, ch, err, tt.wantErr)
		}
		if path != "" || ch != "" {
			t.Errorf("Parse(%q) returned %q, %q with its error", tt.topic, path, ch)
		}
	}
}

func TestParseChannel(t *testing.T) {
	if p, err := ParseChannel("ms/acc/gw/snapshots", Snapshots); err != nil || p != "ms/acc/gw" {
		t.Fatalf("ParseChannel = %q, %v", p, err)
	}
	if _, err := ParseChannel("ms/acc/gw/status", Snapshots); err == nil || !strings.Contains(err.Error(), "status channel, not snapshots") {
		t.Fatalf("ParseChannel of the wrong channel: %v", err)
	}
	if _, err := ParseChannel("ms/acc/snapshots", Snapshots); !errors.Is(err, ErrNotInScheme) {
		t.Fatalf("ParseChannel of a short topic: %v", err)
	}
}

// TestBuilders: the builders spell the scheme of docs/architecture.md.
func TestBuilders(t *testing.T) {
	for got, want := range map[string]string{
		SnapshotsOf("m/a/g"):      "m/a/g/snapshots",
		StatusOf("m/a/g"):         "m/a/g/status",
		CommandsOf("m/a/g"):       "m/a/g/commands",
		CommandResultsOf("m/a/g"): "m/a/g/commands/result",
		Of("m/a/+", Status):       "m/a/+/status",
		Shared("g", AllSnapshots): "$share/g/+/+/+/snapshots",
		Ingest:                    "$share/ingest/+/+/+/snapshots",
	} {
		if got != want {
			t.Errorf("%q, want %q", got, want)
		}
	}
}

// TestSchemeAgreesWithTACS: the default grants, the CRL read rule and the
// reserved first level of package tacs are the ones this scheme needs.
// tacs cannot import this package (it validates for it), so this test is
// what keeps the two in step.
func TestSchemeAgreesWithTACS(t *testing.T) {
	g := tacs.DefaultGrants()
	gw := tacs.Account("ms-1/acc-1/gw-1")
	ingest := tacs.ServiceSubject("ingest", tacs.RoleSnapshotReader)
	fw := tacs.ServiceSubject("fw", tacs.RoleFirmwareWriter)
	admin := tacs.ServiceSubject("ops", tacs.RoleAdmin)
	tests := []struct {
		name  string
		subj  tacs.Subject
		a     tacs.Action
		topic string
		want  bool
	}{
		{"ingest's shared subscription", ingest, tacs.Subscribe, Ingest, true},
		{"ingest reads all snapshots", ingest, tacs.Subscribe, AllSnapshots, true},
		{"ingest reads no status", ingest, tacs.Subscribe, StatusOf("ms-1/acc-1/gw-1"), false},
		{"ingest reads not everything", ingest, tacs.Subscribe, Everything, false},
		{"firmware writer writes firmware", fw, tacs.Publish, Of("ms-1/acc-1/gw-1", Firmware), true},
		{"firmware writer writes no commands", fw, tacs.Publish, CommandsOf("ms-1/acc-1/gw-1"), false},
		{"admin reads everything", admin, tacs.Subscribe, Everything, true},
		{"admin reads the system topics", admin, tacs.Subscribe, System, true},
		{"ingest reads no system topics", ingest, tacs.Subscribe, System, false},
		{"admin sends commands", admin, tacs.Publish, CommandsOf("ms-1/acc-1/gw-1"), true},
		{"gateway reads transport CRLs", gw, tacs.Subscribe, CRLTransport, true},
		{"gateway reads e2e CRLs", gw, tacs.Subscribe, CRLE2E, true},
		{"gateway reads all CRLs", gw, tacs.Subscribe, CRLs, true},
		{"gateway writes no CRL", gw, tacs.Publish, CRLTransport, false},
		{"reserved master owns nothing", tacs.Account(Reserved), tacs.Subscribe, CRLs, false},
	}
	for _, ch := range channels {
		tests = append(tests, struct {
			name  string
			subj  tacs.Subject
			a     tacs.Action
			topic string
			want  bool
		}{"gateway writes its " + string(ch), gw, tacs.Publish, Of("ms-1/acc-1/gw-1", ch), true})
	}
	for _, tt := range tests {
		if d := tacs.Authorize(g, tt.subj, tt.a, tt.topic); d.Allowed != tt.want {
			t.Errorf("%s: %s %s %s: %+v, want allowed=%v", tt.name, tt.subj, tt.a, tt.topic, d, tt.want)
		}
	}
	if r := g[tacs.RoleSnapshotReader]; len(r) != 1 || r[0].Filter != AllSnapshots {
		t.Errorf("snapshot-reader grants %+v; the scheme's snapshots filter is %s", r, AllSnapshots)
	}
	if r := g[tacs.RoleFirmwareWriter]; len(r) != 1 || r[0].Filter != AllFirmware {
		t.Errorf("firmware-writer grants %+v; the scheme's firmware filter is %s", r, AllFirmware)
	}
}

// FuzzParse: Parse never panics, accepts only what tacs accepts as a
// topic, and what it accepts, Of builds back exactly.
func FuzzParse(f *testing.F) {
	for _, s := range []string{"ms-1/acc-1/gw-1/snapshots", "ms-1/acc-1/gw-1/commands/result", "a/b/c/firmware/status",
		"pki/crl/transport", "a/b/c/d/e", "$share/g/+/+/+/snapshots", "a/b//snapshots", "a/../c/status", "a/b/c/\x00"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		path, ch, err := Parse(s)
		if err != nil {
			if !errors.Is(err, ErrNotInScheme) {
				t.Fatalf("Parse(%q): error %v does not wrap ErrNotInScheme", s, err)
			}
			return
		}
		if Of(path, ch) != s {
			t.Fatalf("Parse(%q) = %q, %q; Of gives %q", s, path, ch, Of(path, ch))
		}
		if tacs.ValidateTopic(s) != nil || tacs.Account(path).Validate() != nil || strings.Count(path, "/") != PathElements-1 {
			t.Fatalf("Parse(%q) accepted a topic tacs refuses", s)
		}
		if !tacs.Authorize(tacs.DefaultGrants(), tacs.Account(path), tacs.Publish, s).Allowed {
			t.Fatalf("the owner of %q may not publish on it", s)
		}
	})
}
