package packet

import "encoding/binary"

// The Append* functions encode one packet for a connection speaking
// version and append it to dst. They never fail: values are the caller's
// (the broker's own), so lengths are in range by construction, except for
// sizes the caller must bound (a PUBLISH's topic and payload).

func appendHeader(dst []byte, first byte, remaining int) []byte {
	dst = append(dst, first)
	return appendVarInt(dst, remaining)
}

// AppendConnack appends a CONNACK.
func AppendConnack(dst []byte, version byte, c *Connack) []byte {
	flags := byte(0)
	if c.SessionPresent {
		flags = 1
	}
	if version != V5 {
		return append(dst, byte(CONNACK)<<4, 2, flags, V3ConnackCode(c.Reason))
	}
	n := c.Props.size()
	dst = appendHeader(dst, byte(CONNACK)<<4, 2+varIntLen(n)+n)
	dst = append(dst, flags, c.Reason)
	return appendProps(dst, &c.Props)
}

// PublishSize returns the encoded size of p for version.
func PublishSize(version byte, p *Publish) int {
	rem := PublishRemaining(version, p)
	return 1 + varIntLen(rem) + rem
}

// PublishRemaining returns the Remaining Length of p for version.
func PublishRemaining(version byte, p *Publish) int {
	rem := 2 + len(p.Topic) + len(p.Payload)
	if p.QoS > 0 {
		rem += 2
	}
	if version == V5 {
		n := p.Props.size()
		rem += varIntLen(n) + n
	}
	return rem
}

// AppendPublish appends a PUBLISH. For MQTT 3.1.1 the properties are not
// sent.
func AppendPublish(dst []byte, version byte, p *Publish) []byte {
	first := byte(PUBLISH)<<4 | p.QoS<<1
	if p.Dup {
		first |= 0x08
	}
	if p.Retain {
		first |= 0x01
	}
	dst = appendHeader(dst, first, PublishRemaining(version, p))
	dst = appendString(dst, p.Topic)
	if p.QoS > 0 {
		dst = binary.BigEndian.AppendUint16(dst, p.PacketID)
	}
	if version == V5 {
		dst = appendProps(dst, &p.Props)
	}
	return append(dst, p.Payload...)
}

// AppendAck appends a PUBACK, PUBREC, PUBREL or PUBCOMP. In MQTT 5 a
// success without properties takes the short form (no reason byte).
func AppendAck(dst []byte, version byte, a *Ack) []byte {
	first := byte(a.Type) << 4
	if a.Type == PUBREL {
		first |= 0x02
	}
	n := a.Props.size()
	if version != V5 || (a.Reason == Success && n == 0) {
		dst = append(dst, first, 2)
		return binary.BigEndian.AppendUint16(dst, a.PacketID)
	}
	rem := 3
	if n > 0 {
		rem += varIntLen(n) + n
	}
	dst = appendHeader(dst, first, rem)
	dst = binary.BigEndian.AppendUint16(dst, a.PacketID)
	dst = append(dst, a.Reason)
	if n > 0 {
		dst = appendProps(dst, &a.Props)
	}
	return dst
}

// AppendSuback appends a SUBACK. MQTT 3.1.1 knows only 0, 1, 2 and 0x80:
// every failure code is sent as 0x80 there.
func AppendSuback(dst []byte, version byte, s *Suback) []byte {
	rem := 2 + len(s.Reasons)
	n := 0
	if version == V5 {
		n = s.Props.size()
		rem += varIntLen(n) + n
	}
	dst = appendHeader(dst, byte(SUBACK)<<4, rem)
	dst = binary.BigEndian.AppendUint16(dst, s.PacketID)
	if version == V5 {
		dst = appendProps(dst, &s.Props)
		return append(dst, s.Reasons...)
	}
	for _, r := range s.Reasons {
		if r >= 0x80 {
			r = 0x80
		}
		dst = append(dst, r)
	}
	return dst
}

// AppendUnsuback appends an UNSUBACK (reason codes only in MQTT 5).
func AppendUnsuback(dst []byte, version byte, u *Unsuback) []byte {
	if version != V5 {
		dst = append(dst, byte(UNSUBACK)<<4, 2)
		return binary.BigEndian.AppendUint16(dst, u.PacketID)
	}
	n := u.Props.size()
	dst = appendHeader(dst, byte(UNSUBACK)<<4, 2+varIntLen(n)+n+len(u.Reasons))
	dst = binary.BigEndian.AppendUint16(dst, u.PacketID)
	dst = appendProps(dst, &u.Props)
	return append(dst, u.Reasons...)
}

// AppendPingresp appends a PINGRESP.
func AppendPingresp(dst []byte) []byte { return append(dst, byte(PINGRESP)<<4, 0) }

// AppendPingreq appends a PINGREQ.
func AppendPingreq(dst []byte) []byte { return append(dst, byte(PINGREQ)<<4, 0) }

// AppendDisconnect appends an MQTT 5 DISCONNECT; for MQTT 3.1.1 (where
// only clients send DISCONNECT) it appends the empty form, which only a
// client may send: servers must not call it for 3.1.1 connections.
func AppendDisconnect(dst []byte, version byte, d *Disconnect) []byte {
	if version != V5 {
		return append(dst, byte(DISCONNECT)<<4, 0)
	}
	n := d.Props.size()
	if d.Reason == Success && n == 0 {
		return append(dst, byte(DISCONNECT)<<4, 0)
	}
	rem := 1
	if n > 0 {
		rem += varIntLen(n) + n
	}
	dst = appendHeader(dst, byte(DISCONNECT)<<4, rem)
	dst = append(dst, d.Reason)
	if n > 0 {
		dst = appendProps(dst, &d.Props)
	}
	return dst
}

// AppendAuth appends an MQTT 5 AUTH.
func AppendAuth(dst []byte, a *Auth) []byte {
	n := a.Props.size()
	dst = appendHeader(dst, byte(AUTH)<<4, 1+varIntLen(n)+n)
	dst = append(dst, a.Reason)
	return appendProps(dst, &a.Props)
}

// AppendConnect appends a CONNECT (for clients: tests, load generators).
func AppendConnect(dst []byte, c *Connect) []byte {
	name := c.ProtocolName
	if name == "" {
		name = "MQTT"
	}
	v5 := c.Version == V5
	flags := byte(0)
	if c.CleanStart {
		flags |= 0x02
	}
	if c.Will != nil {
		flags |= 0x04 | c.Will.QoS<<3
		if c.Will.Retain {
			flags |= 0x20
		}
	}
	if c.PasswordFlag {
		flags |= 0x40
	}
	if c.UsernameFlag {
		flags |= 0x80
	}
	rem := 2 + len(name) + 4 + 2 + len(c.ClientID)
	if v5 {
		n := c.Props.size()
		rem += varIntLen(n) + n
	}
	if c.Will != nil {
		if v5 {
			n := c.Will.Props.size()
			rem += varIntLen(n) + n
		}
		rem += 2 + len(c.Will.Topic) + 2 + len(c.Will.Payload)
	}
	if c.UsernameFlag {
		rem += 2 + len(c.Username)
	}
	if c.PasswordFlag {
		rem += 2 + len(c.Password)
	}
	dst = appendHeader(dst, byte(CONNECT)<<4, rem)
	dst = appendString(dst, name)
	dst = append(dst, c.Version, flags)
	dst = binary.BigEndian.AppendUint16(dst, c.KeepAlive)
	if v5 {
		dst = appendProps(dst, &c.Props)
	}
	dst = appendString(dst, c.ClientID)
	if c.Will != nil {
		if v5 {
			dst = appendProps(dst, &c.Will.Props)
		}
		dst = appendString(dst, c.Will.Topic)
		dst = appendBinary(dst, c.Will.Payload)
	}
	if c.UsernameFlag {
		dst = appendBinary(dst, c.Username)
	}
	if c.PasswordFlag {
		dst = appendBinary(dst, c.Password)
	}
	return dst
}

// AppendSubscribe appends a SUBSCRIBE (for clients).
func AppendSubscribe(dst []byte, version byte, s *Subscribe) []byte {
	rem := 2
	n := 0
	if version == V5 {
		n = s.Props.size()
		rem += varIntLen(n) + n
	}
	for _, sub := range s.Subs {
		rem += 2 + len(sub.Filter) + 1
	}
	dst = appendHeader(dst, byte(SUBSCRIBE)<<4|0x02, rem)
	dst = binary.BigEndian.AppendUint16(dst, s.PacketID)
	if version == V5 {
		dst = appendProps(dst, &s.Props)
	}
	for _, sub := range s.Subs {
		dst = appendString(dst, sub.Filter)
		o := sub.QoS
		if version == V5 {
			if sub.NoLocal {
				o |= 0x04
			}
			if sub.RetainAsPublished {
				o |= 0x08
			}
			o |= sub.RetainHandling << 4
		}
		dst = append(dst, o)
	}
	return dst
}

// AppendUnsubscribe appends an UNSUBSCRIBE (for clients).
func AppendUnsubscribe(dst []byte, version byte, u *Unsubscribe) []byte {
	rem := 2
	if version == V5 {
		n := u.Props.size()
		rem += varIntLen(n) + n
	}
	for _, f := range u.Filters {
		rem += 2 + len(f)
	}
	dst = appendHeader(dst, byte(UNSUBSCRIBE)<<4|0x02, rem)
	dst = binary.BigEndian.AppendUint16(dst, u.PacketID)
	if version == V5 {
		dst = appendProps(dst, &u.Props)
	}
	for _, f := range u.Filters {
		dst = appendString(dst, f)
	}
	return dst
}
