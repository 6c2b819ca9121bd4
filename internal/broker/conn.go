package broker

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/fieldtrust/fieldtrust/internal/broker/packet"
	"github.com/fieldtrust/fieldtrust/internal/tacs"
)

// conn is one client connection. Its reader (serve) reads and handles
// packets one at a time, in order; everything it writes goes through the
// outbox. While the client sends nothing the reader may be parked
// (park.go): then no goroutine runs for the connection.
type conn struct {
	b  *Broker
	nc *tls.Conn
	pc *pollConn // nc's socket when the connection may park; else nil
	// What Identify decides on again (Revalidate, wills, retained
	// messages): the certificates, not the whole tls.ConnectionState
	// (tlsState).
	peerCerts []*x509.Certificate
	chains    [][]*x509.Certificate
	subject   tacs.Subject
	id        *identity
	sess      atomic.Pointer[session]
	clientID  string // the client's own ID (without the identity namespace)

	// Fixed after CONNECT.
	keepAlive  time.Duration // 0 never happens after CONNECT: capped and defaulted
	sendWindow int           // QoS 1/2 messages the client accepts unacknowledged
	maxOut     int           // client's Maximum Packet Size, 0 if none
	outAliases map[string]uint16
	inAliases  map[uint16]string // reader goroutine only
	pubOK      tacs.Decision     // the publish decision for pubTopic under grants generation pubGen (mayPublish); reader only
	pubTopic   string
	pubGen     uint64

	out outbox

	willMu   sync.Mutex
	will     *packet.Will // nil once deleted (normal DISCONNECT, revocation)
	takeover atomic.Bool  // replaced by a new connection of the same session

	revoked  atomic.Bool
	closed   atomic.Bool // no more packets are handled
	closing  atomic.Bool // terminate ran
	notAfter time.Time   // the chain's first expiry: the session ends then

	// Inbound QoS 1/2 publishes not yet acknowledged (their
	// acknowledgement may wait for the journal), and their bytes.
	inflightIn atomic.Int32
	heapIdx    int32 // in parker.heap; guarded by parker.mu (here: no padding)
	inBytes    atomic.Int64
	inWake     atomic.Pointer[chan struct{}] // signalled when an acknowledgement is sent; made when the reader first waits (inboundWaker)

	// Acknowledgements waiting (ackdelay.go), in arrival order.
	ackMu sync.Mutex
	acks  []*pendingAck // guarded by ackMu

	logMu  sync.Mutex
	logCap rateLimit

	// Reader state; it survives parking (reader goroutine, or the parker
	// while parked).
	deadline    time.Time // the read deadline: keepalive or certificate expiry
	deadlineSet time.Time // when deadline was last moved
	ahead       [2]byte   // the next packet's first bytes, taken by probe or answerPings
	nAhead      uint8     // how many of ahead are taken
	parked      bool      // guarded by parker.mu
	registered  bool      // the socket is in the parker's pollset; guarded by parker.mu
	// Fixed after CONNECT, like keepAlive and the rest (placed here, they
	// fill what would be padding: TestRecordSizes).
	version  byte
	aliasMax uint16 // topic aliases the client accepts from us
}

func newConn(b *Broker, nc *tls.Conn, pc *pollConn) *conn {
	return &conn{b: b, nc: nc, pc: pc}
}

// refuse counts a refusal on this connection and logs it, at most one line
// per second per connection (with the number suppressed): a client
// hammering a forbidden topic costs a counter increment per packet, not a
// log line.
func (c *conn) refuse(stage, reason string, attrs ...any) {
	c.b.metrics.refusals.WithLabelValues(stage, reason).Inc()
	c.logMu.Lock()
	n, ok := c.logCap.allow(time.Now())
	c.logMu.Unlock()
	if !ok {
		return
	}
	args := append([]any{"stage", stage, "reason", reason, "identity", c.subject.String(), "client", c.clientID, "remote", c.nc.RemoteAddr().String()}, attrs...)
	if n > 0 {
		args = append(args, "suppressed_since_last_log", n)
	}
	c.b.log.Warn("mqtt refused", args...)
}

// fail closes the connection at once (I/O error, broken peer). A parked
// connection is unregistered before its socket closes and resumes, so its
// end reaches the session.
func (c *conn) fail(error) {
	c.closed.Store(true)
	c.closeOut()
	c.unpark()
	_ = c.nc.Close()
}

// unpark resumes the connection's reader if it is parked (after closed
// was set, so it does not park again).
func (c *conn) unpark() {
	if c.b.parker != nil && c.pc != nil {
		c.b.parker.unpark(c)
	}
}

// terminate ends the connection from the server side after what is queued
// has been written: an MQTT 5 client first gets a DISCONNECT with reason
// (unless reason is Success), an MQTT 3.1.1 client — which has no server
// DISCONNECT — just sees the connection close. A client that does not read
// is cut off after finalWait.
func (c *conn) terminate(reason byte) {
	if !c.closing.CompareAndSwap(false, true) {
		return
	}
	c.closed.Store(true)
	// Wake the reader (readLoop checks closed after moving its deadline),
	// so the connection ends for its session now and the reader lingers;
	// a parked reader is resumed.
	_ = c.nc.SetReadDeadline(time.Now())
	c.unpark()
	var final []byte
	if c.version == packet.V5 && reason != packet.Success {
		final = packet.AppendDisconnect(nil, packet.V5, &packet.Disconnect{Reason: reason})
	}
	if !c.finish(final) {
		c.closeWrite()
	}
	time.AfterFunc(finalWait, func() { _ = c.nc.Close() })
}

// finalWait bounds how long a terminating connection's last bytes may
// take, and how long the broker then reads what the client still sends.
const finalWait = time.Second

// lingerLimit bounds what a terminated connection may still send.
const lingerLimit = 64 << 10

// closeWrite ends the broker's side of a terminated connection once its
// last bytes are written: TLS close_notify and a TCP half-close. The
// socket stays open for reading (linger).
func (c *conn) closeWrite() {
	_ = c.nc.CloseWrite()
	if tc, ok := c.nc.NetConn().(interface{ CloseWrite() error }); ok {
		_ = tc.CloseWrite()
	}
}

// linger reads and drops what a terminated client still sends, until it
// closes its side, lingerLimit bytes came or finalWait passed, and then
// closes. A client cut off has packets in flight (acknowledgements of what
// it received, the rest of a burst); closing on them would make TCP answer
// with a reset, and the client's next write would fail before it handled
// the DISCONNECT or refusing CONNACK that says why.
func (c *conn) linger() {
	_ = c.nc.SetReadDeadline(time.Now().Add(finalWait))
	_, _ = io.Copy(io.Discard, io.LimitReader(c.nc, lingerLimit))
	_ = c.nc.Close()
}

// revoke ends a connection whose identity no longer holds (revoked,
// certificate expired): its will is dropped, never sent.
func (c *conn) revoke(reason byte) {
	c.revoked.Store(true)
	c.dropWill()
	c.terminate(reason) // never blocks: the writer sends the DISCONNECT
}

// shutdown ends the connection because the broker stops. The will is not
// sent (the client did nothing wrong); a persistent session keeps it.
func (c *conn) shutdown() {
	c.terminate(packet.ServerShuttingDown)
}

func (c *conn) dropWill() {
	c.willMu.Lock()
	c.will = nil
	c.willMu.Unlock()
}

// accept reads and answers CONNECT; it reports whether the connection was
// attached to its session (then serve takes over).
func (c *conn) accept() bool {
	attached, err := c.connect()
	if err != nil {
		c.b.log.Debug("mqtt connection ended before CONNACK", "remote", c.nc.RemoteAddr().String(), "error", err)
	}
	if !attached {
		c.terminate(packet.Success) // after a refusing CONNACK, if one was sent
		c.linger()
	}
	return attached
}

// serve reads packets until the connection ends, then handles the end for
// the session and the will. When the reader parks, serve returns early;
// the parker calls it again (resume) on one of its workers. The connection
// counts in connWG from accept until serve really ends.
func (c *conn) serve() {
	c.b.readers.Add(1)
	err := c.readLoop()
	c.b.readers.Add(-1)
	if err == errParked {
		return
	}
	defer c.b.connWG.Done()
	closing := c.closing.Load() // then terminate's writer half-closes once its last bytes are out
	if !closing {
		c.fail(err)
	}
	c.ended(err)
	if closing {
		c.linger()
	}
}

// readLoop reads and handles packets until an error ends the connection.
func (c *conn) readLoop() error {
	if c.deadline.IsZero() {
		c.moveDeadline() // the first time; a resumed reader keeps its deadline
	}
	for {
		if err := c.waitInbound(); err != nil {
			return err
		}
		if c.closed.Load() { // terminate set the deadline to now, maybe before we moved it
			return errConnClosed
		}
		if c.pc != nil {
			parked, err := c.probe()
			switch {
			case parked:
				return errParked
			case errors.Is(err, errConnClosed):
				return err
			case err != nil:
				return c.readError(packet.Header{}, err)
			}
		}
		h, err := packet.ReadHeader((*connReader)(c), c.b.maxPacket)
		if err != nil {
			return c.readError(h, err)
		}
		body := make([]byte, h.Remaining)
		if _, err := io.ReadFull(c.nc, body); err != nil {
			return c.readError(h, err)
		}
		p, err := packet.Decode(c.version, h, body, false)
		if err != nil {
			return c.readError(h, err)
		}
		if err := c.handle(p); err != nil {
			return err
		}
		if c.closed.Load() {
			return errConnClosed
		}
		c.moveDeadline()
	}
}

// moveDeadline moves the read deadline after a packet. Keepalive: the
// client must send something within 1.5 × its keepalive (MQTT 5
// §3.1.2.10); the deadline is moved at most every quarter keepalive,
// which still leaves the client more than its keepalive after any packet.
// It never passes the chain's expiry.
func (c *conn) moveDeadline() {
	if c.advanceDeadline() {
		_ = c.nc.SetReadDeadline(c.deadline)
	}
}

// advanceDeadline is moveDeadline's rule without the socket: it moves
// c.deadline and reports whether it did. A parked connection's socket has
// no deadline of its own (the parker's heap holds it).
func (c *conn) advanceDeadline() bool {
	now := time.Now()
	if now.Sub(c.deadlineSet) <= c.keepAlive/4 {
		return false
	}
	d := now.Add(c.keepAlive + c.keepAlive/2)
	if !c.notAfter.IsZero() && c.notAfter.Before(d) {
		d = c.notAfter
	}
	c.deadline, c.deadlineSet = d, now
	return true
}

var (
	errConnClosed  = errors.New("connection closed")
	errParked      = errors.New("reader parked") // not an end: the parker resumes it
	errDisconnect  = errors.New("client disconnected")
	errKeepAlive   = errors.New("keepalive timeout")
	errCertExpired = errors.New("client certificate expired")
	errTakenOver   = errors.New("session taken over")
	errProtocol    = errors.New("protocol violation")
	errNotAllowed  = errors.New("refused")
	errClientQuota = errors.New("client exceeded a limit")
)

// readError turns a read or decode failure into the connection's end,
// telling an MQTT 5 client why where the spec has a reason for it.
func (c *conn) readError(h packet.Header, err error) error {
	var pe *packet.Error
	var ne net.Error
	switch {
	case errors.As(err, &pe) && h.Type == packet.PUBLISH && pe.Code == packet.TopicNameInvalid:
		// A wildcard in a PUBLISH topic: MQTT calls it malformed, TACS has
		// a reason for it; count it with the other publish refusals.
		c.refuse("publish", string(tacs.ReasonWildcardInTopic), "error", pe.Msg)
		c.terminate(pe.Code)
		return fmt.Errorf("%w: %v", errProtocol, err)
	case errors.As(err, &pe):
		c.refuse("protocol", reasonOfPacketError(pe.Code), "error", pe.Msg)
		c.terminate(pe.Code)
		return fmt.Errorf("%w: %v", errProtocol, err)
	case errors.As(err, &ne) && ne.Timeout() && !c.closed.Load() && !c.notAfter.IsZero() && !time.Now().Before(c.notAfter):
		c.refuse("revalidate", "certificate_expired", "not_after", c.notAfter)
		c.revoke(packet.NotAuthorized)
		return errCertExpired
	case errors.As(err, &ne) && ne.Timeout() && !c.closed.Load():
		c.terminate(packet.KeepAliveTimeout)
		return errKeepAlive
	}
	return err
}

func reasonOfPacketError(code byte) string {
	switch code {
	case packet.PacketTooLarge:
		return "packet_too_large"
	case packet.TopicNameInvalid:
		return "topic_name_invalid"
	case packet.ProtocolError:
		return "protocol_error"
	}
	return "malformed_packet"
}

// waitInbound holds the reader back while the client has too many
// publishes, or too many bytes of them, waiting for acknowledgements that
// wait for the journal: backpressure on the client's socket instead of
// unbounded memory. An MQTT 5 client is bounded by our Receive Maximum
// itself (exceeding it is its protocol error), so only bytes count there.
func (c *conn) waitInbound() error {
	for {
		if !c.inboundFull() || c.closed.Load() {
			return nil
		}
		wake := c.inboundWaker()
		if !c.inboundFull() || c.closed.Load() { // released before the channel existed
			return nil
		}
		select {
		case <-wake:
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// inboundWaker is the channel waitInbound waits on, made the first time
// the reader has to wait: most connections never do, and an unused
// channel cost 96 bytes each. Reader goroutine only.
func (c *conn) inboundWaker() chan struct{} {
	if w := c.inWake.Load(); w != nil {
		return *w
	}
	w := make(chan struct{}, 1)
	c.inWake.Store(&w)
	return w
}

// wakeInbound wakes the reader if it waits in waitInbound (or will look
// again: the channel keeps one signal).
func (c *conn) wakeInbound() {
	if w := c.inWake.Load(); w != nil {
		select {
		case *w <- struct{}{}:
		default:
		}
	}
}

// inboundFull reports whether the reader must hold back (waitInbound).
func (c *conn) inboundFull() bool {
	if c.inBytes.Load() >= maxInboundBytes {
		return true
	}
	return c.version != packet.V5 && c.inflightIn.Load() >= receiveMaximum
}

// handle dispatches one packet.
func (c *conn) handle(p any) error {
	switch p := p.(type) {
	case *packet.Publish:
		return c.handlePublish(p)
	case *packet.Ack:
		return c.handleAck(p)
	case *packet.Subscribe:
		return c.handleSubscribe(p)
	case *packet.Unsubscribe:
		return c.handleUnsubscribe(p)
	case *packet.Pingreq:
		c.send(packet.AppendPingresp)
		return nil
	case *packet.Disconnect:
		return c.handleDisconnect(p)
	case *packet.Connect:
		c.refuse("protocol", "second_connect")
		c.terminate(packet.ProtocolError)
		return errProtocol
	case *packet.Auth:
		// No enhanced authentication method is ever accepted at CONNECT, so
		// any AUTH is out of sequence (MQTT 5 §4.12).
		c.refuse("protocol", "unexpected_auth")
		c.terminate(packet.ProtocolError)
		return errProtocol
	}
	c.refuse("protocol", "unexpected_packet", "type", fmt.Sprintf("%T", p))
	c.terminate(packet.ProtocolError)
	return errProtocol
}

func (c *conn) handleAck(a *packet.Ack) error {
	s := c.sess.Load()
	switch a.Type {
	case packet.PUBREL:
		// Inbound QoS 2, step 3: forget the packet id, send PUBCOMP.
		reason := packet.Success
		s.mu.Lock()
		if _, ok := s.inQoS2[a.PacketID]; ok {
			delete(s.inQoS2, a.PacketID)
			if s.persistent {
				c.b.store.deleteInbound(s, a.PacketID)
			}
			c.releaseInbound(0)
		} else {
			reason = packet.PacketIDNotFound
		}
		s.mu.Unlock()
		c.writeAck(packet.PUBCOMP, a.PacketID, reason)
	default:
		s.ack(a)
	}
	return nil
}

// releaseInbound records that one inbound QoS 1/2 flow is complete.
func (c *conn) releaseInbound(bytes int) {
	c.inflightIn.Add(-1)
	c.inBytes.Add(-int64(bytes))
	c.wakeInbound()
}

func (c *conn) handleDisconnect(d *packet.Disconnect) error {
	s := c.sess.Load()
	if c.version == packet.V5 && d.Props.Has(packet.PropSessionExpiry) {
		s.mu.Lock()
		wasZero := s.expiry == 0 && !s.persistent
		s.mu.Unlock()
		if wasZero && d.Props.SessionExpiry != 0 {
			// MQTT 5 §3.14.2.2.2: setting a non-zero expiry at DISCONNECT
			// when CONNECT had zero is a protocol error.
			c.refuse("protocol", "session_expiry_at_disconnect")
			c.terminate(packet.ProtocolError)
			return errProtocol
		}
		c.b.setExpiry(s, c.expiryOf(d.Props.SessionExpiry))
	}
	if d.Reason != packet.DisconnectWithWill {
		c.dropWill()
	}
	return errDisconnect
}

// expiryOf caps a requested session expiry interval (seconds).
func (c *conn) expiryOf(secs uint32) time.Duration {
	max := c.id.limits.SessionExpiry
	d := time.Duration(secs) * time.Second
	if secs == 0xFFFFFFFF || d > max {
		return max
	}
	return d
}

// connect reads and answers CONNECT. It reports whether the connection was
// accepted and attached to its session.
func (c *conn) connect() (bool, error) {
	h, err := packet.ReadHeader(c.nc, c.b.maxPacket)
	if err != nil {
		return false, err
	}
	if h.Type != packet.CONNECT {
		c.b.metrics.refusals.WithLabelValues("connect", "not_connect").Inc()
		return false, fmt.Errorf("first packet is %s, not CONNECT", h.Type)
	}
	body := make([]byte, h.Remaining)
	if _, err := io.ReadFull(c.nc, body); err != nil {
		return false, err
	}
	p, err := packet.Decode(0, h, body, false)
	if err != nil {
		var pe *packet.Error
		cp, _ := p.(*packet.Connect)
		if errors.As(err, &pe) && pe.Code == packet.UnsupportedProtocol && cp != nil && (cp.Version == packet.V311 || cp.Version == 3 || cp.Version == packet.V5) {
			c.version = cp.Version
			c.connack(false, packet.UnsupportedProtocol, nil)
		}
		c.b.metrics.refusals.WithLabelValues("connect", "malformed_connect").Inc()
		return false, err
	}
	cp := p.(*packet.Connect)
	c.version = cp.Version
	c.clientID = cp.ClientID

	refuse := func(reason string, code byte, attrs ...any) (bool, error) {
		c.refuse("connect", reason, attrs...)
		c.connack(false, code, nil)
		return false, nil
	}
	cs := c.nc.ConnectionState()
	if v := c.b.cfg.VerifyClient; v != nil && cs.HandshakeComplete && len(cs.PeerCertificates) > 0 {
		// Verified during the handshake; again here for the chain itself
		// (the verifier caches built chains, so this is a lookup).
		chain, err := v(cs.PeerCertificates[0], cs.PeerCertificates[1:])
		if err != nil {
			return refuse("unverified_chain", packet.NotAuthorized, "error", err)
		}
		cs.VerifiedChains = [][]*x509.Certificate{chain}
	}
	if !cs.HandshakeComplete || len(cs.VerifiedChains) == 0 {
		return refuse("unverified_chain", packet.NotAuthorized)
	}
	subj, err := c.b.cfg.Identify(cs)
	if err != nil {
		return refuse("identify_failed", packet.NotAuthorized, "error", err)
	}
	if err := subj.Validate(); err != nil {
		return refuse("invalid_subject", packet.NotAuthorized, "error", err)
	}
	c.subject, c.peerCerts, c.chains = subj, cs.PeerCertificates, cs.VerifiedChains
	if subj.IsService() {
		if _, ok := c.b.grants[subj.Role]; !ok {
			return refuse(string(tacs.ReasonUnknownRole), packet.NotAuthorized, "role", subj.Role)
		}
	}
	if !validClientID(cp.ClientID) {
		return refuse("bad_client_id", packet.ClientIDNotValid)
	}
	if cp.Props.Has(packet.PropAuthMethod) {
		// Identity comes from the certificate chain; no enhanced
		// authentication method is offered (MQTT 5 §4.12).
		return refuse("bad_auth_method", packet.BadAuthenticationMethod, "method", logTopic(cp.Props.AuthMethod))
	}
	persistent := !cp.CleanStart
	var expiry time.Duration
	lim := c.b.limitsFor(subj)
	if c.version == packet.V5 {
		secs := cp.Props.SessionExpiry
		expiry = time.Duration(secs) * time.Second
		if secs == 0xFFFFFFFF || expiry > lim.SessionExpiry {
			expiry = lim.SessionExpiry
		}
		persistent = expiry > 0
	} else if persistent {
		expiry = lim.SessionExpiry
	}
	if cp.ClientID == "" {
		if c.version != packet.V5 && !cp.CleanStart {
			// MQTT 3.1.1 §3.1.3.1: a persistent session needs a client ID.
			return refuse("bad_client_id", packet.ClientIDNotValid)
		}
		c.clientID = "auto-" + randomHex(8)
	}
	if w := cp.Will; w != nil {
		if d := tacs.Authorize(c.b.grants, subj, tacs.Publish, w.Topic); !d.Allowed {
			c.refuse("will", string(d.Reason), "topic", logTopic(w.Topic))
			c.connack(false, packet.NotAuthorized, nil)
			return false, nil
		}
		if len(w.Payload) > lim.WillPayload {
			return refuse("will_too_large", packet.QuotaExceeded, "bytes", len(w.Payload), "limit", lim.WillPayload)
		}
		if w.Props.Has(packet.PropPayloadFormat) && w.Props.PayloadFormat == 1 && !utf8.Valid(w.Payload) {
			return refuse("will_payload_format", packet.PayloadFormatInvalid)
		}
		c.will = w
	}

	keepAlive := time.Duration(cp.KeepAlive) * time.Second
	if keepAlive == 0 || keepAlive > c.b.cfg.MaxKeepAlive {
		keepAlive = c.b.cfg.MaxKeepAlive
	}
	c.keepAlive = keepAlive
	c.sendWindow = defaultWindow
	if c.version == packet.V5 {
		if cp.Props.Has(packet.PropReceiveMaximum) && int(cp.Props.ReceiveMaximum) < c.sendWindow {
			c.sendWindow = int(cp.Props.ReceiveMaximum)
		}
		if cp.Props.Has(packet.PropMaximumPacketSize) {
			c.maxOut = int(cp.Props.MaximumPacketSize)
		}
		c.aliasMax = cp.Props.TopicAliasMaximum
		if c.aliasMax > topicAliasMaximum {
			c.aliasMax = topicAliasMaximum
		}
	}

	present, code, err := c.b.attach(c, persistent, expiry, cp.CleanStart, func(present bool) {
		// Runs with the session locked and attached: CONNACK is the first
		// packet on the wire, before anything the resumed session resends.
		var props packet.Properties
		if c.version == packet.V5 {
			props.ReceiveMaximum = receiveMaximum
			props.Set(packet.PropReceiveMaximum)
			props.MaximumPacketSize = uint32(c.b.maxPacket)
			props.Set(packet.PropMaximumPacketSize)
			props.TopicAliasMaximum = topicAliasMaximum
			props.Set(packet.PropTopicAliasMaximum)
			props.ServerKeepAlive = uint16(keepAlive / time.Second)
			props.Set(packet.PropServerKeepAlive)
			if cp.ClientID == "" {
				props.AssignedClientID = c.clientID
				props.Set(packet.PropAssignedClientID)
			}
			if expiry != time.Duration(cp.Props.SessionExpiry)*time.Second {
				props.SessionExpiry = uint32(expiry / time.Second)
				props.Set(packet.PropSessionExpiry)
			}
		}
		c.connack(present, packet.Success, &props)
	})
	if err != nil {
		return refuse(err.Error(), code)
	}
	_ = present
	// The certificate's validity is part of the identity: the session ends
	// when the first certificate of the chain expires (readLoop's deadline
	// never lies beyond it).
	c.notAfter = chainNotAfter(cs)
	return true, nil
}

// tlsState is the connection's TLS state as Identify sees it after
// CONNECT: a fresh value, so whatever keeps it (a retained message, a
// pending will) keeps the certificates, never the connection.
func (c *conn) tlsState() tls.ConnectionState { return identityState(c.peerCerts, c.chains) }

// identityState is the TLS state Identify needs, for a live connection
// (tlsState) and for a chain read back from the store (chainState): what
// Identify decides again is revocation and identity.
func identityState(peer []*x509.Certificate, chains [][]*x509.Certificate) tls.ConnectionState {
	return tls.ConnectionState{HandshakeComplete: true, PeerCertificates: peer, VerifiedChains: chains}
}

func (c *conn) connack(present bool, reason byte, props *packet.Properties) {
	ack := packet.Connack{SessionPresent: present && reason == packet.Success, Reason: reason}
	if props != nil {
		ack.Props = *props
	}
	c.send(func(dst []byte) []byte { return packet.AppendConnack(dst, c.version, &ack) })
}

// chainNotAfter returns the earliest expiry in the verified chain.
func chainNotAfter(cs tls.ConnectionState) time.Time {
	var t time.Time
	if len(cs.VerifiedChains) == 0 {
		return t
	}
	for _, cert := range cs.VerifiedChains[0] {
		if t.IsZero() || cert.NotAfter.Before(t) {
			t = cert.NotAfter
		}
	}
	return t
}

// validClientID bounds what a CONNECT may use as a client ID.
func validClientID(id string) bool {
	if len(id) > MaxClientIDLen {
		return false
	}
	for i := 0; i < len(id); i++ {
		if id[i] < 0x20 || id[i] == 0x7f {
			return false
		}
	}
	return true
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b) // crypto/rand.Read never fails (Go 1.24+)
	return hex.EncodeToString(b)
}

// handlePublish: topic alias, receive maximum, access, retain limits,
// then fan-out and the acknowledgement.
func (c *conn) handlePublish(p *packet.Publish) error {
	s := c.sess.Load()
	topic := p.Topic
	if c.version == packet.V5 && p.Props.Has(packet.PropTopicAlias) {
		a := p.Props.TopicAlias
		if a == 0 || a > topicAliasMaximum {
			c.refuse("publish", "topic_alias_invalid", "alias", a)
			c.terminate(packet.TopicAliasInvalid)
			return errProtocol
		}
		if topic != "" {
			if c.inAliases == nil {
				c.inAliases = map[uint16]string{}
			}
			c.inAliases[a] = topic
		} else if topic = c.inAliases[a]; topic == "" {
			c.refuse("publish", "topic_alias_unknown", "alias", a)
			c.terminate(packet.ProtocolError)
			return errProtocol
		}
	}
	if p.QoS > 0 {
		if c.version == packet.V5 && c.inflightIn.Load() >= receiveMaximum {
			c.refuse("publish", "receive_maximum_exceeded")
			c.terminate(packet.ReceiveMaximumExceeded)
			return errClientQuota
		}
		if p.QoS == 2 {
			s.mu.Lock()
			_, dup := s.inQoS2[p.PacketID]
			s.mu.Unlock()
			if dup { // a resend: delivered already, answer again
				c.writeAck(packet.PUBREC, p.PacketID, packet.Success)
				return nil
			}
		}
		c.inflightIn.Add(1)
		c.inBytes.Add(int64(len(p.Payload)))
	}
	if p.Props.Has(packet.PropPayloadFormat) && p.Props.PayloadFormat == 1 && !utf8.Valid(p.Payload) {
		return c.refusePublish(p, "payload_format_invalid", packet.PayloadFormatInvalid)
	}
	if d := c.mayPublish(topic); !d.Allowed || strings.HasPrefix(topic, "$") {
		reason := string(d.Reason)
		if d.Allowed {
			reason = string(tacs.ReasonSystemTopic) // $SYS belongs to the broker, even for admin
		}
		return c.refusePublish(p, reason, packet.NotAuthorized)
	}
	c.b.metrics.in[p.QoS].Inc()
	c.b.messagesIn.Add(1)
	now := time.Now()
	m := newMessage(topic, p.Payload, p.QoS, p.Retain, p.Props, s.key, now)
	if p.QoS == 1 && !p.Retain {
		m.trackAcks() // the PUBACK may go once its persistent deliveries are acknowledged
	}
	durable := false
	if p.Retain {
		if err := c.b.retained.check(c.id, m); err != nil {
			return c.refusePublish(p, "retained_quota", packet.QuotaExceeded)
		}
		if c.b.retained.set(m, c) {
			c.b.store.putRetained(m, c)
			durable = true
		}
	}
	if c.b.route(context.Background(), m, s) {
		durable = true
	}
	if p.QoS == 0 {
		return nil
	}
	size := len(p.Payload)
	if p.QoS == 2 {
		s.mu.Lock()
		if s.inQoS2 == nil {
			s.inQoS2 = map[uint16]struct{}{}
		}
		s.inQoS2[p.PacketID] = struct{}{}
		if s.persistent {
			c.b.store.putInbound(s, p.PacketID)
			durable = true
		}
		s.mu.Unlock()
	}
	c.acknowledge(p, packet.Success, durable, size, m.acked)
	return nil
}

// refusePublish answers a publish the broker does not accept: QoS 0 is
// dropped; QoS 1/2 get PUBACK/PUBREC with the reason in MQTT 5, and in
// MQTT 3.1.1 — which has no negative acknowledgement — the connection is
// closed (§3.3.5), never left waiting for an acknowledgement.
func (c *conn) refusePublish(p *packet.Publish, reason string, code byte) error {
	c.refuse("publish", reason, "topic", logTopic(p.Topic), "qos", p.QoS, "bytes", len(p.Payload))
	if p.QoS == 0 {
		return nil
	}
	if c.version != packet.V5 {
		c.terminate(code)
		return errNotAllowed
	}
	c.acknowledge(p, code, false, len(p.Payload), nil)
	return nil
}

// acknowledge sends the PUBACK (QoS 1) or PUBREC (QoS 2) of an inbound
// publish, after the journal has made durable what it depends on when
// durable is set — or, with a tracker, once every persistent delivery of
// it is acknowledged by its subscriber, if that comes first (ackdelay.go).
// Acknowledgements leave in the order the publishes arrived (MQTT 5
// §4.6): once one waits, the following ones queue behind it.
func (c *conn) acknowledge(p *packet.Publish, reason byte, durable bool, size int, tr *ackTracker) {
	t := packet.PUBACK
	if p.QoS == 2 {
		t = packet.PUBREC
	}
	if p.QoS == 2 && reason >= 0x80 {
		s := c.sess.Load()
		s.mu.Lock()
		delete(s.inQoS2, p.PacketID)
		s.mu.Unlock()
	}
	c.queueAck(pendingAck{c: c, tr: tr, size: size, pid: p.PacketID, t: t, reason: reason}, durable)
}

// handleSubscribe decides every filter, records the granted ones, answers
// SUBACK, then sends retained messages.
func (c *conn) handleSubscribe(p *packet.Subscribe) error {
	s := c.sess.Load()
	codes := make([]byte, len(p.Subs))
	var subID uint32
	if len(p.Props.SubscriptionIDs) > 0 {
		subID = p.Props.SubscriptionIDs[0]
	}
	type granted struct {
		sub *subscription
		new bool
	}
	var retainedFor []granted
	durable := false
	for i, req := range p.Subs {
		topicFilter, group, validShare := splitShared(req.Filter)
		if !validShare || !validFilter(topicFilter) {
			c.refuse("subscribe", "filter_invalid", "filter", logTopic(req.Filter))
			codes[i] = packet.TopicFilterInvalid
			continue
		}
		if d := tacs.Authorize(c.b.grants, c.subject, tacs.Subscribe, req.Filter); !d.Allowed {
			c.refuse("subscribe", string(d.Reason), "filter", logTopic(req.Filter))
			codes[i] = packet.NotAuthorized
			continue
		}
		sub := &subscription{filter: req.Filter, topic: topicFilter, group: group, qos: req.QoS,
			noLocal: req.NoLocal, retainAsPublished: req.RetainAsPublished, retainHandling: req.RetainHandling, id: subID}
		s.mu.Lock()
		_, exists := s.subs[req.Filter]
		if !exists && len(s.subs) >= c.id.limits.SubscriptionsPerSession {
			s.mu.Unlock()
			c.refuse("subscribe", "subscription_quota", "filter", logTopic(req.Filter), "limit", c.id.limits.SubscriptionsPerSession)
			codes[i] = packet.QuotaExceeded
			continue
		}
		if old := s.subs[req.Filter]; old != nil {
			c.b.subs.remove(s, old)
		}
		if s.subs == nil {
			s.subs = map[string]*subscription{}
		}
		s.subs[req.Filter] = sub
		c.b.subs.add(s, sub)
		if s.persistent {
			c.b.store.putSubscription(s, sub)
			durable = true
		}
		s.mu.Unlock()
		codes[i] = req.QoS
		if group == "" && (req.RetainHandling == 0 || (req.RetainHandling == 1 && !exists)) {
			retainedFor = append(retainedFor, granted{sub, !exists})
		}
	}
	if durable {
		if err := c.b.store.barrier(); err != nil {
			c.b.log.Error("broker store write failed; subscription not durable", "identity", c.subject.String(), "error", err)
			for i := range codes {
				if codes[i] < 0x80 {
					codes[i] = packet.UnspecifiedError
				}
			}
		}
	}
	c.sendMax(smallPacket+len(codes), func(dst []byte) []byte {
		return packet.AppendSuback(dst, c.version, &packet.Suback{PacketID: p.PacketID, Reasons: codes})
	})
	for _, g := range retainedFor {
		c.b.sendRetained(s, g.sub)
	}
	return nil
}

func (c *conn) handleUnsubscribe(p *packet.Unsubscribe) error {
	s := c.sess.Load()
	codes := make([]byte, len(p.Filters))
	s.mu.Lock()
	for i, f := range p.Filters {
		sub := s.subs[f]
		if sub == nil {
			codes[i] = packet.NoSubscriptionExisted
			continue
		}
		delete(s.subs, f)
		c.b.subs.remove(s, sub)
		if s.persistent {
			c.b.store.deleteSubscription(s, f)
		}
	}
	s.mu.Unlock()
	c.sendMax(smallPacket+len(codes), func(dst []byte) []byte {
		return packet.AppendUnsuback(dst, c.version, &packet.Unsuback{PacketID: p.PacketID, Reasons: codes})
	})
	return nil
}

// splitShared splits "$share/GROUP/FILTER" (the prefix compared
// case-insensitively, as tacs does); ok is false for a malformed share.
func splitShared(f string) (filter, group string, ok bool) {
	if len(f) < 7 || !strings.EqualFold(f[:7], "$share/") {
		return f, "", true
	}
	rest := f[7:]
	group, filter, found := strings.Cut(rest, "/")
	if !found || group == "" || filter == "" || strings.ContainsAny(group, "+#") {
		return "", "", false
	}
	return filter, group, true
}

// validFilter applies MQTT's syntax for topic filters (§4.7): '+' and '#'
// only as whole levels, '#' last. Policy (empty levels, length, depth) is
// tacs's.
func validFilter(f string) bool {
	if f == "" {
		return false
	}
	levels := strings.Split(f, "/")
	for i, l := range levels {
		if strings.ContainsAny(l, "+#") && l != "+" && !(l == "#" && i == len(levels)-1) {
			return false
		}
	}
	return true
}
