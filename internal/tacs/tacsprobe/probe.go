package tacsprobe

import (
	"crypto/tls"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/fieldtrust/fieldtrust/internal/broker"
	"github.com/fieldtrust/fieldtrust/internal/tacs"
	"github.com/fieldtrust/fieldtrust/internal/tacs/tacstest"
)

// Run runs every row of the adversarial table against tg.
func Run(t *testing.T, tg *Target) {
	p := &probe{tg: tg, certs: map[string]tls.Certificate{}}
	for _, r := range Rows {
		t.Run(r.Name, func(t *testing.T) { r.Run(t, p) })
	}
}

// Row is one attack and its positive control.
type Row struct {
	Name string
	Run  func(t *testing.T, p *probe)
}

type probe struct {
	tg    *Target
	mu    sync.Mutex
	certs map[string]tls.Certificate
}

// account returns (and caches) a certificate for path.
func (p *probe) account(t testing.TB, path string) tls.Certificate {
	p.mu.Lock()
	c, ok := p.certs[path]
	p.mu.Unlock()
	if ok {
		return c
	}
	c = p.tg.Account(t, path)
	p.mu.Lock()
	p.certs[path] = c
	p.mu.Unlock()
	return c
}

func (p *probe) dev(t testing.TB, node int, path string) *client {
	t.Helper()
	return p.tg.mustConnect(t, node, p.account(t, path), path, opts{clean: true})
}

func (p *probe) admin(t testing.TB, node int) *client {
	t.Helper()
	p.mu.Lock()
	c, ok := p.certs["service:admin"]
	p.mu.Unlock()
	if !ok {
		c = p.tg.Service(t, "admin", tacs.RoleAdmin)
		p.mu.Lock()
		p.certs["service:admin"] = c
		p.mu.Unlock()
	}
	return p.tg.mustConnect(t, node, c, "service:admin", opts{clean: true})
}

// untilRights waits until a fresh clean connection of cert to node gets
// (want) or is refused (!want) a subscription to filter: the tier has
// picked up a role set in the store.
func (p *probe) untilRights(t testing.TB, node int, cert tls.Certificate, name, filter string, want bool) {
	t.Helper()
	deadline := time.Now().Add(wait)
	for {
		c, err := p.tg.connect(t, node, cert, name, opts{clean: true})
		if err == nil {
			got := c.subscribe(t, filter, 1)
			c.c.Disconnect(0)
			if got == want {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: subscribe %q granted=%v not reached within %v (connect: %v)", name, filter, want, wait, err)
		}
		time.Sleep(100 * time.Millisecond) // polling a condition with a deadline
	}
}

// resume connects to node with the persistent session cid, retrying
// until the deadline: a CONNECT right after the session's DISCONNECT on
// another node may be refused until that node has let the session go.
func (p *probe) resume(t testing.TB, node int, cert tls.Certificate, name, cid string) (*client, error) {
	t.Helper()
	deadline := time.Now().Add(wait)
	for refused := 0; ; refused++ {
		c, err := p.tg.connect(t, node, cert, name, opts{clientID: cid})
		if err == nil && refused > 0 {
			t.Logf("%s resumed on node %d after %d refusals", cid, node, refused)
		}
		if err == nil || time.Now().After(deadline) {
			return c, err
		}
		time.Sleep(100 * time.Millisecond) // polling a condition with a deadline
	}
}

// Rows is the adversarial table.
var Rows = []Row{
	{"thesis_table_subscribe", func(t *testing.T, p *probe) {
		// Design thesis Table 4.1, one connection per identity on
		// alternating nodes.
		byID := map[string][]tacstest.Row{}
		var order []string
		for _, r := range tacstest.ThesisTable {
			if byID[r.Identity] == nil {
				order = append(order, r.Identity)
			}
			byID[r.Identity] = append(byID[r.Identity], r)
		}
		for i, id := range order {
			c := p.dev(t, i, id)
			for _, r := range byID[id] {
				if got := c.subscribe(t, r.Request, 1); got != r.Allowed {
					t.Errorf("%s subscribe %q: granted=%v, want %v", r.Identity, r.Request, got, r.Allowed)
				}
			}
		}
	}},
	{"foreign_publish", func(t *testing.T, p *probe) {
		// A device on node B publishes into another account's subtree
		// (QoS 0 and 1) and into its own account's sibling device.
		owner := p.dev(t, 0, "pr-fp-2")
		owner.mustSubscribe(t, "pr-fp-2/#", 1)
		sibling := p.dev(t, 2, "pr-fp-1/acc/dev-2")
		sibling.mustSubscribe(t, "pr-fp-1/acc/dev-2/#", 1)
		att := p.dev(t, 1, "pr-fp-1/acc/dev-1")
		att.publish(t, "pr-fp-2/acc/dev-1/snapshots", "forged-0", 0, false)
		att.publish(t, "pr-fp-1/acc/dev-2/commands", "forged-0", 0, false)
		att2 := p.dev(t, 1, "pr-fp-1/acc/dev-1")
		att2.publish(t, "pr-fp-2/acc/dev-1/snapshots", "forged-1", 1, false)
		fence(t, p.dev(t, 1, "pr-fp-2/acc/dev-1"), owner, "pr-fp-2/acc/dev-1/snapshots")
		fence(t, p.dev(t, 1, "pr-fp-1/acc/dev-2"), sibling, "pr-fp-1/acc/dev-2/snapshots")
		owner.never(t, "forged-0")
		owner.never(t, "forged-1")
		sibling.never(t, "forged-0")
	}},
	{"wildcard_and_empty_level_publish", func(t *testing.T, p *probe) {
		// Topics TACS refuses everywhere even inside the own subtree:
		// wildcards, and empty levels (two spellings of one topic).
		obs := p.dev(t, 0, "pr-wc")
		obs.mustSubscribe(t, "pr-wc/#", 1)
		att := p.dev(t, 1, "pr-wc/acc/dev")
		for _, topic := range []string{"pr-wc/acc/+/snapshots", "pr-wc/acc/dev/#", "pr-wc/acc//dev", "pr-wc/acc/dev/"} {
			att.publish(t, topic, "forged", 0, false)
		}
		fence(t, p.dev(t, 1, "pr-wc/acc/dev"), obs, "pr-wc/acc/dev/snapshots")
		obs.never(t, "forged")
	}},
	{"foreign_will", func(t *testing.T, p *probe) {
		// A will on another account's topic is refused at CONNECT or
		// never sent; the own will is sent when the link dies.
		owner := p.dev(t, 0, "pr-fw-2")
		owner.mustSubscribe(t, "pr-fw-2/#", 1)
		mine := p.dev(t, 0, "pr-fw-1")
		mine.mustSubscribe(t, "pr-fw-1/#", 1)
		att, err := p.tg.connect(t, 1, p.account(t, "pr-fw-1/acc/dev"), "pr-fw-1/acc/dev",
			opts{clean: true, will: &msg{"pr-fw-2/acc/dev/status", "forged"}, willQoS: 1})
		if err == nil {
			att.abort()
		}
		honest := p.tg.mustConnect(t, 2, p.account(t, "pr-fw-1/acc/dev"), "pr-fw-1/acc/dev",
			opts{clean: true, will: &msg{"pr-fw-1/acc/dev/status", "offline"}, willQoS: 1})
		honest.abort()
		mine.expect(t, "pr-fw-1/acc/dev/status", "offline")
		fence(t, p.dev(t, 1, "pr-fw-2/acc/dev"), owner, "pr-fw-2/acc/dev/status")
		owner.never(t, "forged")
	}},
	{"foreign_retained", func(t *testing.T, p *probe) {
		// A retained message planted in another account's subtree
		// never reaches its later subscribers; the owner's own
		// retained message does.
		att := p.dev(t, 1, "pr-fr-1/acc/dev")
		att.publish(t, "pr-fr-2/acc/dev/status", "forged", 1, true)
		own := p.dev(t, 2, "pr-fr-2/acc/dev")
		own.publish(t, "pr-fr-2/acc/dev/status", "online", 1, true)
		owner := p.dev(t, 0, "pr-fr-2")
		owner.mustSubscribe(t, "pr-fr-2/#", 1)
		owner.expect(t, "pr-fr-2/acc/dev/status", "online")
		owner.never(t, "forged")
		own.publish(t, "pr-fr-2/acc/dev/status", "", 1, true) // clear
	}},
	{"retained_not_leaked", func(t *testing.T, p *probe) {
		// Another account's retained status is not readable through
		// wildcards, the exact topic or a shared subscription.
		own := p.dev(t, 0, "pr-rl-1/acc/dev")
		own.publish(t, "pr-rl-1/acc/dev/status", "secret", 1, true)
		mine := p.dev(t, 0, "pr-rl-1")
		mine.mustSubscribe(t, "pr-rl-1/+/+/status", 1)
		mine.expect(t, "pr-rl-1/acc/dev/status", "secret")
		att := p.dev(t, 1, "pr-rl-2/acc/dev")
		for _, f := range []string{"#", "+/#", "+/+/+/status", "pr-rl-1/#", "pr-rl-1/acc/dev/status", "$share/g/pr-rl-1/#"} {
			if att.subscribe(t, f, 1) {
				t.Errorf("foreign subscribe %q granted", f)
			}
		}
		att.mustSubscribe(t, "pr-rl-2/acc/dev/#", 1)
		fence(t, p.dev(t, 1, "pr-rl-2/acc/dev"), att, "pr-rl-2/acc/dev/fence")
		att.never(t, "secret")
		own.publish(t, "pr-rl-1/acc/dev/status", "", 1, true)
	}},
	{"session_hijack", func(t *testing.T, p *probe) {
		// Another identity presents the victim's client ID with a
		// persistent session: it is refused, or gets a session of its
		// own; the victim's queued message reaches only the victim.
		victimPath := "pr-sh-1/acc/dev"
		cid := victimPath + ":probe-session"
		v := p.tg.mustConnect(t, 0, p.account(t, victimPath), victimPath, opts{clientID: cid})
		v.mustSubscribe(t, victimPath+"/commands", 1)
		// While the victim is connected: the attacker's CONNECT with
		// its client ID must not take the session over (cut the
		// victim off).
		master := p.dev(t, 1, "pr-sh-1")
		if att, err := p.tg.connect(t, 1, p.account(t, "pr-sh-2/acc/dev"), "pr-sh-2/acc/dev", opts{clientID: cid}); err == nil {
			att.c.Disconnect(50)
		}
		fence(t, master, v, victimPath+"/commands")
		if v.disconnected(0) {
			t.Fatal("the attacker's CONNECT took over the victim's session")
		}
		v.c.Disconnect(50)
		master.publish(t, victimPath+"/commands", "queued-for-victim", 1, false)
		att, err := p.tg.connect(t, 1, p.account(t, "pr-sh-2/acc/dev"), "pr-sh-2/acc/dev", opts{clientID: cid})
		if err == nil {
			att.mustSubscribe(t, "pr-sh-2/acc/dev/fence", 1)
			fence(t, p.dev(t, 1, "pr-sh-2/acc/dev"), att, "pr-sh-2/acc/dev/fence")
			att.never(t, "queued-for-victim")
			att.c.Disconnect(50)
		}
		back := p.tg.mustConnect(t, 2, p.account(t, victimPath), victimPath, opts{clientID: cid})
		back.expect(t, victimPath+"/commands", "queued-for-victim")
		back.c.Disconnect(50)
		// Leave no persistent session behind.
		p.tg.mustConnect(t, 2, p.account(t, victimPath), victimPath, opts{clientID: cid, clean: true}).c.Disconnect(50)
	}},
	{"dollar_topics", func(t *testing.T, p *probe) {
		// $-topics belong to the broker (and, on the cluster, to the
		// engine: $MQTT sessions, $JS the JetStream API). Neither a
		// device nor admin may reach the engine's; the tier keeps
		// working after the attempts.
		dev := p.dev(t, 1, "pr-dt/acc/dev")
		for _, f := range []string{"$SYS/#", "$MQTT/sub/+", "$MQTT/msgs/#", "$JS/API/#", "$JS/#", "$share/g/$SYS/#"} {
			if dev.subscribe(t, f, 0) {
				t.Errorf("device subscribe %q granted", f)
			}
		}
		adm := p.admin(t, 2)
		for _, f := range []string{"$MQTT/sub/+", "$MQTT/msgs/#", "$JS/API/#"} {
			if adm.subscribe(t, f, 0) {
				t.Errorf("admin subscribe %q granted", f)
			}
		}
		for _, c := range []*client{dev, adm} {
			for _, topic := range []string{"$JS/API/STREAM/DELETE/$MQTT_msgs", "$JS/API/STREAM/DELETE/$MQTT_sess",
				"$JS/API/STREAM/PURGE/$MQTT_rmsgs", "$MQTT/JSA/x/SP/y", "$SYS/broker/uptime"} {
				c.publish(t, topic, "{}", 0, false)
			}
		}
		// QoS 1 through a persistent session still works.
		obs := p.tg.mustConnect(t, 0, p.account(t, "pr-dt"), "pr-dt", opts{})
		obs.mustSubscribe(t, "pr-dt/#", 1)
		fence(t, p.dev(t, 1, "pr-dt/acc/dev"), obs, "pr-dt/acc/dev/snapshots")
		obs.c.Disconnect(50)
		p.tg.mustConnect(t, 0, p.account(t, "pr-dt"), "pr-dt", opts{clean: true}).c.Disconnect(50)
	}},
	{"crl_read_only", func(t *testing.T, p *probe) {
		// Everyone reads pki/crl/#; nobody but a grant writes there.
		reader := p.dev(t, 0, "pr-crl-1/acc/dev")
		reader.mustSubscribe(t, "pki/crl/#", 1)
		att := p.dev(t, 1, "pr-crl-2/acc/dev")
		att.publish(t, "pki/crl/transport", "forged", 0, false)
		att.publish(t, "pki/crl/e2e", "forged", 1, false)
		if att.subscribe(t, "pki/#", 1) {
			t.Error("subscribe pki/# granted")
		}
		adm := p.admin(t, 1)
		fence(t, adm, reader, "pki/crl/fence")
		reader.never(t, "forged")
	}},
	{"site_subtree", func(t *testing.T, p *probe) {
		// A customer site's certificate (TACS rule 5): it forwards its
		// account's gateway traffic upstream and reads what goes down
		// to them, nothing else — not the account's snapshots, not
		// another account, not the platform's direction.
		if p.tg.Site == nil {
			t.Skip("target has no site certificates")
		}
		const acc = "pr-site-1/acc"
		cert := p.tg.Site(t, acc)
		site := p.tg.mustConnect(t, 1, cert, "site", opts{clientID: "site:" + acc, clean: true})
		for _, tc := range []struct {
			filter string
			ok     bool
		}{
			{acc + "/+/commands", true}, {"pki/crl/#", true},
			{"#", false}, {acc + "/#", false}, {acc + "/+/snapshots", false}, {"pr-site-2/acc/+/commands", false},
			{"pr-site-1/+/+/commands", false}, {"$SYS/#", false}, {"$share/g/" + acc + "/+/snapshots", false},
		} {
			if got := site.subscribe(t, tc.filter, 1); got != tc.ok {
				t.Errorf("site subscribe %q: granted=%v, want %v", tc.filter, got, tc.ok)
			}
		}
		owner := p.dev(t, 0, "pr-site-1")
		owner.mustSubscribe(t, "pr-site-1/#", 1)
		other := p.dev(t, 2, "pr-site-2")
		other.mustSubscribe(t, "pr-site-2/#", 1)
		site.publish(t, acc+"/gw-1/snapshots", "forwarded", 1, false)
		owner.expect(t, acc+"/gw-1/snapshots", "forwarded")
		// Each forgery on a fresh connection (a refused QoS 1 publish may
		// end the connection in MQTT 3.1.1).
		for _, f := range []struct {
			topic string
			qos   byte
		}{
			{"pr-site-2/acc/gw-1/snapshots", 1}, {"pr-site-2/acc/gw-1/snapshots", 0},
			{acc + "/gw-1/commands", 1}, {acc + "/gw-1/events", 0}, {"pr-site-1/acc-2/gw-1/status", 1},
		} {
			att := p.tg.mustConnect(t, 1, cert, "site", opts{clientID: fmt.Sprintf("site:%s:forge-%d", acc, seq.Add(1)), clean: true})
			att.publish(t, f.topic, "forged", f.qos, false)
		}
		if att, err := p.tg.connect(t, 1, cert, "site", opts{clientID: "site:" + acc + ":will", clean: true,
			will: &msg{"pr-site-2/acc/gw-1/status", "forged"}, willQoS: 1}); err == nil {
			att.abort()
		}
		fence(t, p.dev(t, 1, acc+"/gw-1"), owner, acc+"/gw-1/snapshots")
		fence(t, p.dev(t, 1, "pr-site-2/acc/gw-1"), other, "pr-site-2/acc/gw-1/status")
		owner.never(t, "forged")
		other.never(t, "forged")
	}},
	{"identity_limits", func(t *testing.T, p *probe) {
		// One stolen gateway credential against the per-identity limits
		// (broker.DefaultAccountLimits, on both tiers): connections on
		// one node, persistent sessions over all nodes, retained messages.
		lim := broker.DefaultAccountLimits
		conns := "pr-lim/acc/gw-c"
		for range lim.Connections {
			p.tg.mustConnect(t, 0, p.account(t, conns), conns, opts{clean: true})
		}
		if c, err := p.tg.connect(t, 0, p.account(t, conns), conns, opts{clean: true}); err == nil {
			c.c.Disconnect(0)
			t.Errorf("connection %d of one identity on one node taken", lim.Connections+1)
		}
		p.dev(t, 0, "pr-lim/acc/gw-other") // another identity is not affected

		sess := "pr-lim/acc/gw-s"
		for i := range lim.PersistentSessions {
			p.tg.mustConnect(t, i, p.account(t, sess), sess, opts{clientID: fmt.Sprintf("%s:s%d", sess, i)}).c.Disconnect(50)
		}
		for i := range p.tg.Addrs {
			if c, err := p.tg.connect(t, i, p.account(t, sess), sess, opts{clientID: sess + ":one-too-many"}); err == nil {
				c.c.Disconnect(0)
				t.Errorf("persistent session %d of one identity taken on node %d", lim.PersistentSessions+1, i)
			}
		}
		// Its own sessions are taken again, on another node.
		p.tg.mustConnect(t, 1, p.account(t, sess), sess, opts{clientID: sess + ":s0"}).c.Disconnect(50)

		// Retained: beyond the limit refused (embedded) or removed
		// (cluster); an observer ends up with the limit, not more.
		ret := "pr-lim/acc/gw-r"
		pub := p.dev(t, 0, ret)
		for i := range lim.Retained + 6 {
			select {
			case <-pub.lost: // the embedded broker closes a 3.1.1 client at the limit
				pub = p.dev(t, 0, ret)
			default:
			}
			pub.publish(t, fmt.Sprintf("%s/r/%d", ret, i), "retained", 1, true)
		}
		deadline := time.Now().Add(wait)
		for n := 0; ; n++ {
			obs := p.dev(t, n, "pr-lim/acc")
			obs.mustSubscribe(t, ret+"/r/#", 1)
			fence(t, p.dev(t, n+1, ret), obs, ret+"/r/fence")
			got := 0
			for _, m := range obs.received() {
				if m.payload == "retained" {
					got++
				}
			}
			obs.c.Disconnect(0)
			if got == lim.Retained {
				break
			}
			if got < lim.Retained || time.Now().After(deadline) {
				t.Fatalf("an observer received %d retained messages of one identity, want %d", got, lim.Retained)
			}
		}
	}},
	{"role_change_resumed_session", func(t *testing.T, p *probe) {
		// A service's rights are its role's (the store's, not the
		// certificate's). Demoted from snapshot-reader to status-reader,
		// it must not read snapshots through a persistent session made
		// under the old role: neither one queued while it was offline
		// nor one published after it resumed the session, whether the
		// role changed while it was offline or while it was connected
		// (then the tier ends the connection within the revalidation
		// bound, as for a revocation). Control: the same session with the
		// role unchanged receives both.
		if p.tg.SetRole == nil {
			t.Skip("target cannot change a service's role")
		}
		const dev = "pr-rc/acc/dev"
		snap, status := dev+"/snapshots", dev+"/status"
		device := p.dev(t, 1, dev)
		for _, tc := range []struct {
			name      string
			connected bool // the role changes while the session is connected
		}{{"pr-rc-offline", false}, {"pr-rc-connected", true}} {
			id := "service:" + tc.name
			cid := id + ":probe-session"
			cert := p.tg.Service(t, tc.name, tacs.RoleSnapshotReader)
			p.untilRights(t, 0, cert, id, snap, true)
			s := p.tg.mustConnect(t, 0, cert, id, opts{clientID: cid})
			s.mustSubscribe(t, snap, 1)
			s.c.Disconnect(50)
			device.publish(t, snap, "queued-same-role", 1, false)
			s, err := p.resume(t, 2, cert, id, cid)
			if err != nil {
				t.Fatalf("resume with the role unchanged: %v", err)
			}
			s.expect(t, snap, "queued-same-role")
			fence(t, device, s, snap)
			if tc.connected {
				p.tg.SetRole(t, tc.name, tacs.RoleStatusReader)
				if !s.disconnected(5 * time.Second) {
					t.Fatalf("%s still connected 5 s after its role changed", id)
				}
			} else {
				s.c.Disconnect(50)
				p.tg.SetRole(t, tc.name, tacs.RoleStatusReader)
			}
			p.untilRights(t, 1, cert, id, snap, false) // the tier has the new role
			queued := "queued-after-demotion-" + tc.name
			device.publish(t, snap, queued, 1, false)
			for i := range p.tg.Addrs { // resumed on each node
				r, err := p.resume(t, i, cert, id, cid)
				if err != nil {
					t.Logf("resumption refused on node %d: %v", i, err) // closed too
					continue
				}
				live := fmt.Sprintf("live-after-demotion-%s-%d", tc.name, i)
				if r.subscribe(t, status, 1) { // what the new role may read
					device.publish(t, snap, live, 1, false)
					fence(t, device, r, status)
				}
				r.never(t, queued)
				r.never(t, live)
				r.c.Disconnect(50)
			}
			// Leave no persistent session behind.
			p.tg.mustConnect(t, 0, cert, id, opts{clientID: cid, clean: true}).c.Disconnect(50)
		}
	}},
	{"revoked_reconnect", func(t *testing.T, p *probe) {
		if p.tg.Revoke == nil {
			t.Skip("target has no revocation")
		}
		path := "pr-rv/acc/dev"
		cert := p.tg.Account(t, path) // fresh: the cache must not outlive the revocation
		c := p.tg.mustConnect(t, 1, cert, path, opts{clean: true})
		p.tg.Revoke(t, path)
		if !c.disconnected(5 * time.Second) {
			t.Fatal("revoked identity still connected after 5 s")
		}
		for i := range p.tg.Addrs {
			if _, err := p.tg.connect(t, i, cert, path, opts{clean: true}); err == nil {
				t.Errorf("revoked identity reconnected to node %d", i)
			}
		}
	}},
}
