package packet

import (
	"errors"
	"io"
	"strings"
)

// Header is a decoded fixed header.
type Header struct {
	Type      Type
	Flags     byte // low nibble of the first byte
	Remaining int  // Remaining Length: bytes after the fixed header
}

// Size is the whole packet's size: fixed header plus Remaining Length.
func (h Header) Size() int { return 1 + varIntLen(h.Remaining) + h.Remaining }

// ErrTooLarge is returned (wrapped in an *Error with PacketTooLarge) by
// ReadHeader when a packet exceeds the caller's limit.
var ErrTooLarge = errors.New("packet too large")

// ReadHeader reads a fixed header from r. A packet larger than max (its
// whole size) is refused before its body is read, with an *Error whose
// code is PacketTooLarge. io.EOF means the peer closed between packets.
func ReadHeader(r io.Reader, max int) (Header, error) {
	var b [1]byte
	if _, err := io.ReadFull(r, b[:]); err != nil {
		return Header{}, err
	}
	h := Header{Type: Type(b[0] >> 4), Flags: b[0] & 0x0f}
	mult := 1
	for i := 0; ; i++ {
		if i == 4 {
			return h, malformed("remaining length longer than 4 bytes")
		}
		if _, err := io.ReadFull(r, b[:]); err != nil {
			return h, noEOF(err)
		}
		h.Remaining += int(b[0]&0x7f) * mult
		if b[0]&0x80 == 0 {
			if i > 0 && b[0] == 0 {
				return h, malformed("remaining length not minimally encoded")
			}
			break
		}
		mult <<= 7
	}
	if h.Type == 0 {
		return h, malformed("reserved packet type 0")
	}
	if max > 0 && h.Size() > max {
		return h, &Error{Code: PacketTooLarge, Msg: "packet of " + itoa(h.Size()) + " bytes exceeds the maximum of " + itoa(max)}
	}
	return h, nil
}

func noEOF(err error) error {
	if errors.Is(err, io.EOF) {
		return io.ErrUnexpectedEOF
	}
	return err
}

func itoa(v int) string {
	if v == 0 {
		return "0"
	}
	var b [20]byte
	i := len(b)
	for v > 0 {
		i--
		b[i] = byte('0' + v%10)
		v /= 10
	}
	return string(b[i:])
}

// requiredFlags are the fixed-header flags of every type but PUBLISH
// (MQTT 5 §2.1.3); anything else is malformed.
var requiredFlags = [16]byte{PUBREL: 2, SUBSCRIBE: 2, UNSUBSCRIBE: 2}

// Decode decodes the body of a packet whose fixed header is h, for a
// connection speaking version (V311 or V5; ignored for CONNECT, which
// carries its own). fromServer selects the rules for packets a server
// sends (several subscription identifiers in a PUBLISH). The returned
// value is one of *Connect, *Connack, *Publish, *Ack, *Subscribe, *Suback,
// *Unsubscribe, *Unsuback, *Pingreq, *Pingresp, *Disconnect, *Auth. Byte
// slices in it (payloads, binary properties) alias body.
func Decode(version byte, h Header, body []byte, fromServer bool) (any, error) {
	if len(body) != h.Remaining {
		return nil, malformed("body of %d bytes for remaining length %d", len(body), h.Remaining)
	}
	if h.Type != PUBLISH && h.Flags != requiredFlags[h.Type] {
		return nil, malformed("%s with fixed-header flags %04b", h.Type, h.Flags)
	}
	v5 := version == V5
	switch h.Type {
	case CONNECT:
		return decodeConnect(body)
	case CONNACK:
		return decodeConnack(body, v5)
	case PUBLISH:
		return decodePublish(h.Flags, body, v5, fromServer)
	case PUBACK, PUBREC, PUBREL, PUBCOMP:
		return decodeAck(h.Type, body, v5)
	case SUBSCRIBE:
		return decodeSubscribe(body, v5)
	case SUBACK:
		return decodeSuback(body, v5)
	case UNSUBSCRIBE:
		return decodeUnsubscribe(body, v5)
	case UNSUBACK:
		return decodeUnsuback(body, v5)
	case PINGREQ, PINGRESP:
		if len(body) != 0 {
			return nil, malformed("%s with a body", h.Type)
		}
		if h.Type == PINGREQ {
			return &Pingreq{}, nil
		}
		return &Pingresp{}, nil
	case DISCONNECT:
		return decodeDisconnect(body, v5)
	case AUTH:
		if !v5 {
			return nil, malformed("AUTH in MQTT 3.1.1")
		}
		return decodeAuth(body)
	}
	return nil, malformed("packet type %d", h.Type)
}

func decodeConnect(b []byte) (*Connect, error) {
	c := &Connect{}
	var err error
	if c.ProtocolName, b, err = decodeString(b); err != nil {
		return nil, err
	}
	if len(b) < 4 {
		return nil, malformed("CONNECT variable header truncated")
	}
	c.Version = b[0]
	flags := b[1]
	c.KeepAlive = uint16(b[2])<<8 | uint16(b[3])
	b = b[4:]
	// Protocol name and level first: an unknown protocol is answered with
	// "unsupported protocol version", not a decoding error of what follows.
	switch {
	case c.ProtocolName == "MQTT" && (c.Version == V311 || c.Version == V5):
	case c.ProtocolName == "MQIsdp" && c.Version == 3:
		return c, &Error{Code: UnsupportedProtocol, Msg: "MQTT 3.1 is not supported; use 3.1.1 or 5"}
	case c.ProtocolName == "MQTT":
		return c, &Error{Code: UnsupportedProtocol, Msg: "unsupported protocol level " + itoa(int(c.Version))}
	default:
		return c, &Error{Code: UnsupportedProtocol, Msg: "unknown protocol name " + quote(c.ProtocolName)}
	}
	v5 := c.Version == V5
	if flags&0x01 != 0 {
		return nil, malformed("CONNECT reserved flag set")
	}
	c.CleanStart = flags&0x02 != 0
	willFlag := flags&0x04 != 0
	willQoS := (flags >> 3) & 0x03
	willRetain := flags&0x20 != 0
	c.PasswordFlag = flags&0x40 != 0
	c.UsernameFlag = flags&0x80 != 0
	if willQoS == 3 {
		return nil, malformed("will QoS 3")
	}
	if !willFlag && (willQoS != 0 || willRetain) {
		return nil, malformed("will QoS or retain without the will flag")
	}
	if !v5 && c.PasswordFlag && !c.UsernameFlag {
		return nil, malformed("password without user name")
	}
	if v5 {
		if b, err = decodeProps(b, ctxConnect, &c.Props, false); err != nil {
			return nil, err
		}
		if c.Props.Has(PropAuthData) && !c.Props.Has(PropAuthMethod) {
			return nil, protocolError("authentication data without a method")
		}
	}
	if c.ClientID, b, err = decodeString(b); err != nil {
		return nil, err
	}
	if willFlag {
		w := &Will{QoS: willQoS, Retain: willRetain}
		if v5 {
			if b, err = decodeProps(b, ctxWill, &w.Props, false); err != nil {
				return nil, err
			}
		}
		if w.Topic, b, err = decodeString(b); err != nil {
			return nil, err
		}
		if err := checkTopicName(w.Topic); err != nil {
			return nil, err
		}
		if w.Payload, b, err = decodeBinary(b); err != nil {
			return nil, err
		}
		c.Will = w
	}
	if c.UsernameFlag {
		if c.Username, b, err = decodeBinary(b); err != nil {
			return nil, err
		}
		if !ValidString(c.Username) {
			return nil, malformed("user name is not valid MQTT UTF-8")
		}
	}
	if c.PasswordFlag {
		if c.Password, b, err = decodeBinary(b); err != nil {
			return nil, err
		}
	}
	if len(b) != 0 {
		return nil, malformed("%d bytes after the CONNECT payload", len(b))
	}
	return c, nil
}

func quote(s string) string {
	if len(s) > 32 {
		s = s[:32] + "…"
	}
	return "\"" + strings.ToValidUTF8(s, "?") + "\""
}

func decodeConnack(b []byte, v5 bool) (*Connack, error) {
	if len(b) < 2 {
		return nil, malformed("CONNACK truncated")
	}
	if b[0]&^1 != 0 {
		return nil, malformed("CONNACK reserved flags set")
	}
	c := &Connack{SessionPresent: b[0]&1 != 0, Reason: b[1]}
	b = b[2:]
	if v5 {
		var err error
		if b, err = decodeProps(b, ctxConnack, &c.Props, true); err != nil {
			return nil, err
		}
	}
	if len(b) != 0 {
		return nil, malformed("bytes after CONNACK")
	}
	return c, nil
}

// checkTopicName applies the wire rules for a topic name: no wildcard
// characters (MQTT 5 §4.7.3; NUL and encoding are checked by
// decodeString). Policy on the topic (levels, length, $-topics) is the
// broker's.
func checkTopicName(t string) error {
	if strings.ContainsAny(t, "+#") {
		return &Error{Code: TopicNameInvalid, Msg: "topic name with a wildcard"}
	}
	return nil
}

func decodePublish(flags byte, b []byte, v5, fromServer bool) (*Publish, error) {
	p := &Publish{Dup: flags&0x08 != 0, QoS: (flags >> 1) & 0x03, Retain: flags&0x01 != 0}
	if p.QoS == 3 {
		return nil, malformed("PUBLISH with QoS 3")
	}
	if p.QoS == 0 && p.Dup {
		return nil, malformed("QoS 0 PUBLISH with DUP set")
	}
	var err error
	if p.Topic, b, err = decodeString(b); err != nil {
		return nil, err
	}
	if err := checkTopicName(p.Topic); err != nil {
		return nil, err
	}
	if p.QoS > 0 {
		if p.PacketID, b, err = decodeUint16(b); err != nil {
			return nil, err
		}
		if p.PacketID == 0 {
			return nil, malformed("PUBLISH with packet identifier 0")
		}
	}
	if v5 {
		if b, err = decodeProps(b, ctxPublish, &p.Props, fromServer); err != nil {
			return nil, err
		}
		if !fromServer && p.Props.Has(PropSubscriptionID) {
			return nil, protocolError("PUBLISH from a client with a subscription identifier")
		}
		if p.Topic == "" && !p.Props.Has(PropTopicAlias) {
			return nil, protocolError("PUBLISH without topic name or topic alias")
		}
	} else if p.Topic == "" {
		return nil, malformed("PUBLISH without topic name")
	}
	p.Payload = b
	return p, nil
}

func decodeAck(t Type, b []byte, v5 bool) (*Ack, error) {
	a := &Ack{Type: t}
	var err error
	if a.PacketID, b, err = decodeUint16(b); err != nil {
		return nil, err
	}
	if a.PacketID == 0 {
		return nil, malformed("%s with packet identifier 0", t)
	}
	if v5 && len(b) > 0 {
		a.Reason = b[0]
		b = b[1:]
		if !validAckReason(t, a.Reason) {
			return nil, protocolError("%s with reason 0x%02x", t, a.Reason)
		}
		if len(b) > 0 {
			if b, err = decodeProps(b, ctxAck, &a.Props, false); err != nil {
				return nil, err
			}
		}
	}
	if len(b) != 0 {
		return nil, malformed("bytes after %s", t)
	}
	return a, nil
}

// validAckReason: the reason codes MQTT 5 defines for each acknowledgement
// (§3.4.2.1, §3.5.2.1, §3.6.2.1, §3.7.2.1).
func validAckReason(t Type, r byte) bool {
	switch t {
	case PUBREL, PUBCOMP:
		return r == Success || r == PacketIDNotFound
	}
	switch r {
	case Success, NoMatchingSubscribers, UnspecifiedError, ImplementationSpecific, NotAuthorized,
		TopicNameInvalid, PacketIDInUse, QuotaExceeded, PayloadFormatInvalid:
		return true
	}
	return false
}

func decodeSubscribe(b []byte, v5 bool) (*Subscribe, error) {
	s := &Subscribe{}
	var err error
	if s.PacketID, b, err = decodeUint16(b); err != nil {
		return nil, err
	}
	if s.PacketID == 0 {
		return nil, malformed("SUBSCRIBE with packet identifier 0")
	}
	if v5 {
		if b, err = decodeProps(b, ctxSubscribe, &s.Props, false); err != nil {
			return nil, err
		}
	}
	for len(b) > 0 {
		var sub Subscription
		if sub.Filter, b, err = decodeString(b); err != nil {
			return nil, err
		}
		if len(b) < 1 {
			return nil, malformed("subscription options missing")
		}
		o := b[0]
		b = b[1:]
		sub.QoS = o & 0x03
		if sub.QoS == 3 {
			return nil, malformed("subscription with QoS 3")
		}
		if v5 {
			if o&0xc0 != 0 {
				return nil, malformed("subscription options reserved bits set")
			}
			sub.NoLocal = o&0x04 != 0
			sub.RetainAsPublished = o&0x08 != 0
			sub.RetainHandling = (o >> 4) & 0x03
			if sub.RetainHandling == 3 {
				return nil, protocolError("retain handling 3")
			}
			if sub.NoLocal && strings.HasPrefix(sub.Filter, "$share/") {
				return nil, protocolError("no local on a shared subscription")
			}
		} else if o&0xfc != 0 {
			return nil, malformed("subscription options reserved bits set")
		}
		s.Subs = append(s.Subs, sub)
	}
	if len(s.Subs) == 0 {
		return nil, protocolError("SUBSCRIBE without a topic filter")
	}
	return s, nil
}

func decodeSuback(b []byte, v5 bool) (*Suback, error) {
	s := &Suback{}
	var err error
	if s.PacketID, b, err = decodeUint16(b); err != nil {
		return nil, err
	}
	if v5 {
		if b, err = decodeProps(b, ctxSuback, &s.Props, true); err != nil {
			return nil, err
		}
	}
	if len(b) == 0 {
		return nil, protocolError("SUBACK without reason codes")
	}
	s.Reasons = b
	return s, nil
}

func decodeUnsubscribe(b []byte, v5 bool) (*Unsubscribe, error) {
	u := &Unsubscribe{}
	var err error
	if u.PacketID, b, err = decodeUint16(b); err != nil {
		return nil, err
	}
	if u.PacketID == 0 {
		return nil, malformed("UNSUBSCRIBE with packet identifier 0")
	}
	if v5 {
		if b, err = decodeProps(b, ctxUnsubscribe, &u.Props, false); err != nil {
			return nil, err
		}
	}
	for len(b) > 0 {
		var f string
		if f, b, err = decodeString(b); err != nil {
			return nil, err
		}
		u.Filters = append(u.Filters, f)
	}
	if len(u.Filters) == 0 {
		return nil, protocolError("UNSUBSCRIBE without a topic filter")
	}
	return u, nil
}

func decodeUnsuback(b []byte, v5 bool) (*Unsuback, error) {
	u := &Unsuback{}
	var err error
	if u.PacketID, b, err = decodeUint16(b); err != nil {
		return nil, err
	}
	if v5 {
		if b, err = decodeProps(b, ctxSuback, &u.Props, true); err != nil {
			return nil, err
		}
		u.Reasons = b
	} else if len(b) != 0 {
		return nil, malformed("bytes after UNSUBACK")
	}
	return u, nil
}

func decodeDisconnect(b []byte, v5 bool) (*Disconnect, error) {
	d := &Disconnect{}
	if !v5 {
		if len(b) != 0 {
			return nil, malformed("MQTT 3.1.1 DISCONNECT with a body")
		}
		return d, nil
	}
	if len(b) == 0 {
		return d, nil
	}
	d.Reason = b[0]
	b = b[1:]
	if len(b) > 0 {
		var err error
		if b, err = decodeProps(b, ctxDisconnect, &d.Props, false); err != nil {
			return nil, err
		}
	}
	if len(b) != 0 {
		return nil, malformed("bytes after DISCONNECT")
	}
	return d, nil
}

func decodeAuth(b []byte) (*Auth, error) {
	a := &Auth{}
	if len(b) == 0 {
		return a, nil
	}
	a.Reason = b[0]
	b = b[1:]
	if a.Reason != Success && a.Reason != ContinueAuthentication && a.Reason != ReAuthenticate {
		return nil, protocolError("AUTH with reason 0x%02x", a.Reason)
	}
	if len(b) > 0 {
		var err error
		if b, err = decodeProps(b, ctxAuth, &a.Props, false); err != nil {
			return nil, err
		}
	}
	if len(b) != 0 {
		return nil, malformed("bytes after AUTH")
	}
	return a, nil
}
