package cluster

import (
	"strings"
	"testing"
	"time"

	"github.com/fieldtrust/fieldtrust/internal/tacs"
)

// TestClientIDAllowed: a client ID names exactly its identity. A master
// account may be named "service" or "site" (ident reserves only "pki"),
// so "the name, ':' and a suffix" let the master identity "service" take
// the client IDs of the platform's services ("service:ingest:p3": the
// ingest partition sessions with their queued snapshots) and "site" those
// of every customer site (review of issue 16).
func TestClientIDAllowed(t *testing.T) {
	ingest := tacs.Subject{Service: "ingest", Role: tacs.RoleSnapshotReader}
	site := tacs.Subject{Path: "ms-1/acc-1", Site: true}
	gw := tacs.Subject{Path: "ms-1/acc-1/gw-1"}
	masterService := tacs.Subject{Path: "service"}
	masterSite := tacs.Subject{Path: "site"}
	for _, tc := range []struct {
		s   tacs.Subject
		cid string
		ok  bool
	}{
		{gw, "ms-1/acc-1/gw-1", true},
		{gw, "ms-1/acc-1/gw-1:probe", true},
		{gw, "ms-1/acc-1/gw-11", false},
		{gw, "ms-1/acc-1/gw-1/x", false},
		{gw, "ms-1/acc-1", false},
		{ingest, "service:ingest", true},
		{ingest, "service:ingest:p3", true},
		{ingest, "service:ingestor", false},
		{site, "site:ms-1/acc-1", true},
		{site, "site:ms-1/acc-1:local", true},
		{site, "ms-1/acc-1", false},
		{masterService, "service", true},
		{masterService, "service:ingest:p3", false},
		{masterService, "service:console:n1", false},
		{masterService, "service:x", false},
		{masterSite, "site", true},
		{masterSite, "site:ms-1/acc-1", false},
		{masterSite, "site:ms-1/acc-1:x", false},
		{tacs.Subject{Path: "ms-1"}, "ms-1:x", true},
		{tacs.Subject{Path: "ms-1"}, "ms-1/acc-1/gw-1", false},
	} {
		if got := ClientIDAllowed(tc.s, tc.cid); got != tc.ok {
			t.Errorf("ClientIDAllowed(%s, %q) = %v; want %v", tc.s, tc.cid, got, tc.ok)
		}
	}
}

// TestClusterMasterNamedServiceCannotHijack: on a real node, the master
// identity "service" cannot take the ingest partition session's client ID
// from the ingest service, which stays connected.
func TestClusterMasterNamedServiceCannotHijack(t *testing.T) {
	e := newEnv(t)
	nodes := e.startCluster(t, 1)
	addr := nodes[0].MQTTAddr()
	ing := e.mustDial(t, addr, e.service(t, "ingest", tacs.RoleSnapshotReader), "service:ingest:p3")
	defer ing.Disconnect(0)
	if c, err := e.dial(t, addr, e.device(t, "service"), "service:ingest:p3", false); err == nil {
		c.Disconnect(0)
		t.Error("the master identity \"service\" took the ingest partition session's client ID")
	}
	if c, err := e.dial(t, addr, e.device(t, "site"), "site:ms-acc-1/acc-1", false); err == nil {
		c.Disconnect(0)
		t.Error("the master identity \"site\" took a customer site's client ID")
	}
	// A session taken over has lost its connection by the time the
	// taker's CONNACK came: a round trip on it fails then.
	tok := ing.Subscribe("ms-acc-1/acc-1/+/snapshots", 1, nil)
	if !tok.WaitTimeout(10*time.Second) || tok.Error() != nil || !ing.IsConnectionOpen() {
		t.Errorf("the ingest session lost its connection: %v", tok.Error())
	}
}

// FuzzClientIDAllowed: an allowed client ID is the identity's name or the
// name, ':' and a suffix, and an account identity never gets one in the
// services' or the sites' namespace.
func FuzzClientIDAllowed(f *testing.F) {
	f.Add("service", "service:ingest:p3", false, "")
	f.Add("site", "site:ms-1/acc-1", false, "")
	f.Add("ms-1/acc-1", "site:ms-1/acc-1:x", true, "")
	f.Add("", "service:ingest", false, "ingest")
	f.Add("ms-1/acc-1/gw-1", "ms-1/acc-1/gw-1:probe", false, "")
	f.Fuzz(func(t *testing.T, path, cid string, site bool, service string) {
		if strings.Contains(path, ":") || strings.Contains(service, ":") {
			t.Skip() // identity paths and service names cannot contain ':'
		}
		s := tacs.Subject{Path: path, Site: site, Service: service}
		if !ClientIDAllowed(s, cid) {
			return
		}
		name := s.String()
		if cid != name && !strings.HasPrefix(cid, name+":") {
			t.Fatalf("%q allowed for %s", cid, name)
		}
		if service == "" && !site && (strings.HasPrefix(cid, "service:") || strings.HasPrefix(cid, "site:")) {
			t.Fatalf("account identity %q allowed %q", path, cid)
		}
	})
}
