package rules

import (
	"errors"
	"strings"
	"testing"
	"time"
)

const issueExample = `version: 1
name: pump-overheat
scope: acme-pumps            # an identity path, or "*" for the vendor's whole fleet
device_type: pump            # optional
when: values.temperature > 90.0
for: 2m                      # optional
clear: values.temperature < 85.0   # optional
severity: critical
actions:
  - email: [service@acme.example]
  - task: {title: "Investigate {{.Device}}", assignee: tech-1}
  - webhook: {url: "https://ops.example/hook", secret: ops-hook}
`

// TestLoadIssueExample: the rule file of the issue loads as written.
func TestLoadIssueExample(t *testing.T) {
	r, err := Load("pump.yaml", []byte(issueExample))
	if err != nil {
		t.Fatal(err)
	}
	if r.Name != "pump-overheat" || r.Scope != "acme-pumps" || r.DeviceType != "pump" || r.For != 2*time.Minute || r.Severity != "critical" ||
		len(r.Actions) != 3 || r.Actions[0].To[0] != "service@acme.example" || r.Actions[1].Assignee != "tech-1" || r.Actions[2].Secret != "ops-hook" ||
		r.clear == nil || r.RateLimit != DefaultRate {
		t.Fatalf("loaded %+v", r.File)
	}
	// The same rule as JSON.
	js := `{"version": 1, "name": "pump-overheat", "scope": "acme-pumps", "when": "values.temperature > 90.0",
	 "actions": [{"email": ["service@acme.example"]}, {"mqtt": {}}]}`
	if _, err := Load("pump.json", []byte(js)); err != nil {
		t.Fatal(err)
	}
}

// TestParseErrors: every refusal names the file, line and column of
// the problem (table-driven: the rule files a user gets wrong).
func TestParseErrors(t *testing.T) {
	base := "version: 1\nname: r\nscope: ms\n"
	act := "actions:\n  - mqtt: {}\n"
	for _, tc := range []struct {
		name, src, want string
	}{
		{"unknown field", base + "when: true\n" + act + "colour: red\n", "x.yaml:7:1: rule: unknown field \"colour\""},
		{"typo in a nested field", base + "when: true\nactions:\n  - task: {titel: x}\n", "x.yaml:6:12: task: unknown field \"titel\""},
		{"duplicate key", base + "when: true\nwhen: false\n" + act, "x.yaml:5:1: rule: field \"when\" given twice"},
		{"no version", "name: r\nscope: ms\nwhen: true\n" + act, "x.yaml:1:1: rule: the field version is required"},
		{"version 2", "version: 2\nname: r\nscope: ms\nwhen: true\n" + act, "x.yaml:1:10: version: this platform reads rule files of version 1"},
		{"version as text", "version: \"1\"\nname: r\nscope: ms\nwhen: true\n" + act, "x.yaml:1:10: version"},
		{"condition does not compile", base + "when: values.temperature >\n" + act, "x.yaml:4:"},
		{"condition column", base + "when: values.temperature > > 3\n" + act, "x.yaml:4:28: when: "},
		{"condition not bool", base + "when: values.temperature + 1.0\n" + act, "x.yaml:4:7: when: the condition is of type double"},
		{"unknown variable", base + "when: temperature > 3.0\n" + act, "x.yaml:4:7: when: undeclared reference to 'temperature'"},
		{"block condition", base + "when: |\n  values.a > 1.0 &&\n    values.b > > 1\n" + act, "x.yaml:6:16: when:"},
		{"quoted condition", base + "when: \"values.a >> 1\"\n" + act, "x.yaml:4:18: when:"},
		{"two conditions", base + "when: true\nsilent: 10m\n" + act, "x.yaml:5:1: rule: when and silent: give one condition per rule"},
		{"no condition", base + act, "a condition is required"},
		{"bad duration", base + "when: true\nfor: 10 minutes\n" + act, "x.yaml:5:6: for: \"10 minutes\""},
		{"bad scope", "version: 1\nname: r\nscope: a/b/c/d\nwhen: true\n" + act, "x.yaml:3:8: scope \"a/b/c/d\""},
		{"scope traversal", "version: 1\nname: r\nscope: ms/..\nwhen: true\n" + act, "x.yaml:3:8: scope"},
		{"bad severity", base + "when: true\nseverity: panic\n" + act, "x.yaml:5:11: severity \"panic\""},
		{"bad email", base + "when: true\nactions:\n  - email: [\"Bob <bob@x.example>\"]\n", "x.yaml:6:12: email: \"Bob <bob@x.example>\" is not a mail address"},
		{"header injection", base + "when: true\nactions:\n  - email: [\"a@x.example\\r\\nBcc: all@x.example\"]\n", "is not a mail address"},
		{"plain webhook", base + "when: true\nactions:\n  - webhook: {url: \"http://x.example/\", secret: s}\n", "x.yaml:6:20: webhook.url"},
		{"unsigned webhook", base + "when: true\nactions:\n  - webhook: {url: \"https://x.example/\"}\n", "url and secret are required"},
		{"unknown action", base + "when: true\nactions:\n  - sms: [\"+41\"]\n", "x.yaml:6:5: action \"sms\""},
		{"no actions", base + "when: true\nactions: []\n", "x.yaml:5:10: actions"},
		{"template function", base + "when: true\nactions:\n  - task: {title: '{{printf \"%0999999999d\" 1}}'}\n", "x.yaml:6:19: task.title"},
		{"template field", base + "when: true\nactions:\n  - task: {title: '{{.Password}}'}\n", "x.yaml:6:19: task.title"},
		{"alias", base + "when: &w true\nclear: *w\n" + act, "anchors and aliases are not allowed"},
		{"each with for", base + "mode: each\nwhen: true\nfor: 1m\n" + act, "x.yaml:6:1: for: not with mode each"},
		{"clear without when", base + "silent: 10m\nclear: true\n" + act, "x.yaml:5:1: clear: only with a when condition"},
		{"integrity kind", base + "integrity: [gaps]\n" + act, "x.yaml:4:12: integrity: \"gaps\""},
		{"overdue without limit", base + "overdue: {channel: hours}\n" + act, "x.yaml:4:10: overdue: give either limit"},
		{"bad rate", base + "when: true\nrate_limit: lots\n" + act, "x.yaml:5:13: rate_limit"},
		{"two documents", base + "when: true\n" + act + "---\nname: x\n", "one document"},
		{"yaml syntax", base + "when: [true\n", "x.yaml:"},
		{"not a mapping", "- a\n- b\n", "x.yaml:1:1: rule: want a mapping"},
		{"json unknown field", `{"version": 1, "name": "r", "scope": "ms", "when": "true", "actions": [{"mqtt": {}}],` + "\n" + `"extra": 1}`, "x.yaml:2:1: rule: unknown field \"extra\""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Load("x.yaml", []byte(tc.src))
			var pe *Error
			if err == nil || !errors.As(err, &pe) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Load = %v, want an *Error containing %q", err, tc.want)
			}
		})
	}
}

// TestParseDuration covers the duration syntax of for, silent and due.
func TestParseDuration(t *testing.T) {
	for s, want := range map[string]time.Duration{"90s": 90 * time.Second, "10m": 10 * time.Minute, "1h30m": 90 * time.Minute, "7d": 7 * 24 * time.Hour} {
		if got, err := ParseDuration(s); err != nil || got != want {
			t.Errorf("ParseDuration(%q) = %v, %v", s, got, err)
		}
	}
	for _, s := range []string{"", "0s", "-1m", "400d", "1y", "d"} {
		if _, err := ParseDuration(s); err == nil {
			t.Errorf("ParseDuration(%q) accepted", s)
		}
	}
}

// FuzzLoad: no rule file makes Load panic or hang, and every refusal is
// an *Error.
func FuzzLoad(f *testing.F) {
	f.Add([]byte(issueExample))
	f.Add([]byte("version: 1\nname: r\nscope: '*'\nsilent: 10m\nactions:\n  - mqtt: {}\n"))
	f.Add([]byte("version: 1\nname: r\nscope: ms\noverdue: {channel: hours, limit: 5000}\nactions:\n  - task: {title: x, due: 7d}\n"))
	f.Add([]byte(`{"version": 1, "name": "r", "scope": "ms", "when": "values.a > prev.a", "actions": [{"email": {"to": ["a@b.example"], "subject": "{{.Device}}"}}]}`))
	f.Add([]byte("version: 1\nname: r\nscope: ms\noverdue: {calibration: true}\nfor: 1h\nactions:\n  - mqtt: {}\n"))
	f.Add([]byte("version: 1\nname: r\nscope: ms\nwhen: 'has(calibration.due) && at >= calibration.due'\nactions:\n  - mqtt: {}\n"))
	f.Add([]byte("a: &a [*a, *a]\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		_, err := Load("f.yaml", data)
		var pe *Error
		if err != nil && !errors.As(err, &pe) {
			t.Fatalf("error %v (%T) is not an *Error", err, err)
		}
	})
}
