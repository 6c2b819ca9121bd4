package broker

import (
	"bytes"
	"context"
	"crypto/tls"
	"strings"
	"sync"
	"sync/atomic"
	"unicode/utf8"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/fieldtrust/fieldtrust/internal/tacs"
)

// Sentinels. Both contain NUL, which tacs refuses in every topic and
// filter, so no client can subscribe to or publish on them.
const (
	// deniedFilter replaces a refused filter in a SUBSCRIBE so that mochi
	// answers "not authorized" for it without counting the refusal twice.
	deniedFilter = "\x00fieldtrust/denied"
	// droppedWillTopic replaces the topic of a will that must not be sent;
	// mochi has no way for a hook to cancel a will, only to rewrite it.
	droppedWillTopic = "\x00fieldtrust/dropped-will"
)

// sessionSep separates the identity namespace from the client's own ID in
// mochi's client ID: "ms-acc-1/acc-1/dev-1|gw-1". Subject strings never
// contain it, so the identity prefix is unambiguous.
const sessionSep = "|"

// connState is what the broker knows about one live connection.
type connState struct {
	subject tacs.Subject
	tls     tls.ConnectionState
	revoked atomic.Bool // set by Revalidate; its will is dropped
}

// accessHook enforces tacs on every mochi path that can move a message.
type accessHook struct {
	mqtt.HookBase
	b     *Broker
	conns sync.Map // *mqtt.Client → *connState, for live connections only
}

func (h *accessHook) ID() string { return "fieldtrust-access" }

func (h *accessHook) Provides(e byte) bool {
	switch e {
	case mqtt.OnConnect, mqtt.OnConnectAuthenticate, mqtt.OnSessionEstablish, mqtt.OnSessionEstablished,
		mqtt.OnDisconnect, mqtt.OnACLCheck, mqtt.OnSubscribe, mqtt.OnPacketRead, mqtt.OnPublish,
		mqtt.OnPublished, mqtt.OnPacketSent, mqtt.OnWill, mqtt.OnClientExpired:
		return true
	}
	return false
}

func (h *accessHook) live(cl *mqtt.Client) *connState {
	v, ok := h.conns.Load(cl)
	if !ok {
		return nil
	}
	return v.(*connState)
}

// subjectOf returns the subject a (possibly offline, possibly restored from
// storage) session belongs to. Live connections use the subject Identify
// returned; stored sessions carry it in the username the broker set.
func (h *accessHook) subjectOf(cl *mqtt.Client) (tacs.Subject, bool) {
	if st := h.live(cl); st != nil {
		return st.subject, true
	}
	return parseUsername(cl.Properties.Username)
}

// username encodes a subject for mochi's Username field, which the store
// persists with the session: "PATH" or "service:NAME:ROLE".
func username(s tacs.Subject) []byte {
	if s.IsService() {
		return []byte("service:" + s.Service + ":" + s.Role)
	}
	return []byte(s.Path)
}

func parseUsername(u []byte) (tacs.Subject, bool) {
	s := string(u)
	if rest, ok := strings.CutPrefix(s, "service:"); ok {
		name, role, ok := strings.Cut(rest, ":")
		subj := tacs.ServiceSubject(name, role)
		return subj, ok && subj.Validate() == nil
	}
	subj := tacs.Account(s)
	return subj, subj.Validate() == nil
}

// rawClientID strips the identity namespace from a mochi client ID.
func rawClientID(id string) string {
	if _, raw, ok := strings.Cut(id, sessionSep); ok {
		return raw
	}
	return id
}

// validClientID bounds what a CONNECT may use as a client ID.
func validClientID(id string) bool {
	if len(id) > MaxClientIDLen || !utf8.ValidString(id) {
		return false
	}
	for i := 0; i < len(id); i++ {
		if id[i] < 0x20 || id[i] == 0x7f {
			return false
		}
	}
	return true
}

// OnConnect identifies the client from its verified chain, binds the
// session to that identity and checks the will. It runs before mochi looks
// up any existing session, so the rewritten client ID decides which session
// is resumed or taken over.
func (h *accessHook) OnConnect(cl *mqtt.Client, pk packets.Packet) error {
	ctx := context.Background()
	refuse := func(stage, reason string, subj tacs.Subject, code packets.Code, attrs ...any) error {
		h.b.refuse(ctx, stage, reason, subj, append([]any{"client", cl.ID, "remote", cl.Net.Remote}, attrs...)...)
		ack := code
		if cl.Properties.ProtocolVersion < 5 && code == packets.ErrNotAuthorized {
			ack = packets.Err3NotAuthorized // mochi maps only some v5 codes to v3 return codes
		}
		_ = h.b.server.SendConnack(cl, ack, false, nil)
		return code
	}
	tc, ok := cl.Net.Conn.(interface{ ConnectionState() tls.ConnectionState })
	if !ok {
		return refuse("connect", "no_tls", tacs.Subject{}, packets.ErrNotAuthorized)
	}
	cs := tc.ConnectionState()
	if !cs.HandshakeComplete || len(cs.VerifiedChains) == 0 {
		return refuse("connect", "unverified_chain", tacs.Subject{}, packets.ErrNotAuthorized)
	}
	subj, err := h.b.cfg.Identify(cs)
	if err != nil {
		return refuse("connect", "identify_failed", subj, packets.ErrNotAuthorized, "error", err)
	}
	if err := subj.Validate(); err != nil {
		return refuse("connect", "invalid_subject", subj, packets.ErrNotAuthorized, "error", err)
	}
	if subj.IsService() {
		if _, ok := h.b.grants[subj.Role]; !ok {
			return refuse("connect", string(tacs.ReasonUnknownRole), subj, packets.ErrNotAuthorized, "role", subj.Role)
		}
	}
	if !validClientID(cl.ID) {
		return refuse("connect", "bad_client_id", subj, packets.ErrClientIdentifierNotValid)
	}
	if pk.Connect.WillFlag {
		if d := tacs.Authorize(h.b.grants, subj, tacs.Publish, pk.Connect.WillTopic); !d.Allowed {
			return refuse("will", string(d.Reason), subj, packets.ErrNotAuthorized, "topic", pk.Connect.WillTopic)
		}
	}
	cl.ID = subj.String() + sessionSep + cl.ID
	cl.Properties.Username = username(subj)
	h.conns.Store(cl, &connState{subject: subj, tls: cs})
	return nil
}

// OnConnectAuthenticate admits exactly the connections OnConnect identified.
// The CONNECT username and password are ignored: identity comes from the
// chain.
func (h *accessHook) OnConnectAuthenticate(cl *mqtt.Client, _ packets.Packet) bool {
	return h.live(cl) != nil
}

// OnSessionEstablish runs before mochi hands an existing session to the new
// connection. Sessions are namespaced by identity, so the existing one can
// only belong to the same subject; what can differ is the subject's rights
// (grants changed across a restart). Subscriptions and queued messages that
// the subject may no longer read are removed before they are inherited,
// because mochi resends inherited inflight messages without any ACL check.
func (h *accessHook) OnSessionEstablish(cl *mqtt.Client, pk packets.Packet) {
	h.b.gate.acquire(cl) // released in OnSessionEstablished or when the connection ends
	st := h.live(cl)
	existing, ok := h.b.server.Clients.Get(cl.ID)
	if st == nil || !ok || existing == cl {
		return
	}
	ctx := context.Background()
	if !bytes.Equal(existing.Properties.Username, cl.Properties.Username) {
		// Unreachable while IDs are namespaced; refuse the inheritance
		// anyway rather than trust that invariant.
		h.b.refuse(ctx, "session_resume", "identity_mismatch", st.subject, "client", rawClientID(cl.ID))
		h.b.server.UnsubscribeClient(existing)
		existing.ClearInflights()
		return
	}
	if pk.Connect.Clean {
		return // mochi discards the old session
	}
	for filter := range existing.State.Subscriptions.GetAll() {
		if d := tacs.Authorize(h.b.grants, st.subject, tacs.Subscribe, filter); !d.Allowed {
			h.b.refuse(ctx, "session_resume", string(d.Reason), st.subject, "client", rawClientID(cl.ID), "filter", filter)
			h.b.server.Topics.Unsubscribe(filter, existing.ID)
			existing.State.Subscriptions.Delete(filter)
			h.b.store.deleteSubscription(existing.ID, filter)
		}
	}
	for _, m := range existing.State.Inflight.GetAll(false) {
		if m.FixedHeader.Type != packets.Publish {
			continue
		}
		if d := tacs.Authorize(h.b.grants, st.subject, tacs.Subscribe, m.TopicName); !d.Allowed {
			h.b.refuse(ctx, "session_resume", string(d.Reason), st.subject, "client", rawClientID(cl.ID), "topic", m.TopicName)
			existing.State.Inflight.Delete(m.PacketID)
			h.b.store.deleteInflight(existing.ID, m)
		}
	}
}

func (h *accessHook) OnSessionEstablished(cl *mqtt.Client, _ packets.Packet) {
	h.b.gate.release(cl.Net.Conn)
	if h.live(cl) != nil {
		h.b.metrics.connects.WithLabelValues().Inc()
		h.b.metrics.connections.WithLabelValues().Inc()
	}
}

// OnDisconnect takes the session gate for the rest of mochi's cleanup of
// this connection (released by the listener when mochi is done), so a new
// connection with the same ID cannot slip in between (see sessionGate).
func (h *accessHook) OnDisconnect(cl *mqtt.Client, _ error, _ bool) {
	h.b.gate.acquire(cl)
	if _, ok := h.conns.LoadAndDelete(cl); ok {
		h.b.metrics.connections.WithLabelValues().Dec()
	}
}

// OnClientExpired drops an expired session's subscriptions from the topic
// index; mochi only forgets the client, leaving them to leak.
func (h *accessHook) OnClientExpired(cl *mqtt.Client) {
	h.b.server.UnsubscribeClient(cl)
}

// OnSubscribe decides every filter of a SUBSCRIBE. Refused filters are
// swapped for deniedFilter, which OnACLCheck refuses silently, so the
// refusal is logged and counted here once with the filter the client sent.
// Filters mochi itself considers malformed are left alone so the client
// gets mochi's "topic filter invalid" code.
func (h *accessHook) OnSubscribe(cl *mqtt.Client, pk packets.Packet) packets.Packet {
	if cl.Net.Inline {
		return pk
	}
	subj, ok := h.subjectOf(cl)
	filters := make(packets.Subscriptions, len(pk.Filters))
	copy(filters, pk.Filters)
	for i, sub := range filters {
		d := tacs.Authorize(h.b.grants, subj, tacs.Subscribe, sub.Filter)
		if ok && d.Allowed {
			continue
		}
		h.b.refuse(context.Background(), "subscribe", string(d.Reason), subj, "client", rawClientID(cl.ID), "filter", sub.Filter)
		if mqtt.IsValidFilter(sub.Filter, false) {
			filters[i].Filter = deniedFilter
		}
	}
	pk.Filters = filters
	return pk
}

// OnACLCheck is mochi's single ACL entry point: for writes it is the
// publish check; for reads it is called with the filter of an allowed
// SUBSCRIBE (already decided in OnSubscribe) and with the topic of every
// message about to be written to a client, live or retained. That last
// check is what makes retained delivery and wildcard matching safe even if
// rights changed or mochi's matcher disagrees with tacs.
func (h *accessHook) OnACLCheck(cl *mqtt.Client, topic string, write bool) bool {
	if topic == deniedFilter || topic == droppedWillTopic {
		return false
	}
	subj, ok := h.subjectOf(cl)
	if st := h.live(cl); st != nil && st.revoked.Load() {
		return false
	}
	action, stage := tacs.Subscribe, "delivery"
	if write {
		action, stage = tacs.Publish, "publish"
	}
	d := tacs.Authorize(h.b.grants, subj, action, topic)
	if ok && d.Allowed {
		return true
	}
	h.b.refuse(context.Background(), stage, string(d.Reason), subj, "client", rawClientID(cl.ID), "topic", topic)
	return false
}

// OnPacketRead counts the publishes mochi drops before any ACL check
// (wildcards or a $SYS prefix in the topic), so every refusal is visible.
func (h *accessHook) OnPacketRead(cl *mqtt.Client, pk packets.Packet) (packets.Packet, error) {
	if pk.FixedHeader.Type == packets.Publish && pk.TopicName != "" && !mqtt.IsValidFilter(pk.TopicName, true) {
		subj, _ := h.subjectOf(cl)
		d := tacs.Authorize(h.b.grants, subj, tacs.Publish, pk.TopicName)
		reason := string(d.Reason)
		if d.Allowed {
			reason = "dropped_by_broker" // e.g. admin publishing to $SYS
		}
		h.b.refuse(context.Background(), "publish", reason, subj, "client", rawClientID(cl.ID), "topic", pk.TopicName)
	}
	return pk, nil
}

// OnPublish re-checks the topic after mochi resolved an MQTT 5 topic alias;
// mochi's own ACL check runs before alias resolution and so sees an empty
// topic for alias-only publishes.
func (h *accessHook) OnPublish(cl *mqtt.Client, pk packets.Packet) (packets.Packet, error) {
	if cl.Net.Inline || !pk.Properties.TopicAliasFlag {
		return pk, nil
	}
	subj, ok := h.subjectOf(cl)
	d := tacs.Authorize(h.b.grants, subj, tacs.Publish, pk.TopicName)
	if ok && d.Allowed {
		return pk, nil
	}
	h.b.refuse(context.Background(), "publish", string(d.Reason), subj, "client", rawClientID(cl.ID), "topic", pk.TopicName)
	if pk.FixedHeader.Qos > 0 {
		return pk, packets.ErrNotAuthorized
	}
	return pk, packets.ErrRejectPacket
}

func (h *accessHook) OnPublished(cl *mqtt.Client, pk packets.Packet) {
	if !cl.Net.Inline {
		h.b.metrics.messagesIn.WithLabelValues(qosOf(pk.FixedHeader.Qos)).Inc()
	}
}

func (h *accessHook) OnPacketSent(_ *mqtt.Client, pk packets.Packet, _ []byte) {
	if pk.FixedHeader.Type == packets.Publish {
		h.b.metrics.messagesOut.WithLabelValues(qosOf(pk.FixedHeader.Qos)).Inc()
	}
}

// OnWill re-checks a will when it is about to be published: the subject's
// connection may have been revoked since CONNECT. mochi cannot cancel a
// will from a hook, so a refused will is rewritten to a topic nobody can
// subscribe to, without payload and without retain.
func (h *accessHook) OnWill(cl *mqtt.Client, will mqtt.Will) (mqtt.Will, error) {
	subj, ok := h.subjectOf(cl)
	reason := ""
	if st := h.live(cl); st != nil && st.revoked.Load() {
		reason = "revoked"
	} else if d := tacs.Authorize(h.b.grants, subj, tacs.Publish, will.TopicName); !ok || !d.Allowed {
		reason = string(d.Reason)
	}
	if reason == "" {
		return will, nil
	}
	h.b.refuse(context.Background(), "will", reason, subj, "client", rawClientID(cl.ID), "topic", will.TopicName)
	will.TopicName = droppedWillTopic
	will.Payload = nil
	will.Retain = false
	will.Qos = 0
	will.WillDelayInterval = 0
	return will, nil
}

// dropWill clears a client's will flag so mochi does not send it when the
// connection ends. The flag is read atomically by mochi.
func dropWill(cl *mqtt.Client) {
	atomic.StoreUint32(&cl.Properties.Will.Flag, 0)
}
