package rules_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
	standardwebhooks "github.com/standard-webhooks/standard-webhooks/libraries/go"

	"github.com/fieldtrust/fieldtrust/internal/demo"
	"github.com/fieldtrust/fieldtrust/internal/gateway"
	"github.com/fieldtrust/fieldtrust/internal/mail"
	"github.com/fieldtrust/fieldtrust/internal/mailcatcher"
	"github.com/fieldtrust/fieldtrust/internal/outbox"
	"github.com/fieldtrust/fieldtrust/internal/platform"
	"github.com/fieldtrust/fieldtrust/internal/platform/platformtest"
	"github.com/fieldtrust/fieldtrust/internal/rules"
	"github.com/fieldtrust/fieldtrust/internal/secretbox"
	"github.com/fieldtrust/fieldtrust/internal/snapshot"
	"github.com/fieldtrust/fieldtrust/internal/store"
	"github.com/fieldtrust/fieldtrust/internal/tacs"
	"github.com/fieldtrust/fieldtrust/internal/topic"
	"github.com/fieldtrust/fieldtrust/internal/web"
	"github.com/fieldtrust/fieldtrust/internal/webhook"
)

// The thesis's rules, written as a customer's vendor would.
const (
	normalRule = `version: 1
name: normal-report
scope: acme-pumps/plant-berlin/gw-1
device_type: pump
mode: each
when: values.temp_bearing <= 90.0 && values.operating_hours < 5000.0
severity: info
actions:
  - email: {to: [service-list@acme.example, plant-manager@acme.example], subject: "Pump report {{.Device}}"}
`
	abnormalRule = `version: 1
name: bearing-overheat
scope: acme-pumps
device_type: pump
when: values.temp_bearing > 90.0
clear: values.temp_bearing < 85.0
severity: critical
actions:
  - webhook: {url: "%s", secret: sms-gateway}
  - task: {title: "Investigate {{.Device}}", assignee: tech-1, due: 4h}
  - email: [tech-1@acme.example]
  - mqtt: {}
`
	overdueRule = `version: 1
name: service-due
scope: acme-pumps
overdue: {channel: operating_hours, limit: 5000}
severity: warning
actions:
  - email: {to: [vendor-tech@vendor.example], subject: "Please schedule an appointment with the customer: {{.Device}}"}
`
	silentRule = `version: 1
name: gateway-silent
scope: acme-pumps/plant-berlin/gw-2
silent: 2s
severity: critical
actions:
  - email: [oncall@acme.example]
  - mqtt: {}
`
	// A customer's own rule over its own fleet: it must never see acme's.
	globexRule = `version: 1
name: everything
scope: globex-labs
mode: each
when: "true"
actions:
  - mqtt: {}
`
)

// client speaks HTTPS to the platform as an identity.
type client struct {
	t    *testing.T
	env  *platformtest.Env
	http *http.Client
}

func newClient(t *testing.T, env *platformtest.Env, id platformtest.Identity) *client {
	return &client{t: t, env: env, http: &http.Client{Timeout: 30 * time.Second,
		Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: env.Roots, Certificates: []tls.Certificate{id.TLS}}}}}
}

func (c *client) do(method, path string, body []byte, out any) int {
	c.t.Helper()
	req, _ := http.NewRequest(method, "https://"+c.env.HTTPAddr+path, bytes.NewReader(body))
	resp, err := c.http.Do(req)
	if err != nil {
		c.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if out != nil && resp.StatusCode < 300 {
		if err := json.Unmarshal(b, out); err != nil {
			c.t.Fatalf("%s %s: %v: %s", method, path, err, b)
		}
	}
	return resp.StatusCode
}

// eventually polls cond until it holds or the deadline passes.
func eventually(t *testing.T, within time.Duration, what string, cond func() bool) time.Duration {
	t.Helper()
	start := time.Now()
	for !cond() {
		if time.Since(start) > within {
			t.Fatalf("%s: not within %s", what, within)
		}
		time.Sleep(20 * time.Millisecond)
	}
	return time.Since(start)
}

type hookCall struct {
	body []byte
	h    http.Header
	at   time.Time
}

// TestThesisWorkflow runs the design thesis's three-state workflow end to
// end through real gateways that onboard over EST: a normal snapshot
// mails the list; an abnormal value raises an alarm, a task, a signed
// webhook call (verified with the Standard Webhooks reference library)
// and an MQTT event within seconds; an overdue counter asks the vendor
// technician; acknowledging and clearing work; a killed gateway is
// reported silent; and a customer's rule never sees another's devices.
func TestThesisWorkflow(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()

	// A real SMTP server with STARTTLS and authentication.
	srvTLS, mailRoots, err := mailcatcher.SelfSigned("127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	catcher, err := mailcatcher.Start(mailcatcher.Config{Addr: "127.0.0.1:0", TLS: srvTLS, User: "alerts", Password: "pw-" + t.Name()})
	if err != nil {
		t.Fatal(err)
	}
	defer catcher.Close()
	host, port, _ := net.SplitHostPort(catcher.Addr())
	smtp, err := mail.ParseURL(fmt.Sprintf("smtp://alerts:pw-%s@%s:%s?from=alerts@fieldtrust.example", t.Name(), host, port))
	if err != nil {
		t.Fatal(err)
	}
	smtp.TLS = &tls.Config{RootCAs: mailRoots, ServerName: host}

	// The SMS provider's webhook receiver.
	hooks := make(chan hookCall, 16)
	receiver := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		hooks <- hookCall{b, r.Header.Clone(), time.Now()}
	}))
	defer receiver.Close()
	hookRoots := x509.NewCertPool()
	hookRoots.AddCert(receiver.Certificate())

	env := platformtest.Start(t, platform.Config{PublishInterval: time.Second, Notifications: platform.Notifications{
		SMTP: &smtp, WebhookAllowPrivate: true, WebhookTLS: &tls.Config{RootCAs: hookRoots},
		RulesTick: 200 * time.Millisecond, Outbox: outbox.Config{Poll: 100 * time.Millisecond, MinBackoff: 200 * time.Millisecond},
	}})
	fleet, err := demo.Setup(ctx, env.D)
	if err != nil {
		t.Fatal(err)
	}

	// The vendor's SMS gateway endpoint, and the rules.
	vendor := rules.Author{Vendor: true, Path: "test"}
	key := make([]byte, 32)
	rand.Read(key)
	hookURL := receiver.URL + "/sms"
	if err := rules.AddEndpoint(ctx, env.D.Store, secretbox.New(env.Dir, nil), vendor, "sms-gateway", "acme-pumps", hookURL, key, time.Now()); err != nil {
		t.Fatal(err)
	}
	for name, src := range map[string]string{"normal": normalRule, "abnormal": fmt.Sprintf(abnormalRule, hookURL), "overdue": overdueRule, "silent": silentRule} {
		if _, err := rules.Add(ctx, env.D.Store, vendor, name+".yaml", []byte(src), time.Now()); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
	}
	globex := rules.Author{Path: "globex-labs"}
	if _, err := rules.Add(ctx, env.D.Store, globex, "g.yaml", []byte(globexRule), time.Now()); err != nil {
		t.Fatal(err)
	}
	// A customer may not write rules for another's fleet, nor use
	// another's endpoint.
	if _, err := rules.Add(ctx, env.D.Store, globex, "g.yaml", []byte(strings.Replace(globexRule, "scope: globex-labs", "scope: acme-pumps", 1)), time.Now()); !errors.Is(err, rules.ErrForbidden) {
		t.Fatalf("globex rule on acme's fleet: %v, want ErrForbidden", err)
	}
	steal := strings.Replace(fmt.Sprintf(abnormalRule, hookURL), "scope: acme-pumps", "scope: globex-labs", 1)
	if _, err := rules.Add(ctx, env.D.Store, globex, "g.yaml", []byte(steal), time.Now()); !errors.Is(err, rules.ErrForbidden) {
		t.Fatalf("globex rule with acme's endpoint: %v, want ErrForbidden", err)
	}
	admin := env.Service(t, "test-admin", tacs.RoleAdmin)
	adminAPI := newClient(t, env, admin)
	eventually(t, 30*time.Second, "the platform runs the 5 rules", func() bool {
		req, _ := http.NewRequest("GET", "https://"+env.HTTPAddr+"/metrics", nil)
		resp, err := adminAPI.http.Do(req)
		if err != nil {
			return false
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return strings.Contains(string(b), "fieldtrust_rules_enabled 5")
	})

	// The customer subscribes to its devices' events.
	acme := env.Identity(t, "acme-pumps", false)
	acmeAPI := newClient(t, env, acme)
	globexAPI := newClient(t, env, env.Identity(t, "globex-labs", false))
	var evMu sync.Mutex
	var events []mqtt.Message
	sub := env.MQTT(t, acme)
	if tok := sub.Subscribe(topic.Of("acme-pumps/+/+", topic.Events), 1, func(_ mqtt.Client, m mqtt.Message) {
		evMu.Lock()
		events = append(events, m)
		evMu.Unlock()
	}); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("subscribe: %v", tok.Error())
	}

	// Two real gateways of acme: gw-1 with a local input, gw-2 simulated.
	var gw1, gw2 demo.Gateway
	for _, g := range fleet.Gateways {
		switch g.Path {
		case "acme-pumps/plant-berlin/gw-1":
			gw1 = g
		case "acme-pumps/plant-berlin/gw-2":
			gw2 = g
		}
	}
	local := freeAddr(t)
	runGateway := func(g demo.Gateway, cfg gateway.Config) (stop func()) {
		gctx, gcancel := context.WithCancel(ctx)
		onb := g.Onboarding
		cfg.Platform, cfg.CA, cfg.Onboarding, cfg.StateDir = "https://"+env.HTTPAddr, []*x509.Certificate{env.D.Transport.Root()}, &onb, g.StateDir
		ready := make(chan struct{})
		var once sync.Once
		cfg.Ready = func(string) { once.Do(func() { close(ready) }) }
		done := make(chan error, 1)
		go func() { done <- gateway.Run(gctx, cfg) }()
		select {
		case <-ready:
		case err := <-done:
			t.Fatalf("gateway %s: %v", g.Path, err)
		case <-time.After(60 * time.Second):
			t.Fatalf("gateway %s did not connect", g.Path)
		}
		var stopped sync.Once
		return func() { stopped.Do(func() { gcancel(); <-done }) }
	}
	defer runGateway(gw1, gateway.Config{ListenLocal: local})()
	stopGW2 := runGateway(gw2, gateway.Config{Simulate: 1, SimulateEvery: 300 * time.Millisecond})
	defer stopGW2()

	post := func(temp, hours float64) time.Time {
		body, _ := json.Marshal(gateway.Reading{Device: "pump-1", Type: "pump", Values: []snapshot.Value{
			{Channel: "temp_bearing", Value: temp, Unit: "Cel"}, {Channel: "operating_hours", Value: hours, Unit: "h"}}})
		resp, err := http.Post("http://"+local+"/v1/readings", "application/json", bytes.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusAccepted {
			t.Fatalf("local reading: %s", resp.Status)
		}
		return time.Now()
	}
	mailTo := func(addr string) []mailcatcher.Message {
		var out []mailcatcher.Message
		for _, m := range catcher.Messages() {
			for _, to := range m.To {
				if to == addr {
					out = append(out, m)
				}
			}
		}
		return out
	}
	device := "acme-pumps/plant-berlin/gw-1/pump-1"

	// 1. Normal: the list gets a mail.
	post(60, 1000)
	eventually(t, 20*time.Second, "the normal report mail", func() bool { return len(mailTo("plant-manager@acme.example")) == 1 })
	m := mailTo("service-list@acme.example")[0]
	if !m.TLS || m.AuthUser != "alerts" || m.Header.Get("Subject") != "Pump report "+device || !strings.Contains(m.Body, device) ||
		!strings.HasPrefix(m.Header.Get("Message-Id"), "<m-") || len(m.To) != 2 {
		t.Fatalf("normal mail: %+v", m)
	}

	// 2. Abnormal: alarm, task, signed webhook, mail and event within seconds.
	sent := post(95, 1001)
	var call hookCall
	select {
	case call = <-hooks:
	case <-time.After(20 * time.Second):
		t.Fatal("no webhook call for the abnormal value")
	}
	wh, err := standardwebhooks.NewWebhook(webhook.FormatSecret(key))
	if err != nil {
		t.Fatal(err)
	}
	if err := wh.Verify(call.body, call.h); err != nil {
		t.Fatalf("webhook signature does not verify with the reference library: %v", err)
	}
	var ev struct {
		Type, Device, Alarm, Rule, Severity string
		Values                              map[string]float64
	}
	json.Unmarshal(call.body, &ev)
	if ev.Type != "alarm.raised" || ev.Device != device || ev.Rule != "bearing-overheat" || ev.Values["temp_bearing"] != 95 {
		t.Fatalf("webhook body %s", call.body)
	}
	t.Logf("abnormal value: webhook %s after the reading was posted", call.at.Sub(sent).Round(time.Millisecond))
	var alarms struct{ Alarms []web.AlarmJSON }
	if code := acmeAPI.do("GET", "/api/v1/alarms?state=open", nil, &alarms); code != 200 || len(alarms.Alarms) != 1 || alarms.Alarms[0].ID != ev.Alarm || alarms.Alarms[0].State != "active" {
		t.Fatalf("open alarms: %d %+v", code, alarms)
	}
	alarmID := ev.Alarm
	var tasks struct{ Tasks []web.TaskJSON }
	eventually(t, 10*time.Second, "the investigation task", func() bool {
		return acmeAPI.do("GET", "/api/v1/tasks", nil, &tasks) == 200 && len(tasks.Tasks) == 1
	})
	if tk := tasks.Tasks[0]; tk.Title != "Investigate "+device || tk.Assignee != "tech-1" || tk.AlarmID != alarmID || tk.Due == nil || tk.State != "open" {
		t.Fatalf("task %+v", tk)
	}
	eventually(t, 10*time.Second, "the technician's mail", func() bool { return len(mailTo("tech-1@acme.example")) == 1 })
	eventually(t, 10*time.Second, "the MQTT event", func() bool { evMu.Lock(); defer evMu.Unlock(); return len(events) >= 1 })
	evMu.Lock()
	if e := events[0]; e.Topic() != "acme-pumps/plant-berlin/gw-1/events" || strings.Contains(string(e.Payload()), `"values"`) || !strings.Contains(string(e.Payload()), alarmID) {
		t.Fatalf("event on %s: %s", e.Topic(), e.Payload())
	}
	evMu.Unlock()

	// The customer works the task and acknowledges the alarm; another
	// customer sees neither.
	var tk web.TaskJSON
	if code := acmeAPI.do("POST", "/api/v1/tasks/"+tasks.Tasks[0].ID, []byte(`{"state":"in_progress","comment":"on site at 14:00"}`), &tk); code != 200 || tk.State != "in_progress" || len(tk.Comments) != 1 {
		t.Fatalf("update task: %d %+v", code, tk)
	}
	var a web.AlarmJSON
	if code := acmeAPI.do("POST", "/api/v1/alarms/"+alarmID+"/ack", nil, &a); code != 200 || a.State != "acknowledged" || a.AckedBy != "acme-pumps" {
		t.Fatalf("ack: %d %+v", code, a)
	}
	if code := acmeAPI.do("POST", "/api/v1/alarms/"+alarmID+"/ack", nil, nil); code != http.StatusConflict {
		t.Fatalf("second ack: %d, want 409", code)
	}
	if code := globexAPI.do("GET", "/api/v1/alarms/"+alarmID, nil, nil); code != http.StatusNotFound {
		t.Fatalf("another customer reads the alarm: %d, want 404", code)
	}
	if code := globexAPI.do("GET", "/api/v1/alarms", nil, &alarms); code != 200 || len(alarms.Alarms) != 0 {
		t.Fatalf("another customer's alarm list: %+v", alarms)
	}

	// 3. Hysteresis, then clear; overdue asks the vendor technician.
	post(88, 4999)
	post(60, 5001)
	eventually(t, 20*time.Second, "the appointment request", func() bool { return len(mailTo("vendor-tech@vendor.example")) == 1 })
	if s := mailTo("vendor-tech@vendor.example")[0].Header.Get("Subject"); s != "Please schedule an appointment with the customer: "+device {
		t.Fatalf("overdue subject %q", s)
	}
	eventually(t, 10*time.Second, "the clear", func() bool {
		return acmeAPI.do("GET", "/api/v1/alarms/"+alarmID, nil, &a) == 200 && a.State == "cleared"
	})
	// The 88 °C report is mailed through the outbox, maybe after the clear.
	eventually(t, 10*time.Second, "the 88 °C report", func() bool { return len(mailTo("plant-manager@acme.example")) >= 2 })
	// 88 °C is normal for the report (<= 90) but not low enough to clear
	// the alarm (< 85): the snapshot that cleared it is the 60 °C one.
	recs, err := env.D.Store.QuerySnapshots(ctx, store.SnapshotQuery{Gateway: "acme-pumps/plant-berlin/gw-1", Device: "pump-1"})
	if err != nil {
		t.Fatal(err)
	}
	var clearedBy float64
	for _, r := range recs {
		if r.Time.Equal(*a.ClearedAt) {
			clearedBy = r.Values[0].Value
		}
	}
	if a.ClearedBy != "rule" || clearedBy != 60 || len(mailTo("plant-manager@acme.example")) != 2 {
		t.Fatalf("cleared %+v by the %v °C snapshot; normal mails %d (want 2: 60 °C and 88 °C; 5001 h is overdue, no report)", a, clearedBy, len(mailTo("plant-manager@acme.example")))
	}

	// 4. Silent: gw-2 is killed; its device is reported.
	eventually(t, 30*time.Second, "gw-2 snapshots", func() bool {
		devs, _ := env.D.Store.ListDevices(ctx, "acme-pumps/plant-berlin/gw-2")
		return len(devs) == 1 && devs[0].Snapshots > 0
	})
	stopGW2()
	killed := time.Now()
	eventually(t, 20*time.Second, "the silent alarm mail", func() bool { return len(mailTo("oncall@acme.example")) == 1 })
	t.Logf("silent: reported %s after the gateway was killed (rule: 2s)", time.Since(killed).Round(time.Millisecond))
	if code := acmeAPI.do("GET", "/api/v1/alarms?state=open", nil, &alarms); code != 200 || len(alarms.Alarms) != 2 {
		t.Fatalf("open alarms after the silence: %+v", alarms)
	}

	// The globex rule never fired on acme's devices.
	msgs, err := env.D.Store.Outbox(ctx, store.OutboxQuery{})
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range msgs {
		if strings.HasPrefix(m.Gateway, "acme-pumps") && m.RuleID != "" {
			if r, _ := env.D.Store.Rule(ctx, m.RuleID); r.Scope == "globex-labs" {
				t.Fatalf("globex's rule notified about %s", m.Gateway)
			}
		}
	}
}

func freeAddr(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}
