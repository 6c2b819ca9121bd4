package main

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/fieldtrust/fieldtrust/internal/interoptest"
)

// pahoGrants is the role the Paho suites run with: everything, except
// exactly test/nosubscribe (the suites' "subscribe failure" topic).
const pahoGrants = `{"version": 1, "roles": {"interop": [
  {"filter": "#", "read": true, "write": true},
  {"filter": "test/nosubscribe", "read": true, "deny": true}]}}`

// pahoExpected are the suite tests that fail against fieldtrust on purpose,
// each with its reason (docs/broker.md, "Eclipse Paho interoperability").
// A listed test that passes fails this test too, so the list stays true.
var pahoExpected = map[string]string{
	"client_test.py test_keepalive": "the suite's will topic /TopicA has an empty level, " +
		"which TACS refuses everywhere (policy); the connection with that will is refused",
	"client_test5.py test_keepalive": "the suite's will topic /TopicA has an empty level, " +
		"which TACS refuses everywhere (policy); the connection with that will is refused",
	"client_test5.py test_subscribe_failure": "the suite's client asserts [MQTT5-3.9.3-2] " +
		"\"return code in QoS must be 0, 1, 2 or 0x80\"; fieldtrust answers 0x87 Not authorized, " +
		"a SUBACK code MQTT 5 defines (§3.9.3) for exactly this",
	"client_test.py test_dollar_topics": "publishing to $-topics is refused (they belong to the " +
		"broker, MQTT §4.7.2), and MQTT 3.1.1 has no negative acknowledgement, so the connection " +
		"is closed (§3.3.5); the test says of itself it 'will not work and should be omitted' then",
}

// pahoRacy are suite tests whose outcome depends on timing between two of
// the suite's own connections; either outcome is accepted.
var pahoRacy = map[string]string{
	"client_test5.py test_subscribe_options": "after bclient.subscribe the suite waits for " +
		"aclient's SUBACK (callback.subscribeds, client_test5.py line 549), not bclient's, then " +
		"publishes: bclient's subscription may not be in place yet on a broker that serves " +
		"connections in parallel",
	"client_test5.py test_request_response": "the same wait on the other client's SUBACK " +
		"(callback.subscribeds after bclient.subscribe), then aclient publishes the request",
}

// pahoWrapper runs one suite module from the shared folder against a given
// port: the suites read host and port from module globals their __main__
// block sets, and the 3.1.1 one hands its command line to unittest, so
// they are imported and configured rather than run as scripts. Nothing of
// theirs is copied.
const pahoWrapper = `
import importlib, sys, unittest
name, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
suite = importlib.import_module(name)
suite.host, suite.port = host, port
if name == "client_test5":
    suite.topic_prefix = "client_test5/"
    suite.topics = [suite.topic_prefix + t for t in ["TopicA", "TopicA/B", "Topic/C", "TopicA/C", "/TopicA"]]
    suite.wildtopics = [suite.topic_prefix + t for t in ["TopicA/+", "+/C", "#", "/#", "/+", "+/+", "TopicA/#"]]
else:
    suite.topics = ("TopicA", "TopicA/B", "Topic/C", "TopicA/C", "/TopicA")
    suite.wildtopics = ("TopicA/+", "+/C", "#", "/#", "/+", "+/+", "TopicA/#")
suite.nosubscribe_topics = ("test/nosubscribe",)
unittest.main(module=suite, argv=[name, "-v"] + ["Test." + t for t in sys.argv[4:]], exit=True)
`

// TestPahoInterop runs the Eclipse Paho interoperability suites (MQTT 3.1.1
// client_test.py and MQTT 5 client_test5.py, from the shared interop
// folder) against 'fieldtrust up', through stunnel (the suites speak plain
// TCP) with a service identity whose role is refused exactly
// test/nosubscribe (a grants file). Every test must pass or be listed in
// pahoExpected.
func TestPahoInterop(t *testing.T) {
	suites := interoptest.Need(t, filepath.Join("paho", "interoperability"))
	python, stunnel := need(t, "python3"), need(t, "stunnel4", "stunnel")
	data := t.TempDir()
	if err := os.WriteFile(filepath.Join(data, "grants.json"), []byte(pahoGrants), 0o600); err != nil {
		t.Fatal(err)
	}
	creds := filepath.Join(data, "interop")
	if out, err := exec.Command(binary, "pki", "issue", "--data", data, "--service", "interop", "--role", "interop", "--out", creds).CombinedOutput(); err != nil {
		t.Fatalf("pki issue: %v\n%s", err, out)
	}
	httpAddr, mqttAddr := freeAddr(t), freeAddr(t)
	startUp(t, data, httpAddr, mqttAddr)

	proxy := freeAddr(t)
	conf := filepath.Join(data, "stunnel.conf")
	if err := os.WriteFile(conf, []byte(fmt.Sprintf(`foreground = yes
pid =
[mqtt]
client = yes
accept = %s
connect = %s
cert = %s
key = %s
CAfile = %s
verifyChain = yes
checkIP = 127.0.0.1
sslVersionMin = TLSv1.2
`, proxy, mqttAddr, filepath.Join(creds, "cert.pem"), filepath.Join(creds, "key.pem"), filepath.Join(creds, "ca.pem"))), 0o600); err != nil {
		t.Fatal(err)
	}
	st := exec.Command(stunnel, conf)
	st.Stdout, st.Stderr = os.Stderr, os.Stderr
	if testing.Verbose() {
		st.Stdout, st.Stderr = nil, nil
	}
	if err := st.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = st.Process.Kill(); _ = st.Wait() })
	waitListening(t, proxy)
	host, port, _ := net.SplitHostPort(proxy)

	// run runs a suite module, or only the named tests of it, and returns
	// its verdicts.
	run := func(suite string, tests ...string) map[string]string {
		cmd := exec.Command(python, append([]string{"-c", pahoWrapper, suite, host, port}, tests...)...)
		cmd.Dir = suites
		cmd.Env = append(os.Environ(), "PYTHONDONTWRITEBYTECODE=1") // the shared folder is read-only
		done := make(chan struct{})
		var out []byte
		var err error
		go func() { out, err = cmd.CombinedOutput(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Minute):
			_ = cmd.Process.Kill()
			<-done
			t.Fatalf("%s.py did not finish within 10 minutes:\n%s", suite, out)
		}
		got := parseUnittest(string(out))
		if len(got) == 0 || !strings.Contains(string(out), "\nRan ") {
			t.Fatalf("%s.py ran no test (%v):\n%s", suite, err, out)
		}
		t.Logf("%s.py %v:\n%s", suite, tests, out)
		return got
	}
	results := map[string]string{}
	for _, suite := range []string{"client_test", "client_test5"} {
		got := run(suite)
		// The suites synchronise with fixed sleeps (time.sleep(1) and
		// waits of a few seconds), so on a loaded machine a test can miss
		// its window. An unlisted failure is run once more on its own;
		// it counts only if it passes then, and the retry is logged.
		for name, r := range got {
			n := suite + ".py " + name
			_, listed := pahoExpected[n]
			_, racy := pahoRacy[n]
			if r != "ok" && !listed && !racy {
				if again := run(suite, name)[name]; again == "ok" {
					t.Logf("%s: %s on the full run, passed when run again alone", n, r)
					r = again
				}
			}
			results[n] = r
		}
	}
	var names []string
	for n := range results {
		names = append(names, n)
	}
	sort.Strings(names)
	passed := 0
	for _, n := range names {
		r := results[n]
		reason, expected := pahoExpected[n]
		if _, racy := pahoRacy[n]; racy {
			if r == "ok" {
				passed++
			}
			continue
		}
		switch {
		case r == "ok" && expected:
			t.Errorf("%s passes now; remove it from pahoExpected (%s)", n, reason)
		case r == "ok":
			passed++
		case !expected:
			t.Errorf("%s: %s", n, r)
		}
	}
	for n := range pahoExpected {
		if _, ran := results[n]; !ran {
			t.Errorf("%s is listed as expected to fail but did not run", n)
		}
	}
	t.Logf("Paho suites: %d of %d tests pass; %d listed as expected failures", passed, len(results), len(pahoExpected))
}

var (
	// "test_x (module.Class.test_x) ... ok", or with a docstring, whose
	// first line follows on the next line.
	unittestRan    = regexp.MustCompile(`(?m)^(test\w+) \([\w.]+\)`)
	unittestFailed = regexp.MustCompile(`(?m)^(FAIL|ERROR): (test\w+) \(`)
)

// parseUnittest reads `unittest -v` output: test name → ok, FAIL or
// ERROR. The suites print between a test's name and its verdict, so the
// verdicts come from unittest's FAIL:/ERROR: sections.
func parseUnittest(out string) map[string]string {
	got := map[string]string{}
	for _, m := range unittestRan.FindAllStringSubmatch(out, -1) {
		got[m[1]] = "ok"
	}
	for _, m := range unittestFailed.FindAllStringSubmatch(out, -1) {
		got[m[2]] = m[1]
	}
	return got
}

// need finds a program, or skips (fails in CI).
func need(t *testing.T, names ...string) string {
	t.Helper()
	for _, n := range names {
		if p, err := exec.LookPath(n); err == nil {
			return p
		}
	}
	if os.Getenv("CI") != "" {
		t.Fatalf("%s not found: scripts/deps.sh installs it", names[0])
	}
	t.Skipf("%s not found: scripts/deps.sh installs it", names[0])
	return ""
}

// waitListening polls until addr accepts connections (bounded).
func waitListening(t *testing.T, addr string) {
	t.Helper()
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if c, err := net.Dial("tcp", addr); err == nil {
			_ = c.Close()
			return
		}
	}
	t.Fatalf("nothing listens on %s", addr)
}
