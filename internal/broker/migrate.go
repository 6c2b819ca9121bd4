package broker

import (
	"bytes"
	"encoding/json"
	"fmt"
	"log/slog"
	"sort"
	"strings"
	"time"

	"go.etcd.io/bbolt"

	"github.com/fieldtrust/fieldtrust/internal/broker/packet"
)

// migrateV1 converts a state file written by the broker's first version
// (mochi-mqtt's storage records, JSON, under cl/ sub/ if/ ret/ pend/) into
// the current layout, so an upgrade loses no persistent session, no
// queued QoS 1/2 message and no retained message. What cannot be carried
// over is said in the log: stored wills (they lack the certificate chain
// needed to identify them again before they are sent).
func migrateV1(b *bbolt.Bucket, log *slog.Logger) error {
	type v1Props struct {
		CorrelationData []byte `json:"correlationData"`
		User            []struct {
			K string `json:"k"`
			V string `json:"v"`
		} `json:"user"`
		ContentType   string `json:"contentType"`
		ResponseTopic string `json:"responseTopic"`
		MessageExpiry uint32 `json:"messageExpiry"`
		PayloadFormat byte   `json:"payloadFormat"`
		PayloadFlag   bool   `json:"payloadFormatFlag"`
	}
	type v1Message struct {
		Properties  v1Props `json:"properties"`
		Payload     []byte  `json:"payload"`
		Client      string  `json:"client"`
		Origin      string  `json:"origin"`
		TopicName   string  `json:"topic_name"`
		FixedHeader struct {
			Qos    byte `json:"qos"`
			Retain bool `json:"retain"`
		} `json:"fixedheader"`
		Created  int64  `json:"created"`
		PacketID uint16 `json:"packet_id"`
	}
	type v1Client struct {
		ID         string `json:"id"`
		Username   []byte `json:"username"`
		Version    byte   `json:"protocolVersion"`
		Clean      bool   `json:"clean"`
		Properties struct {
			SessionExpiry uint32 `json:"sessionExpiryInterval"`
		} `json:"properties"`
		Will struct {
			Flag uint32 `json:"flag"`
		} `json:"will"`
	}
	type v1Sub struct {
		Client         string `json:"client"`
		Filter         string `json:"filter"`
		Identifier     int    `json:"identifier"`
		RetainHandling byte   `json:"retain_handling"`
		Qos            byte   `json:"qos"`
		RAP            bool   `json:"retain_as_pub"`
		NoLocal        bool   `json:"no_local"`
	}
	props := func(p v1Props) packet.Properties {
		var out packet.Properties
		if p.PayloadFlag {
			out.PayloadFormat = p.PayloadFormat
			out.Set(packet.PropPayloadFormat)
		}
		if p.MessageExpiry > 0 {
			out.MessageExpiry = p.MessageExpiry
			out.Set(packet.PropMessageExpiry)
		}
		if p.ContentType != "" {
			out.ContentType = p.ContentType
			out.Set(packet.PropContentType)
		}
		if p.ResponseTopic != "" {
			out.ResponseTopic = p.ResponseTopic
			out.Set(packet.PropResponseTopic)
		}
		if len(p.CorrelationData) > 0 {
			out.CorrelationData = p.CorrelationData
			out.Set(packet.PropCorrelationData)
		}
		for _, u := range p.User {
			out.User = append(out.User, packet.UserProperty{Key: u.K, Value: u.V})
		}
		return out
	}
	publish := func(m v1Message) []byte {
		msg := &message{topic: m.TopicName, payload: m.Payload, qos: m.FixedHeader.Qos, retain: m.FixedHeader.Retain, props: props(m.Properties)}
		return messagePublish(msg)
	}

	var (
		old                            [][]byte
		sessions, subs, queued, retain int
		wills                          int
		mid                            uint64
		inflight                       = map[string][]v1Message{}
		next                           = map[string]uint64{}
	)
	put := func(key string, v any) error {
		data, err := encMode.Marshal(v)
		if err != nil {
			return err
		}
		return b.Put([]byte(key), data)
	}
	c := b.Cursor()
	for k, v := c.First(); k != nil; k, v = c.Next() {
		key := string(k)
		var err error
		switch {
		case strings.HasPrefix(key, "cl/"):
			var cl v1Client
			if err = json.Unmarshal(v, &cl); err != nil {
				break
			}
			expiry := uint32(DefaultAccountLimits.SessionExpiry / time.Second)
			if cl.Version == packet.V5 {
				expiry = cl.Properties.SessionExpiry
			}
			if cl.Will.Flag != 0 {
				wills++
			}
			_, client, _ := strings.Cut(cl.ID, sessionSep)
			err = put(keySession+cl.ID, sessionRecord{Subject: string(cl.Username), ClientID: client, Version: cl.Version,
				Expiry: expiry, DisconnectedAt: time.Now().UnixMilli()})
			sessions++
		case strings.HasPrefix(key, "sub/"):
			var s v1Sub
			if err = json.Unmarshal(v, &s); err != nil {
				break
			}
			err = put(keySub+s.Client+sep+s.Filter, subRecord{QoS: s.Qos, NoLocal: s.NoLocal, RAP: s.RAP,
				RetainHandling: s.RetainHandling, ID: uint32(s.Identifier)})
			subs++
		case strings.HasPrefix(key, "if/"):
			var m v1Message
			if err = json.Unmarshal(v, &m); err != nil {
				break
			}
			inflight[m.Client] = append(inflight[m.Client], m)
		case strings.HasPrefix(key, "ret/"):
			var m v1Message
			if err = json.Unmarshal(v, &m); err != nil {
				break
			}
			m.FixedHeader.Retain = true
			err = put(keyRetained+m.TopicName, retainedRecord{Publish: publish(m), Created: m.Created * 1000})
			retain++
		case strings.HasPrefix(key, "pend/"):
			// A publish acknowledged before its fan-out was durable (a
			// crash in between): nothing to migrate it to but the
			// inflight entries it may already have produced.
		default:
			continue
		}
		if err != nil {
			return fmt.Errorf("migrate %q: %w", key, err)
		}
		old = append(old, bytes.Clone(k))
	}
	for client, msgs := range inflight {
		sort.Slice(msgs, func(i, j int) bool {
			if msgs[i].Created != msgs[j].Created {
				return msgs[i].Created < msgs[j].Created
			}
			return msgs[i].PacketID < msgs[j].PacketID
		})
		for _, m := range msgs {
			seq := next[client]
			next[client] = seq + 1
			mid++
			if err := put(midKey(mid), messageRecord{Publish: publish(m), Origin: m.Origin, Created: m.Created * 1000}); err != nil {
				return err
			}
			if err := put(seqKey(client, seq), deliveryRecord{MID: mid, QoS: m.FixedHeader.Qos, PID: m.PacketID, State: stateSent}); err != nil {
				return err
			}
			queued++
		}
	}
	// Sessions' sequence counters start after what was migrated.
	for client, n := range next {
		k := []byte(keySession + client)
		v := b.Get(k)
		if v == nil {
			continue
		}
		var rec sessionRecord
		if err := decMode.Unmarshal(v, &rec); err != nil {
			return err
		}
		rec.NextSeq = n
		if err := put(string(k), rec); err != nil {
			return err
		}
	}
	for _, k := range old {
		if err := b.Delete(k); err != nil {
			return err
		}
	}
	if len(old) > 0 {
		log.Warn("broker state migrated from format 1", "sessions", sessions, "subscriptions", subs,
			"queued_messages", queued, "retained", retain, "wills_dropped", wills)
	}
	return nil
}
