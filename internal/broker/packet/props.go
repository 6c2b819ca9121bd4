package packet

import (
	"encoding/binary"
	"math/bits"
	"unicode/utf8"
)

// MQTT 5 property identifiers (§2.2.2.2).
const (
	PropPayloadFormat        byte = 0x01
	PropMessageExpiry        byte = 0x02
	PropContentType          byte = 0x03
	PropResponseTopic        byte = 0x08
	PropCorrelationData      byte = 0x09
	PropSubscriptionID       byte = 0x0B
	PropSessionExpiry        byte = 0x11
	PropAssignedClientID     byte = 0x12
	PropServerKeepAlive      byte = 0x13
	PropAuthMethod           byte = 0x15
	PropAuthData             byte = 0x16
	PropRequestProblemInfo   byte = 0x17
	PropWillDelay            byte = 0x18
	PropRequestResponseInfo  byte = 0x19
	PropResponseInfo         byte = 0x1A
	PropServerReference      byte = 0x1C
	PropReasonString         byte = 0x1F
	PropReceiveMaximum       byte = 0x21
	PropTopicAliasMaximum    byte = 0x22
	PropTopicAlias           byte = 0x23
	PropMaximumQoS           byte = 0x24
	PropRetainAvailable      byte = 0x25
	PropUser                 byte = 0x26
	PropMaximumPacketSize    byte = 0x27
	PropWildcardSubAvailable byte = 0x28
	PropSubIDAvailable       byte = 0x29
	PropSharedSubAvailable   byte = 0x2A
)

// UserProperty is one name/value pair; order and repetition are kept.
type UserProperty struct{ Key, Value string }

// Properties holds every MQTT 5 property. Has reports which are present
// (numeric and byte properties have meaningful zero values, so presence is
// tracked separately). User and SubscriptionIDs are present when non-empty.
type Properties struct {
	set uint64 // bit i: property with identifier i is present

	PayloadFormat        byte
	MessageExpiry        uint32
	ContentType          string
	ResponseTopic        string
	CorrelationData      []byte
	SubscriptionIDs      []uint32 // several in a server PUBLISH, one in SUBSCRIBE
	SessionExpiry        uint32
	AssignedClientID     string
	ServerKeepAlive      uint16
	AuthMethod           string
	AuthData             []byte
	RequestProblemInfo   byte
	WillDelay            uint32
	RequestResponseInfo  byte
	ResponseInfo         string
	ServerReference      string
	ReasonString         string
	ReceiveMaximum       uint16
	TopicAliasMaximum    uint16
	TopicAlias           uint16
	MaximumQoS           byte
	RetainAvailable      byte
	User                 []UserProperty
	MaximumPacketSize    uint32
	WildcardSubAvailable byte
	SubIDAvailable       byte
	SharedSubAvailable   byte
}

// Has reports whether the property with identifier id is present.
func (p *Properties) Has(id byte) bool {
	switch id {
	case PropUser:
		return len(p.User) > 0
	case PropSubscriptionID:
		return len(p.SubscriptionIDs) > 0
	}
	return id < 64 && p.set&(1<<id) != 0
}

// Set marks the property with identifier id as present (its field must be
// assigned by the caller). For User and SubscriptionIDs, appending is
// enough.
func (p *Properties) Set(id byte) { p.set |= 1 << id }

// Clear marks the property as absent.
func (p *Properties) Clear(id byte) {
	p.set &^= 1 << id
	switch id {
	case PropUser:
		p.User = nil
	case PropSubscriptionID:
		p.SubscriptionIDs = nil
	}
}

// kind of value a property carries.
type propKind byte

const (
	kByte propKind = iota + 1
	kUint16
	kUint32
	kVarInt
	kString
	kBinary
	kPair
)

var propKinds = [64]propKind{
	PropPayloadFormat: kByte, PropMessageExpiry: kUint32, PropContentType: kString,
	PropResponseTopic: kString, PropCorrelationData: kBinary, PropSubscriptionID: kVarInt,
	PropSessionExpiry: kUint32, PropAssignedClientID: kString, PropServerKeepAlive: kUint16,
	PropAuthMethod: kString, PropAuthData: kBinary, PropRequestProblemInfo: kByte,
	PropWillDelay: kUint32, PropRequestResponseInfo: kByte, PropResponseInfo: kString,
	PropServerReference: kString, PropReasonString: kString, PropReceiveMaximum: kUint16,
	PropTopicAliasMaximum: kUint16, PropTopicAlias: kUint16, PropMaximumQoS: kByte,
	PropRetainAvailable: kByte, PropUser: kPair, PropMaximumPacketSize: kUint32,
	PropWildcardSubAvailable: kByte, PropSubIDAvailable: kByte, PropSharedSubAvailable: kByte,
}

// propContext is where a property block appears; it decides which
// properties are allowed (MQTT 5 §2.2.2.2, the table's last column).
type propContext byte

const (
	ctxConnect propContext = iota
	ctxConnack
	ctxPublish
	ctxAck // PUBACK, PUBREC, PUBREL, PUBCOMP
	ctxSubscribe
	ctxSuback // SUBACK, UNSUBACK
	ctxUnsubscribe
	ctxDisconnect
	ctxAuth
	ctxWill
)

func mask(ids ...byte) uint64 {
	var m uint64
	for _, id := range ids {
		m |= 1 << id
	}
	return m
}

var allowed = [...]uint64{
	ctxConnect: mask(PropSessionExpiry, PropAuthMethod, PropAuthData, PropRequestProblemInfo,
		PropRequestResponseInfo, PropReceiveMaximum, PropTopicAliasMaximum, PropUser, PropMaximumPacketSize),
	ctxConnack: mask(PropSessionExpiry, PropAssignedClientID, PropServerKeepAlive, PropAuthMethod,
		PropAuthData, PropResponseInfo, PropServerReference, PropReasonString, PropReceiveMaximum,
		PropTopicAliasMaximum, PropMaximumQoS, PropRetainAvailable, PropUser, PropMaximumPacketSize,
		PropWildcardSubAvailable, PropSubIDAvailable, PropSharedSubAvailable),
	ctxPublish: mask(PropPayloadFormat, PropMessageExpiry, PropContentType, PropResponseTopic,
		PropCorrelationData, PropSubscriptionID, PropTopicAlias, PropUser),
	ctxAck:         mask(PropReasonString, PropUser),
	ctxSubscribe:   mask(PropSubscriptionID, PropUser),
	ctxSuback:      mask(PropReasonString, PropUser),
	ctxUnsubscribe: mask(PropUser),
	ctxDisconnect:  mask(PropSessionExpiry, PropServerReference, PropReasonString, PropUser),
	ctxAuth:        mask(PropAuthMethod, PropAuthData, PropReasonString, PropUser),
	ctxWill: mask(PropPayloadFormat, PropMessageExpiry, PropContentType, PropResponseTopic,
		PropCorrelationData, PropWillDelay, PropUser),
}

// decodeProps reads a property block (length, then properties) from b and
// returns what follows it. fromServer allows several subscription
// identifiers in a PUBLISH (only a server sends those).
func decodeProps(b []byte, ctx propContext, p *Properties, fromServer bool) ([]byte, error) {
	n, rest, err := decodeVarInt(b)
	if err != nil {
		return nil, err
	}
	if n > len(rest) {
		return nil, malformed("property length %d exceeds the packet (%d bytes left)", n, len(rest))
	}
	block, rest := rest[:n], rest[n:]
	for len(block) > 0 {
		// The identifier is a Variable Byte Integer; every defined one fits
		// in one byte, so a multi-byte identifier is unknown.
		id := block[0]
		block = block[1:]
		if id >= 64 || propKinds[id] == 0 {
			return nil, malformed("unknown property 0x%02x", id)
		}
		kind := propKinds[id]
		if allowed[ctx]&(1<<id) == 0 {
			return nil, protocolError("property 0x%02x is not allowed here", id)
		}
		repeatable := id == PropUser || (id == PropSubscriptionID && ctx == ctxPublish && fromServer)
		if !repeatable && p.Has(id) {
			return nil, protocolError("property 0x%02x appears twice", id)
		}
		var err error
		switch kind {
		case kByte:
			if len(block) < 1 {
				return nil, malformed("property 0x%02x truncated", id)
			}
			v := block[0]
			block = block[1:]
			err = p.setByte(id, v)
		case kUint16:
			if len(block) < 2 {
				return nil, malformed("property 0x%02x truncated", id)
			}
			v := binary.BigEndian.Uint16(block)
			block = block[2:]
			err = p.setUint16(id, v)
		case kUint32:
			if len(block) < 4 {
				return nil, malformed("property 0x%02x truncated", id)
			}
			v := binary.BigEndian.Uint32(block)
			block = block[4:]
			err = p.setUint32(id, v)
		case kVarInt:
			var v int
			v, block, err = decodeVarInt(block)
			if err == nil {
				if v == 0 {
					return nil, protocolError("subscription identifier 0")
				}
				p.SubscriptionIDs = append(p.SubscriptionIDs, uint32(v))
			}
		case kString:
			var s string
			s, block, err = decodeString(block)
			if err == nil {
				p.setString(id, s)
			}
		case kBinary:
			var v []byte
			v, block, err = decodeBinary(block)
			if err == nil {
				if id == PropCorrelationData {
					p.CorrelationData = v
				} else {
					p.AuthData = v
				}
				p.Set(id)
			}
		case kPair:
			var k, v string
			k, block, err = decodeString(block)
			if err == nil {
				v, block, err = decodeString(block)
			}
			if err == nil {
				p.User = append(p.User, UserProperty{k, v})
			}
		}
		if err != nil {
			return nil, err
		}
	}
	return rest, nil
}

func (p *Properties) setByte(id, v byte) error {
	switch id {
	case PropPayloadFormat, PropRequestProblemInfo, PropRequestResponseInfo, PropMaximumQoS,
		PropRetainAvailable, PropWildcardSubAvailable, PropSubIDAvailable, PropSharedSubAvailable:
		if v > 1 {
			return protocolError("property 0x%02x has value %d; must be 0 or 1", id, v)
		}
	}
	switch id {
	case PropPayloadFormat:
		p.PayloadFormat = v
	case PropRequestProblemInfo:
		p.RequestProblemInfo = v
	case PropRequestResponseInfo:
		p.RequestResponseInfo = v
	case PropMaximumQoS:
		p.MaximumQoS = v
	case PropRetainAvailable:
		p.RetainAvailable = v
	case PropWildcardSubAvailable:
		p.WildcardSubAvailable = v
	case PropSubIDAvailable:
		p.SubIDAvailable = v
	case PropSharedSubAvailable:
		p.SharedSubAvailable = v
	}
	p.Set(id)
	return nil
}

func (p *Properties) setUint16(id byte, v uint16) error {
	switch id {
	case PropServerKeepAlive:
		p.ServerKeepAlive = v
	case PropReceiveMaximum:
		if v == 0 {
			return protocolError("receive maximum 0")
		}
		p.ReceiveMaximum = v
	case PropTopicAliasMaximum:
		p.TopicAliasMaximum = v
	case PropTopicAlias:
		// 0 is invalid, but the reason (0x94) is the receiver's to give.
		p.TopicAlias = v
	}
	p.Set(id)
	return nil
}

func (p *Properties) setUint32(id byte, v uint32) error {
	switch id {
	case PropMessageExpiry:
		p.MessageExpiry = v
	case PropSessionExpiry:
		p.SessionExpiry = v
	case PropWillDelay:
		p.WillDelay = v
	case PropMaximumPacketSize:
		if v == 0 {
			return protocolError("maximum packet size 0")
		}
		p.MaximumPacketSize = v
	}
	p.Set(id)
	return nil
}

func (p *Properties) setString(id byte, s string) {
	switch id {
	case PropContentType:
		p.ContentType = s
	case PropResponseTopic:
		p.ResponseTopic = s
	case PropAssignedClientID:
		p.AssignedClientID = s
	case PropAuthMethod:
		p.AuthMethod = s
	case PropResponseInfo:
		p.ResponseInfo = s
	case PropServerReference:
		p.ServerReference = s
	case PropReasonString:
		p.ReasonString = s
	}
	p.Set(id)
}

// size returns the encoded length of the properties, without the length
// prefix.
func (p *Properties) size() int {
	n := 0
	if p.set == 0 && len(p.User) == 0 && len(p.SubscriptionIDs) == 0 {
		return 0
	}
	for s := p.set &^ (1<<PropUser | 1<<PropSubscriptionID); s != 0; s &= s - 1 {
		id := byte(bits.TrailingZeros64(s))
		switch propKinds[id] {
		case kByte:
			n += 2
		case kUint16:
			n += 3
		case kUint32:
			n += 5
		case kString:
			n += 3 + len(p.stringOf(id))
		case kBinary:
			n += 3 + len(p.binaryOf(id))
		}
	}
	for _, id := range p.SubscriptionIDs {
		n += 1 + varIntLen(int(id))
	}
	for _, u := range p.User {
		n += 1 + 2 + len(u.Key) + 2 + len(u.Value)
	}
	return n
}

func (p *Properties) stringOf(id byte) string {
	switch id {
	case PropContentType:
		return p.ContentType
	case PropResponseTopic:
		return p.ResponseTopic
	case PropAssignedClientID:
		return p.AssignedClientID
	case PropAuthMethod:
		return p.AuthMethod
	case PropResponseInfo:
		return p.ResponseInfo
	case PropServerReference:
		return p.ServerReference
	case PropReasonString:
		return p.ReasonString
	}
	return ""
}

func (p *Properties) binaryOf(id byte) []byte {
	if id == PropCorrelationData {
		return p.CorrelationData
	}
	return p.AuthData
}

func (p *Properties) byteOf(id byte) byte {
	switch id {
	case PropPayloadFormat:
		return p.PayloadFormat
	case PropRequestProblemInfo:
		return p.RequestProblemInfo
	case PropRequestResponseInfo:
		return p.RequestResponseInfo
	case PropMaximumQoS:
		return p.MaximumQoS
	case PropRetainAvailable:
		return p.RetainAvailable
	case PropWildcardSubAvailable:
		return p.WildcardSubAvailable
	case PropSubIDAvailable:
		return p.SubIDAvailable
	case PropSharedSubAvailable:
		return p.SharedSubAvailable
	}
	return 0
}

func (p *Properties) uint16Of(id byte) uint16 {
	switch id {
	case PropServerKeepAlive:
		return p.ServerKeepAlive
	case PropReceiveMaximum:
		return p.ReceiveMaximum
	case PropTopicAliasMaximum:
		return p.TopicAliasMaximum
	case PropTopicAlias:
		return p.TopicAlias
	}
	return 0
}

func (p *Properties) uint32Of(id byte) uint32 {
	switch id {
	case PropMessageExpiry:
		return p.MessageExpiry
	case PropSessionExpiry:
		return p.SessionExpiry
	case PropWillDelay:
		return p.WillDelay
	case PropMaximumPacketSize:
		return p.MaximumPacketSize
	}
	return 0
}

// appendProps appends the length-prefixed property block.
func appendProps(dst []byte, p *Properties) []byte {
	dst = appendVarInt(dst, p.size())
	if p.set == 0 && len(p.User) == 0 && len(p.SubscriptionIDs) == 0 {
		return dst
	}
	for s := p.set &^ (1<<PropUser | 1<<PropSubscriptionID); s != 0; s &= s - 1 {
		id := byte(bits.TrailingZeros64(s))
		dst = append(dst, id)
		switch propKinds[id] {
		case kByte:
			dst = append(dst, p.byteOf(id))
		case kUint16:
			dst = binary.BigEndian.AppendUint16(dst, p.uint16Of(id))
		case kUint32:
			dst = binary.BigEndian.AppendUint32(dst, p.uint32Of(id))
		case kString:
			dst = appendString(dst, p.stringOf(id))
		case kBinary:
			dst = appendBinary(dst, p.binaryOf(id))
		}
	}
	for _, id := range p.SubscriptionIDs {
		dst = append(dst, PropSubscriptionID)
		dst = appendVarInt(dst, int(id))
	}
	for _, u := range p.User {
		dst = append(dst, PropUser)
		dst = appendString(dst, u.Key)
		dst = appendString(dst, u.Value)
	}
	return dst
}

// Size returns the encoded size of the property block including its
// length prefix, for packet-size checks.
func (p *Properties) Size() int { n := p.size(); return varIntLen(n) + n }

// --- primitive encodings (§1.5) ---

// decodeVarInt reads a minimally encoded Variable Byte Integer.
func decodeVarInt(b []byte) (int, []byte, error) {
	v, mult := 0, 1
	for i := 0; i < 4; i++ {
		if i >= len(b) {
			return 0, nil, malformed("variable byte integer truncated")
		}
		c := b[i]
		v += int(c&0x7f) * mult
		if c&0x80 == 0 {
			if i > 0 && c == 0 {
				return 0, nil, malformed("variable byte integer not minimally encoded")
			}
			return v, b[i+1:], nil
		}
		mult <<= 7
	}
	return 0, nil, malformed("variable byte integer longer than 4 bytes")
}

func varIntLen(v int) int {
	switch {
	case v < 1<<7:
		return 1
	case v < 1<<14:
		return 2
	case v < 1<<21:
		return 3
	}
	return 4
}

func appendVarInt(dst []byte, v int) []byte {
	for {
		c := byte(v & 0x7f)
		v >>= 7
		if v > 0 {
			c |= 0x80
		}
		dst = append(dst, c)
		if v == 0 {
			return dst
		}
	}
}

func decodeUint16(b []byte) (uint16, []byte, error) {
	if len(b) < 2 {
		return 0, nil, malformed("two-byte integer truncated")
	}
	return binary.BigEndian.Uint16(b), b[2:], nil
}

func decodeBinary(b []byte) ([]byte, []byte, error) {
	n, rest, err := decodeUint16(b)
	if err != nil {
		return nil, nil, err
	}
	if int(n) > len(rest) {
		return nil, nil, malformed("binary data of %d bytes truncated", n)
	}
	return rest[:n:n], rest[n:], nil
}

// decodeString reads a UTF-8 string: well formed (which also excludes
// surrogate code points) and without U+0000 (MQTT 5 §1.5.4).
func decodeString(b []byte) (string, []byte, error) {
	v, rest, err := decodeBinary(b)
	if err != nil {
		return "", nil, err
	}
	if !ValidString(v) {
		return "", nil, malformed("string is not valid MQTT UTF-8")
	}
	return string(v), rest, nil
}

// ValidString reports whether b is an MQTT UTF-8 string: well-formed UTF-8
// without U+0000.
func ValidString(b []byte) bool {
	for _, c := range b {
		if c == 0 {
			return false
		}
	}
	return utf8.Valid(b)
}

func appendString(dst []byte, s string) []byte {
	dst = binary.BigEndian.AppendUint16(dst, uint16(len(s)))
	return append(dst, s...)
}

func appendBinary(dst, b []byte) []byte {
	dst = binary.BigEndian.AppendUint16(dst, uint16(len(b)))
	return append(dst, b...)
}
