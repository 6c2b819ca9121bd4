package packet

import (
	"bytes"
	"encoding/hex"
	"errors"
	"reflect"
	"strings"
	"testing"
)

// decodeAll reads one whole packet from b.
func decodeAll(t testing.TB, version byte, b []byte, fromServer bool) (any, error) {
	t.Helper()
	h, err := ReadHeader(bytes.NewReader(b), 0)
	if err != nil {
		return nil, err
	}
	hl := 1 + varIntLen(h.Remaining)
	if len(b) != hl+h.Remaining {
		t.Fatalf("packet of %d bytes, header says %d", len(b), hl+h.Remaining)
	}
	return Decode(version, h, b[hl:], fromServer)
}

func unhex(t testing.TB, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(strings.ReplaceAll(s, " ", ""))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// Golden encodings, one comment per field.
func TestGoldenEncodings(t *testing.T) {
	var pubProps Properties
	pubProps.User = []UserProperty{{"a", "2"}}
	tests := []struct {
		name string
		got  []byte
		want string
	}{
		{"v3 CONNACK accepted, session present", AppendConnack(nil, V311, &Connack{SessionPresent: true}),
			"20 02" + // CONNACK, remaining 2
				"01" + // session present
				"00"}, // accepted
		{"v3 CONNACK not authorized from v5 code", AppendConnack(nil, V311, &Connack{Reason: NotAuthorized}),
			"20 02 00 05"},
		{"v5 CONNACK quota exceeded, no props", AppendConnack(nil, V5, &Connack{Reason: QuotaExceeded}),
			"20 03 00 97" + // flags, reason
				"00"}, // property length 0
		{"v5 PUBACK success: short form, no user properties copied", AppendAck(nil, V5, &Ack{Type: PUBACK, PacketID: 1}),
			"40 02 0001"},
		{"v5 PUBACK not authorized", AppendAck(nil, V5, &Ack{Type: PUBACK, PacketID: 7, Reason: NotAuthorized}),
			"40 03 0007 87"},
		{"PUBREL has flags 0010", AppendAck(nil, V311, &Ack{Type: PUBREL, PacketID: 2}),
			"62 02 0002"},
		{"v3 SUBACK maps failures to 0x80", AppendSuback(nil, V311, &Suback{PacketID: 3, Reasons: []byte{1, NotAuthorized}}),
			"90 04 0003 01 80"},
		{"v5 PUBLISH qos1 with a user property", AppendPublish(nil, V5, &Publish{QoS: 1, Topic: "a/b", PacketID: 9, Props: pubProps, Payload: []byte("x")}),
			"32 10" + // PUBLISH qos 1, remaining 16
				"0003 612f62" + // topic "a/b"
				"0009" + // packet id
				"07 26 0001 61 0001 32" + // properties: user property a=2
				"78"}, // payload
		{"v3 PUBLISH retain dup qos2", AppendPublish(nil, V311, &Publish{QoS: 2, Dup: true, Retain: true, Topic: "t", PacketID: 1}),
			"3d 05 0001 74 0001"},
		{"v5 DISCONNECT session taken over", AppendDisconnect(nil, V5, &Disconnect{Reason: SessionTakenOver}),
			"e0 01 8e"},
		{"PINGRESP", AppendPingresp(nil), "d0 00"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := hex.EncodeToString(tc.got); got != strings.ReplaceAll(tc.want, " ", "") {
				t.Fatalf("got  %s\nwant %s", got, strings.ReplaceAll(tc.want, " ", ""))
			}
		})
	}
}

// Round trips: what the encoder writes, the decoder reads back unchanged.
func TestRoundTrip(t *testing.T) {
	var props Properties
	props.PayloadFormat, props.MessageExpiry, props.ContentType = 1, 60, "application/cbor"
	props.Set(PropPayloadFormat)
	props.Set(PropMessageExpiry)
	props.Set(PropContentType)
	props.ResponseTopic, props.CorrelationData = "r/t", []byte{1, 2}
	props.Set(PropResponseTopic)
	props.Set(PropCorrelationData)
	props.SubscriptionIDs = []uint32{1, 268435455}
	props.User = []UserProperty{{"k", "v"}, {"k", "w"}}

	var cp Properties
	cp.SessionExpiry, cp.ReceiveMaximum, cp.MaximumPacketSize = 3600, 10, 1<<20
	cp.Set(PropSessionExpiry)
	cp.Set(PropReceiveMaximum)
	cp.Set(PropMaximumPacketSize)
	var wp Properties
	wp.WillDelay = 30
	wp.Set(PropWillDelay)

	pkts := []struct {
		version    byte
		fromServer bool
		p          any
		enc        func() []byte
	}{
		{V5, true, &Publish{QoS: 1, Topic: "a/b", PacketID: 7, Props: props, Payload: []byte("hello")}, nil},
		{V311, true, &Publish{QoS: 0, Retain: true, Topic: "a", Payload: []byte{}}, nil},
		{V5, false, &Connect{ProtocolName: "MQTT", Version: V5, CleanStart: true, KeepAlive: 30, ClientID: "c1", Props: cp,
			Will:         &Will{QoS: 1, Retain: true, Topic: "w/t", Payload: []byte("bye"), Props: wp},
			UsernameFlag: true, Username: []byte("u"), PasswordFlag: true, Password: []byte{0, 1}}, nil},
		{V311, false, &Connect{ProtocolName: "MQTT", Version: V311, KeepAlive: 60, ClientID: ""}, nil},
		{V5, false, &Subscribe{PacketID: 5, Props: Properties{SubscriptionIDs: []uint32{42}},
			Subs: []Subscription{{Filter: "a/+", QoS: 2, NoLocal: true, RetainAsPublished: true, RetainHandling: 2}, {Filter: "#", QoS: 0}}}, nil},
		{V5, false, &Unsubscribe{PacketID: 6, Filters: []string{"a/+", "b"}}, nil},
		{V5, false, &Ack{Type: PUBREC, PacketID: 3, Reason: QuotaExceeded}, nil},
		{V5, false, &Disconnect{Reason: DisconnectWithWill}, nil},
	}
	for i, tc := range pkts {
		var b []byte
		switch p := tc.p.(type) {
		case *Publish:
			b = AppendPublish(nil, tc.version, p)
			if PublishSize(tc.version, p) != len(b) {
				t.Errorf("%d: PublishSize %d, encoded %d", i, PublishSize(tc.version, p), len(b))
			}
		case *Connect:
			b = AppendConnect(nil, p)
		case *Subscribe:
			b = AppendSubscribe(nil, tc.version, p)
		case *Unsubscribe:
			b = AppendUnsubscribe(nil, tc.version, p)
		case *Ack:
			b = AppendAck(nil, tc.version, p)
		case *Disconnect:
			b = AppendDisconnect(nil, tc.version, p)
		}
		got, err := decodeAll(t, tc.version, b, tc.fromServer)
		if err != nil {
			t.Fatalf("%d (%T): %v\n%x", i, tc.p, err, b)
		}
		if !reflect.DeepEqual(normalize(got), normalize(tc.p)) {
			t.Errorf("%d: round trip\n got %+v\nwant %+v", i, got, tc.p)
		}
	}
}

// normalize treats nil and empty byte slices alike.
func normalize(p any) any {
	switch v := p.(type) {
	case *Publish:
		c := *v
		if len(c.Payload) == 0 {
			c.Payload = nil
		}
		return &c
	case *Connect:
		c := *v
		if c.Will != nil {
			w := *c.Will
			c.Will = &w
		}
		return &c
	}
	return p
}

// Hostile inputs: each is refused with the reason code the spec calls for.
func TestHostile(t *testing.T) {
	tests := []struct {
		name    string
		version byte
		hex     string
		code    byte
	}{
		{"reserved type 0", V5, "00 00", MalformedPacket},
		{"PUBREL with flags 0", V5, "60 02 0001", MalformedPacket},
		{"SUBSCRIBE with flags 0", V5, "80 07 0001 00 0001 61 00", MalformedPacket},
		{"PINGREQ with a body", V5, "c0 01 00", MalformedPacket},
		{"PUBLISH qos 3", V5, "36 05 0001 61 0001", MalformedPacket},
		{"PUBLISH qos 0 with dup", V5, "38 04 0001 61 00", MalformedPacket},
		{"PUBLISH wildcard topic", V5, "30 04 0001 2b 00", TopicNameInvalid},
		{"PUBLISH hash topic", V311, "30 03 0001 23", TopicNameInvalid},
		{"PUBLISH packet id 0", V5, "32 06 0001 61 0000 00", MalformedPacket},
		{"PUBLISH NUL in topic", V311, "30 03 0001 00", MalformedPacket},
		{"PUBLISH invalid utf-8 topic", V311, "30 04 0002 c328", MalformedPacket},
		{"PUBLISH surrogate in topic", V311, "30 05 0003 eda080", MalformedPacket},
		{"v3 PUBLISH empty topic", V311, "30 02 0000", MalformedPacket},
		{"v5 PUBLISH empty topic without alias", V5, "30 03 0000 00", ProtocolError},
		{"PUBLISH property length beyond packet", V5, "30 05 0001 61 05 01", MalformedPacket},
		{"PUBLISH property not allowed (session expiry)", V5, "30 09 0001 61 05 11 00000001", ProtocolError},
		{"PUBLISH duplicate content type", V5, "30 0c 0001 61 08 03 0001 61 03 0001 62", ProtocolError},
		{"PUBLISH subscription id from a client", V5, "30 06 0001 61 02 0b 01", ProtocolError},
		{"PUBLISH unknown property", V5, "30 06 0001 61 02 7f 00", MalformedPacket},
		{"PUBLISH payload format 2", V5, "30 06 0001 61 02 01 02", ProtocolError},
		{"remaining length 5 bytes", V5, "30 ff ff ff ff 7f", MalformedPacket},
		{"remaining length not minimal", V5, "c0 80 00", MalformedPacket},
		{"SUBSCRIBE no filters", V5, "82 03 0001 00", ProtocolError},
		{"SUBSCRIBE id 0", V5, "82 07 0000 00 0001 61 00", MalformedPacket},
		{"SUBSCRIBE subscription identifier 0", V5, "82 09 0001 02 0b 00 0001 61 00", ProtocolError},
		{"SUBSCRIBE qos 3", V5, "82 07 0001 00 0001 61 03", MalformedPacket},
		{"SUBSCRIBE retain handling 3", V5, "82 07 0001 00 0001 61 30", ProtocolError},
		{"SUBSCRIBE reserved option bits v5", V5, "82 07 0001 00 0001 61 40", MalformedPacket},
		{"SUBSCRIBE reserved option bits v3", V311, "82 06 0001 0001 61 04", MalformedPacket},
		{"SUBSCRIBE no local on shared", V5, "82 14 0001 00 000e 2473686172652f672f612f622f63 04", ProtocolError},
		{"UNSUBSCRIBE no filters", V5, "a2 03 0001 00", ProtocolError},
		{"PUBACK id 0", V5, "40 02 0000", MalformedPacket},
		{"PUBACK invalid reason 0x01", V5, "40 03 0001 01", ProtocolError},
		{"PUBREL reason 0x10", V5, "62 03 0001 10", ProtocolError},
		{"v3 DISCONNECT with body", V311, "e0 01 00", MalformedPacket},
		{"AUTH in 3.1.1", V311, "f0 00", MalformedPacket},
		{"CONNECT reserved flag", V5, "10 0e 0004 4d515454 05 01 001e 00 0001 61", MalformedPacket},
		{"CONNECT will qos 3", V5, "10 0d 0004 4d515454 05 1c 001e 00 0000", MalformedPacket},
		{"CONNECT will retain without will", V5, "10 0d 0004 4d515454 05 20 001e 00 0000", MalformedPacket},
		{"CONNECT v3 password without user name", V311, "10 0f 0004 4d515454 04 40 001e 0000 0001 70", MalformedPacket},
		{"CONNECT unknown protocol name", V5, "10 0b 0002 686a 05 02 001e 00 0000", UnsupportedProtocol},
		{"CONNECT MQTT 3.1", V5, "10 0e 0006 4d5149736470 03 02 001e 0000", UnsupportedProtocol},
		{"CONNECT level 6", V5, "10 0c 0004 4d515454 06 02 001e 0000", UnsupportedProtocol},
		{"CONNECT trailing byte", V311, "10 0d 0004 4d515454 04 02 001e 0000 00", MalformedPacket},
		{"CONNECT receive maximum 0", V5, "10 10 0004 4d515454 05 02 001e 03 210000 0000", ProtocolError},
		{"CONNECT auth data without method", V5, "10 10 0004 4d515454 05 02 001e 03 160000 0000", ProtocolError},
		{"CONNECT will topic with wildcard", V311, "10 11 0004 4d515454 04 06 001e 0000 0001 23 0000", TopicNameInvalid},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := decodeAll(t, tc.version, unhex(t, tc.hex), false)
			var pe *Error
			if !errors.As(err, &pe) {
				t.Fatalf("err = %v; want a packet error 0x%02x", err, tc.code)
			}
			if pe.Code != tc.code {
				t.Fatalf("code 0x%02x (%v); want 0x%02x", pe.Code, pe, tc.code)
			}
		})
	}
}

func TestReadHeaderLimit(t *testing.T) {
	b := AppendPublish(nil, V311, &Publish{Topic: "a", Payload: make([]byte, 100)})
	_, err := ReadHeader(bytes.NewReader(b), 50)
	var pe *Error
	if !errors.As(err, &pe) || pe.Code != PacketTooLarge {
		t.Fatalf("err = %v; want PacketTooLarge", err)
	}
	if _, err := ReadHeader(bytes.NewReader(b), len(b)); err != nil {
		t.Fatalf("at the limit: %v", err)
	}
}

// FuzzDecode: no input panics or allocates beyond its size; whatever
// decodes re-encodes to something that decodes to the same value.
func FuzzDecode(f *testing.F) {
	seeds := []string{
		"30 0f 0003 612f62 0009 07 26 0001 61 0001 32 78",
		"10 10 0004 4d515454 05 02 001e 03 210001 0000",
		"82 08 0001 02 0b 01 0001 61 00",
		"a2 05 0001 00 0001 61",
		"40 03 0007 87",
		"e0 01 8e",
		"f0 00",
		"c0 00",
	}
	for _, s := range seeds {
		b, _ := hex.DecodeString(strings.ReplaceAll(s, " ", ""))
		f.Add(byte(V5), false, b)
		f.Add(byte(V311), false, b)
	}
	f.Fuzz(func(t *testing.T, version byte, fromServer bool, b []byte) {
		if version != V311 {
			version = V5
		}
		h, err := ReadHeader(bytes.NewReader(b), 1<<16)
		if err != nil {
			return
		}
		hl := 1 + varIntLen(h.Remaining)
		if len(b) < hl+h.Remaining {
			return
		}
		p, err := Decode(version, h, b[hl:hl+h.Remaining], fromServer)
		if err != nil {
			return
		}
		var again []byte
		switch v := p.(type) {
		case *Publish:
			again = AppendPublish(nil, version, v)
		case *Subscribe:
			again = AppendSubscribe(nil, version, v)
		case *Unsubscribe:
			again = AppendUnsubscribe(nil, version, v)
		case *Ack:
			again = AppendAck(nil, version, v)
		case *Connect:
			again = AppendConnect(nil, v)
			version = v.Version
		default:
			return
		}
		p2, err := decodeAll(t, version, again, fromServer)
		if err != nil {
			t.Fatalf("re-encoded %T does not decode: %v\n%x", p, err, again)
		}
		if !reflect.DeepEqual(normalize(p), normalize(p2)) {
			t.Fatalf("round trip changed the packet\n got %+v\nwant %+v", p2, p)
		}
	})
}
