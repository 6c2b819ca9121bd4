// Package packet is the MQTT 3.1.1 and 5.0 wire format: a strict decoder
// for every control packet and an allocation-light encoder.
//
// The decoder is written for hostile input. It never reads beyond the
// slice it is given, never allocates more than the packet's own length,
// and refuses everything the specifications call malformed or a protocol
// error with an *Error carrying the MQTT 5 reason code the server answers
// with (MQTT 3.1.1 has no such codes; the server closes the connection):
//
//   - fixed-header flags other than the ones the packet type prescribes;
//   - Variable Byte Integers longer than 4 bytes or not minimally encoded;
//   - strings that are not well-formed UTF-8 or contain U+0000;
//   - a PUBLISH topic with wildcards, QoS 3, a QoS 0 PUBLISH with DUP set,
//     a zero packet identifier where one is required;
//   - properties not allowed in the packet type, duplicated where only one
//     is allowed, or with out-of-range values;
//   - bytes left over after the last field.
//
// Policy (who may publish where, limits per identity) is not decided here:
// the broker does that with the decoded values.
//
// Layout of every packet (MQTT 5 §2): one byte of type (high nibble) and
// flags (low nibble), the Remaining Length as a Variable Byte Integer
// (1–4 bytes, 7 bits each, continuation bit 0x80), then the variable
// header and the payload. MQTT 5 adds a property block (its length as a
// Variable Byte Integer, then identifier/value pairs) after the variable
// header of most packets.
package packet

import (
	"fmt"
)

// Protocol levels (the byte after the protocol name in CONNECT).
const (
	V311 byte = 4
	V5   byte = 5
)

// Type is the control packet type, the high nibble of the first byte.
type Type byte

// Control packet types.
const (
	CONNECT     Type = 1
	CONNACK     Type = 2
	PUBLISH     Type = 3
	PUBACK      Type = 4
	PUBREC      Type = 5
	PUBREL      Type = 6
	PUBCOMP     Type = 7
	SUBSCRIBE   Type = 8
	SUBACK      Type = 9
	UNSUBSCRIBE Type = 10
	UNSUBACK    Type = 11
	PINGREQ     Type = 12
	PINGRESP    Type = 13
	DISCONNECT  Type = 14
	AUTH        Type = 15
)

var typeNames = [...]string{"RESERVED", "CONNECT", "CONNACK", "PUBLISH", "PUBACK", "PUBREC", "PUBREL",
	"PUBCOMP", "SUBSCRIBE", "SUBACK", "UNSUBSCRIBE", "UNSUBACK", "PINGREQ", "PINGRESP", "DISCONNECT", "AUTH"}

func (t Type) String() string {
	if int(t) < len(typeNames) {
		return typeNames[t]
	}
	return fmt.Sprintf("TYPE(%d)", byte(t))
}

// MQTT 5 reason codes (§2.4). MQTT 3.1.1 uses only the CONNACK return
// codes below and 0x80 in SUBACK.
const (
	Success                  byte = 0x00
	GrantedQoS1              byte = 0x01
	GrantedQoS2              byte = 0x02
	DisconnectWithWill       byte = 0x04
	NoMatchingSubscribers    byte = 0x10
	NoSubscriptionExisted    byte = 0x11
	ContinueAuthentication   byte = 0x18
	ReAuthenticate           byte = 0x19
	UnspecifiedError         byte = 0x80
	MalformedPacket          byte = 0x81
	ProtocolError            byte = 0x82
	ImplementationSpecific   byte = 0x83
	UnsupportedProtocol      byte = 0x84
	ClientIDNotValid         byte = 0x85
	BadUsernameOrPassword    byte = 0x86
	NotAuthorized            byte = 0x87
	ServerUnavailable        byte = 0x88
	ServerBusy               byte = 0x89
	Banned                   byte = 0x8A
	ServerShuttingDown       byte = 0x8B
	BadAuthenticationMethod  byte = 0x8C
	KeepAliveTimeout         byte = 0x8D
	SessionTakenOver         byte = 0x8E
	TopicFilterInvalid       byte = 0x8F
	TopicNameInvalid         byte = 0x90
	PacketIDInUse            byte = 0x91
	PacketIDNotFound         byte = 0x92
	ReceiveMaximumExceeded   byte = 0x93
	TopicAliasInvalid        byte = 0x94
	PacketTooLarge           byte = 0x95
	MessageRateTooHigh       byte = 0x96
	QuotaExceeded            byte = 0x97
	AdministrativeAction     byte = 0x98
	PayloadFormatInvalid     byte = 0x99
	RetainNotSupported       byte = 0x9A
	QoSNotSupported          byte = 0x9B
	UseAnotherServer         byte = 0x9C
	ServerMoved              byte = 0x9D
	SharedSubNotSupported    byte = 0x9E
	ConnectionRateExceeded   byte = 0x9F
	MaximumConnectTime       byte = 0xA0
	SubIDsNotSupported       byte = 0xA1
	WildcardSubsNotSupported byte = 0xA2
)

// MQTT 3.1.1 CONNACK return codes (§3.2.2.3).
const (
	V3Accepted              byte = 0
	V3UnacceptableProtocol  byte = 1
	V3IdentifierRejected    byte = 2
	V3ServerUnavailable     byte = 3
	V3BadUsernameOrPassword byte = 4
	V3NotAuthorized         byte = 5
)

// V3ConnackCode maps an MQTT 5 CONNACK reason code to the closest MQTT
// 3.1.1 return code (MQTT 5 §3.2.2.2 lists the correspondence for the
// codes that exist in both).
func V3ConnackCode(reason byte) byte {
	switch reason {
	case Success:
		return V3Accepted
	case UnsupportedProtocol:
		return V3UnacceptableProtocol
	case ClientIDNotValid:
		return V3IdentifierRejected
	case BadUsernameOrPassword, BadAuthenticationMethod:
		return V3BadUsernameOrPassword
	case NotAuthorized, Banned:
		return V3NotAuthorized
	}
	return V3ServerUnavailable
}

// Error is a decoding failure. Code is the MQTT 5 reason code to send in a
// DISCONNECT (or CONNACK, for a bad CONNECT): MalformedPacket or
// ProtocolError mostly.
type Error struct {
	Code byte
	Msg  string
}

func (e *Error) Error() string { return fmt.Sprintf("mqtt: %s (reason 0x%02x)", e.Msg, e.Code) }

func malformed(format string, args ...any) *Error {
	return &Error{Code: MalformedPacket, Msg: fmt.Sprintf(format, args...)}
}

func protocolError(format string, args ...any) *Error {
	return &Error{Code: ProtocolError, Msg: fmt.Sprintf(format, args...)}
}

// MaxRemainingLength is the largest Remaining Length a Variable Byte
// Integer of 4 bytes can carry (MQTT 5 §1.5.5).
const MaxRemainingLength = 268_435_455

// Connect is a CONNECT packet.
type Connect struct {
	ProtocolName string
	Version      byte
	CleanStart   bool // "Clean Session" in MQTT 3.1.1
	KeepAlive    uint16
	ClientID     string
	Props        Properties

	Will *Will // nil without the Will Flag

	UsernameFlag, PasswordFlag bool
	Username, Password         []byte
}

// Will is the will message of a CONNECT.
type Will struct {
	QoS     byte
	Retain  bool
	Topic   string
	Payload []byte
	Props   Properties // MQTT 5 will properties
}

// Connack is a CONNACK packet. Reason is an MQTT 5 reason code; the encoder
// maps it for MQTT 3.1.1 (V3ConnackCode).
type Connack struct {
	SessionPresent bool
	Reason         byte
	Props          Properties
}

// Publish is a PUBLISH packet. Payload aliases the decoded buffer.
type Publish struct {
	Dup      bool
	QoS      byte
	Retain   bool
	Topic    string
	PacketID uint16
	Props    Properties
	Payload  []byte
}

// Ack is a PUBACK, PUBREC, PUBREL or PUBCOMP.
type Ack struct {
	Type     Type
	PacketID uint16
	Reason   byte
	Props    Properties
}

// Subscription is one topic filter of a SUBSCRIBE with its options.
type Subscription struct {
	Filter            string
	QoS               byte
	NoLocal           bool
	RetainAsPublished bool
	RetainHandling    byte // 0 send retained, 1 only if new, 2 never
}

// Subscribe is a SUBSCRIBE packet.
type Subscribe struct {
	PacketID uint16
	Props    Properties
	Subs     []Subscription
}

// Suback is a SUBACK packet: one reason code per filter.
type Suback struct {
	PacketID uint16
	Props    Properties
	Reasons  []byte
}

// Unsubscribe is an UNSUBSCRIBE packet.
type Unsubscribe struct {
	PacketID uint16
	Props    Properties
	Filters  []string
}

// Unsuback is an UNSUBACK packet (MQTT 3.1.1 has no reason codes).
type Unsuback struct {
	PacketID uint16
	Props    Properties
	Reasons  []byte
}

// Pingreq and Pingresp have no fields.
type (
	Pingreq  struct{}
	Pingresp struct{}
)

// Disconnect is a DISCONNECT packet (MQTT 5 reason and properties; MQTT
// 3.1.1 has neither).
type Disconnect struct {
	Reason byte
	Props  Properties
}

// Auth is an MQTT 5 AUTH packet.
type Auth struct {
	Reason byte
	Props  Properties
}
