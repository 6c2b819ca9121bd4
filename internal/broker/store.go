package broker

import (
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"sync"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/hooks/storage"
	"github.com/mochi-mqtt/server/v2/packets"
	"go.etcd.io/bbolt"
)

// Key prefixes. Client IDs are namespaced by identity ("path|id"), so a
// prefix scan per client is unambiguous.
const (
	bucketName    = "broker"
	keyClient     = "cl/"
	keySub        = "sub/"
	keyInflight   = "if/"
	keyRetained   = "ret/"
	keyPending    = "pend/"
	subKeySep     = "\x00" // cannot occur in a client ID or a filter
	storeLockWait = 2 * time.Second
)

// store persists sessions, subscriptions, inflight QoS 1/2 messages and
// retained messages in a bbolt file, so that a restart — including kill -9
// — loses none of them.
//
// We do not use mochi's bolt hook: it persists refused subscriptions (with
// the refusal code as QoS) which would come back after a restart, it races
// Stop against in-flight writes, and it fsyncs every write separately. This
// hook stores only granted subscriptions, serialises Stop, and writes
// through a journal: one ordered writer that groups everything queued into
// one fsync'd transaction.
//
// Only persistent sessions (MQTT 3.1.1 clean session false, MQTT 5 session
// expiry > 0) are stored. A session that ends with its connection must not
// come back after a crash anyway, and OnDisconnect forgets it.
//
// Durability gap closed by the pending log: mochi acknowledges a QoS 1/2
// PUBLISH to the sender before it has queued (and persisted) the message
// for offline subscribers. OnPublish (which runs before the acknowledgement)
// therefore writes the message to a pending log, durably, if a persistent
// session or a retained copy depends on it; the subscribers' inflight
// entries and the removal of the pending entry (OnPublished) are queued
// without waiting, in that order, so the journal's ordering guarantees the
// pending entry outlives any missing inflight entry. On start every pending
// message is published again: a crash can duplicate a delivery, never lose
// an acknowledged one.
type store struct {
	mqtt.HookBase
	log *slog.Logger
	// admit runs flow control for a QoS > 0 publish before its
	// acknowledgement and reports whether the publish must be in the
	// pending log (a persistent session will queue it); nil logs every
	// publish. Set before the broker serves.
	admit func(pub *mqtt.Client, pk packets.Packet) (persistent bool)

	mu     sync.RWMutex // guards db against close (scans); writes go through j
	db     *bbolt.DB    // nil after close
	j      *journal
	logged sync.Map // pendingKey → struct{}: logged by OnPublish, not yet removed
}

func openStore(path string, log *slog.Logger) (*store, error) {
	db, err := bbolt.Open(path, 0o600, &bbolt.Options{Timeout: storeLockWait})
	if err != nil {
		return nil, fmt.Errorf("open state %s: %w", path, err)
	}
	if err := db.Update(func(tx *bbolt.Tx) error {
		_, err := tx.CreateBucketIfNotExists([]byte(bucketName))
		return err
	}); err != nil {
		_ = db.Close()
		return nil, fmt.Errorf("init state %s: %w", path, err)
	}
	return &store{log: log, db: db, j: newJournal(db, log)}, nil
}

func (s *store) ID() string { return "fieldtrust-store" }

func (s *store) Provides(e byte) bool {
	switch e {
	case mqtt.OnSessionEstablished, mqtt.OnWillSent, mqtt.OnDisconnect, mqtt.OnSubscribed,
		mqtt.OnUnsubscribed, mqtt.OnRetainMessage, mqtt.OnQosPublish, mqtt.OnQosComplete,
		mqtt.OnQosDropped, mqtt.OnClientExpired, mqtt.OnRetainedExpired, mqtt.OnPublish,
		mqtt.OnPublished, mqtt.StoredClients, mqtt.StoredSubscriptions,
		mqtt.StoredInflightMessages, mqtt.StoredRetainedMessages:
		return true
	}
	return false
}

// Stop is called by mochi after every client is gone.
func (s *store) Stop() error { return s.close() }

func (s *store) close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.db == nil {
		return nil
	}
	s.j.close() // commits everything queued
	err := s.db.Close()
	s.db = nil
	return err
}

// durability says whether a write must be durable before its caller goes
// on (durable) or is only queued, committed before every later write
// (ordered).
type durability bool

const (
	durable durability = true
	ordered durability = false
)

// write queues fn on the journal. Errors are logged by the journal:
// mochi's hook signatures give them nowhere to go.
func (s *store) write(what string, d durability, fn func(b *bbolt.Bucket) error) {
	_ = s.j.submit(what, fn, bool(d))
}

func (s *store) put(what string, d durability, key string, v storage.Serializable) {
	data, err := v.MarshalBinary()
	if err != nil {
		s.log.Error("broker store encode failed", "op", what, "error", err)
		return
	}
	s.write(what, d, func(b *bbolt.Bucket) error { return b.Put([]byte(key), data) })
}

func (s *store) del(what string, d durability, keys ...string) {
	s.write(what, d, func(b *bbolt.Bucket) error {
		for _, k := range keys {
			if err := b.Delete([]byte(k)); err != nil {
				return err
			}
		}
		return nil
	})
}

// delPrefix deletes every key with one of the prefixes.
func (s *store) delPrefix(what string, d durability, prefixes ...string) {
	s.write(what, d, func(b *bbolt.Bucket) error {
		for _, p := range prefixes {
			c := b.Cursor()
			var doomed [][]byte
			for k, _ := c.Seek([]byte(p)); k != nil && bytes.HasPrefix(k, []byte(p)); k, _ = c.Next() {
				doomed = append(doomed, append([]byte(nil), k...))
			}
			for _, k := range doomed {
				if err := b.Delete(k); err != nil {
					return err
				}
			}
		}
		return nil
	})
}

func (s *store) scan(prefix string, visit func(v []byte) error) error {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.db == nil {
		return errors.New("broker store closed")
	}
	return s.db.View(func(tx *bbolt.Tx) error {
		c := tx.Bucket([]byte(bucketName)).Cursor()
		for k, v := c.Seek([]byte(prefix)); k != nil && bytes.HasPrefix(k, []byte(prefix)); k, v = c.Next() {
			if err := visit(v); err != nil {
				return fmt.Errorf("decode %q: %w", k, err)
			}
		}
		return nil
	})
}

func subKey(clientID, filter string) string { return keySub + clientID + subKeySep + filter }
func inflightKey(clientID string, id uint16) string {
	return keyInflight + clientID + subKeySep + strconv.Itoa(int(id))
}

func (s *store) deleteSubscription(clientID, filter string) {
	s.del("delete subscription", ordered, subKey(clientID, filter))
}

func (s *store) deleteInflight(clientID string, pk packets.Packet) {
	s.del("delete inflight", ordered, inflightKey(clientID, pk.PacketID))
}

// ephemeral reports whether a session ends with its connection (MQTT 3.1.1
// clean session, MQTT 5 session expiry 0): the same rule mochi applies when
// the connection ends. Nothing of such a session is stored.
func ephemeral(cl *mqtt.Client) bool {
	if cl.Properties.ProtocolVersion == 5 {
		return cl.Properties.Props.SessionExpiryInterval == 0
	}
	return cl.Properties.Clean
}

func (s *store) OnSessionEstablished(cl *mqtt.Client, _ packets.Packet) { s.putClient(cl) }
func (s *store) OnWillSent(cl *mqtt.Client, _ packets.Packet)           { s.putClient(cl) }

func (s *store) putClient(cl *mqtt.Client) {
	if cl.Net.Inline || ephemeral(cl) {
		return
	}
	props := cl.Properties.Props.Copy(false)
	s.put("put client", durable, keyClient+cl.ID, &storage.Client{
		ID:              cl.ID,
		T:               storage.ClientKey,
		Remote:          cl.Net.Remote,
		Listener:        cl.Net.Listener,
		Username:        cl.Properties.Username,
		Clean:           cl.Properties.Clean,
		ProtocolVersion: cl.Properties.ProtocolVersion,
		Properties: storage.ClientProperties{
			SessionExpiryInterval:     props.SessionExpiryInterval,
			SessionExpiryIntervalFlag: props.SessionExpiryIntervalFlag,
			AuthenticationMethod:      props.AuthenticationMethod,
			AuthenticationData:        props.AuthenticationData,
			RequestProblemInfo:        props.RequestProblemInfo,
			RequestProblemInfoFlag:    props.RequestProblemInfoFlag,
			RequestResponseInfo:       props.RequestResponseInfo,
			ReceiveMaximum:            props.ReceiveMaximum,
			TopicAliasMaximum:         props.TopicAliasMaximum,
			User:                      props.User,
			MaximumPacketSize:         props.MaximumPacketSize,
		},
		Will: storage.ClientWill(cl.Properties.Will),
	})
}

// OnDisconnect forgets a session that ends with the connection (clean
// session / zero expiry), unless another connection took it over (then the
// stored state, if any, is the new connection's). The session gate orders
// this after a takeover's inheritance, so IsTakenOver is reliable here.
func (s *store) OnDisconnect(cl *mqtt.Client, _ error, expire bool) {
	if !expire || cl.Net.Inline || cl.IsTakenOver() || errors.Is(cl.StopCause(), packets.ErrSessionTakenOver) {
		return
	}
	s.forget(cl.ID)
}

func (s *store) OnClientExpired(cl *mqtt.Client) { s.forget(cl.ID) }

// forget is asynchronous: a crash before it lands leaves a session that
// mochi expires again on start (its connection is gone).
func (s *store) forget(clientID string) {
	s.del("delete client", ordered, keyClient+clientID)
	s.delPrefix("delete session", ordered, keySub+clientID+subKeySep, keyInflight+clientID+subKeySep)
}

// OnSubscribed persists granted subscriptions of persistent sessions, before
// the SUBACK.
func (s *store) OnSubscribed(cl *mqtt.Client, pk packets.Packet, codes []byte) {
	if cl.Net.Inline || ephemeral(cl) {
		return
	}
	for i, f := range pk.Filters {
		if i >= len(codes) || codes[i] > packets.CodeGrantedQos2.Code {
			continue
		}
		s.put("put subscription", durable, subKey(cl.ID, f.Filter), &storage.Subscription{
			ID:                subKey(cl.ID, f.Filter),
			T:                 storage.SubscriptionKey,
			Client:            cl.ID,
			Qos:               codes[i],
			Filter:            f.Filter,
			Identifier:        f.Identifier,
			NoLocal:           f.NoLocal,
			RetainHandling:    f.RetainHandling,
			RetainAsPublished: f.RetainAsPublished,
		})
	}
}

func (s *store) OnUnsubscribed(cl *mqtt.Client, pk packets.Packet) {
	if cl.Net.Inline || ephemeral(cl) {
		return
	}
	keys := make([]string, 0, len(pk.Filters))
	for _, f := range pk.Filters {
		keys = append(keys, subKey(cl.ID, f.Filter))
	}
	s.del("delete subscription", ordered, keys...)
}

func message(t, key, client string, pk packets.Packet) *storage.Message {
	props := pk.Properties.Copy(false)
	return &storage.Message{
		ID:          key,
		T:           t,
		Client:      client,
		Origin:      pk.Origin,
		FixedHeader: pk.FixedHeader,
		TopicName:   pk.TopicName,
		Payload:     pk.Payload,
		PacketID:    pk.PacketID,
		Created:     pk.Created,
		Properties: storage.MessageProperties{
			PayloadFormat:          props.PayloadFormat,
			PayloadFormatFlag:      props.PayloadFormatFlag,
			MessageExpiryInterval:  props.MessageExpiryInterval,
			ContentType:            props.ContentType,
			ResponseTopic:          props.ResponseTopic,
			CorrelationData:        props.CorrelationData,
			SubscriptionIdentifier: props.SubscriptionIdentifier,
			User:                   props.User,
		},
	}
}

func (s *store) OnRetainMessage(_ *mqtt.Client, pk packets.Packet, r int64) {
	key := keyRetained + pk.TopicName
	if r == -1 {
		s.del("delete retained", durable, key)
		return
	}
	s.put("put retained", durable, key, message(storage.RetainedKey, key, "", pk))
}

func (s *store) OnRetainedExpired(topic string) { s.del("expire retained", ordered, keyRetained+topic) }

// OnQosPublish stores a message queued for (or an inbound QoS 2 flow of) a
// persistent session. It does not wait: for a fan-out, the publish's
// pending entry is removed only after these writes (journal order); a
// resend rewrites an entry that is already stored.
//
// The inbound PUBACK that mochi briefly keeps in the publisher's inflight
// map is never stored: it lives only within processPublish, and the
// pending log covers that window.
func (s *store) OnQosPublish(cl *mqtt.Client, pk packets.Packet, sent int64, _ int) {
	if cl.Net.Inline || ephemeral(cl) || pk.FixedHeader.Type == packets.Puback {
		return
	}
	key := inflightKey(cl.ID, pk.PacketID)
	m := message(storage.InflightKey, key, cl.ID, pk)
	m.Sent = sent
	s.put("put inflight", ordered, key, m)
}

// OnQosComplete forgets a completed flow without waiting: if a crash loses
// the delete, the message is delivered once more, which QoS 1 allows.
func (s *store) OnQosComplete(cl *mqtt.Client, pk packets.Packet) {
	if cl.Net.Inline || ephemeral(cl) {
		return
	}
	s.del("delete inflight", ordered, inflightKey(cl.ID, pk.PacketID))
}

func (s *store) OnQosDropped(cl *mqtt.Client, pk packets.Packet) { s.OnQosComplete(cl, pk) }

// pendingKey identifies one accepted-but-not-yet-fanned-out publish. The
// packet's Created field is set by mochi before OnPublish and survives to
// OnPublished, but is only second-granular; origin and packet ID make it
// unique per client, since a client cannot reuse a packet ID before the
// acknowledgement.
func pendingKey(pk packets.Packet) string {
	return keyPending + pk.Origin + subKeySep + strconv.Itoa(int(pk.PacketID))
}

// OnPublish logs a QoS 1/2 publish durably before mochi acknowledges it,
// if a persistent session will queue it. Publishes that only reach
// sessions ending with their connections (or nobody) are not logged: a
// crash ends those sessions too.
func (s *store) OnPublish(cl *mqtt.Client, pk packets.Packet) (packets.Packet, error) {
	if cl.Net.Inline || pk.FixedHeader.Qos == 0 || (s.admit != nil && !s.admit(cl, pk)) {
		return pk, nil
	}
	key := pendingKey(pk)
	s.put("put pending", durable, key, message(keyPending, key, cl.ID, pk))
	s.logged.Store(key, struct{}{})
	return pk, nil
}

// OnPublished removes the pending entry after fan-out, without waiting
// (the journal commits it after the inflight entries fan-out queued). A
// publish by the platform itself (Broker.Publish) waits instead until the
// fan-out is durable, since it has no pending entry.
func (s *store) OnPublished(cl *mqtt.Client, pk packets.Packet) {
	if pk.FixedHeader.Qos == 0 {
		return
	}
	if cl.Net.Inline {
		s.write("flush", durable, func(*bbolt.Bucket) error { return nil })
		return
	}
	if key := pendingKey(pk); s.logged.CompareAndDelete(key, struct{}{}) {
		s.del("delete pending", ordered, key)
	}
}

// replayPending publishes again every message whose fan-out a crash
// interrupted, then forgets them. It runs after mochi restored sessions and
// before clients can act on them.
func (s *store) replayPending(srv *mqtt.Server) {
	var msgs []storage.Message
	err := s.scan(keyPending, func(v []byte) error {
		var m storage.Message
		if err := m.UnmarshalBinary(v); err != nil {
			return err
		}
		msgs = append(msgs, m)
		return nil
	})
	if err != nil {
		s.log.Error("broker store: reading pending publishes", "error", err)
		return
	}
	replayer := srv.NewClient(nil, mqtt.LocalListener, "fieldtrust-replay", true)
	for _, m := range msgs {
		pk := m.ToPacket()
		pk.FixedHeader.Retain = false // already retained before the acknowledgement
		if err := srv.InjectPacket(replayer, pk); err != nil {
			s.log.Error("broker store: replaying publish", "topic", pk.TopicName, "error", err)
			continue
		}
		s.del("delete pending", ordered, m.ID)
		s.log.Info("broker store: replayed publish interrupted by a crash", "topic", pk.TopicName, "origin", m.Origin)
	}
}

func decodeAll[T any, P interface {
	*T
	UnmarshalBinary([]byte) error
}](s *store, prefix string) ([]T, error) {
	var out []T
	err := s.scan(prefix, func(v []byte) error {
		var x T
		if err := P(&x).UnmarshalBinary(v); err != nil {
			return err
		}
		out = append(out, x)
		return nil
	})
	return out, err
}

func (s *store) StoredClients() ([]storage.Client, error) {
	return decodeAll[storage.Client](s, keyClient)
}

func (s *store) StoredSubscriptions() ([]storage.Subscription, error) {
	return decodeAll[storage.Subscription](s, keySub)
}

func (s *store) StoredInflightMessages() ([]storage.Message, error) {
	return decodeAll[storage.Message](s, keyInflight)
}

func (s *store) StoredRetainedMessages() ([]storage.Message, error) {
	return decodeAll[storage.Message](s, keyRetained)
}
