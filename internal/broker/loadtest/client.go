package loadtest

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/fieldtrust/fieldtrust/internal/broker/packet"
)

// Client is the load generator's MQTT client (3.1.1 and 5, QoS 0–2), built
// on the broker's wire codec. It is deliberately lean — buffered writes
// flushed per burst, acknowledgements coalesced, no per-message goroutine
// or allocation beyond the packet — so that on a 2-core machine the brokers
// under test, not the harness, are what saturates. Both brokers get the
// same client.
type Client struct {
	conn    *tls.Conn
	version byte
	r       *bufio.Reader

	wmu     sync.Mutex // guards w and unflushed
	w       *bufio.Writer
	pending int // publishes written but not flushed (QoS 0 window)

	window     chan struct{} // one token per unacknowledged QoS 1/2 publish
	windowFull atomic.Int64  // publishes that waited for a token (the broker's acknowledgements held the sender back)

	mu       sync.Mutex
	nextPID  uint16
	inflight map[uint16]byte // our publishes awaiting PUBACK (1) or PUBCOMP (2)
	subacks  chan *packet.Suback

	onPublish func(*packet.Publish)
	done      chan struct{}
	err       error // set before done closes
}

// ClientOptions configure Dial.
type ClientOptions struct {
	Version       byte // packet.V311 (default) or packet.V5
	ClientID      string
	Clean         bool
	SessionExpiry uint32 // MQTT 5; with !Clean
	KeepAlive     uint16 // seconds; 0 = 60
	// Window bounds unacknowledged QoS 1/2 publishes, and QoS 0 publishes
	// not yet flushed to the socket; 0 = 16.
	Window int
	// OnPublish receives every message, on the reader goroutine. It must
	// not block; the packet is the client's to keep.
	OnPublish func(*packet.Publish)
}

// Dial connects, sends CONNECT and waits for a successful CONNACK.
func Dial(ctx context.Context, addr string, cfg *tls.Config, o ClientOptions) (*Client, *packet.Connack, error) {
	if o.Version == 0 {
		o.Version = packet.V311
	}
	if o.Window <= 0 {
		o.Window = 16
	}
	if o.KeepAlive == 0 {
		o.KeepAlive = 60
	}
	d := tls.Dialer{NetDialer: &net.Dialer{Timeout: 30 * time.Second}, Config: cfg}
	dctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	nc, err := d.DialContext(dctx, "tcp", addr)
	if err != nil {
		return nil, nil, err
	}
	conn := nc.(*tls.Conn)
	c := &Client{conn: conn, version: o.Version, r: bufio.NewReaderSize(conn, 32<<10), w: bufio.NewWriterSize(conn, 32<<10),
		window: make(chan struct{}, o.Window), inflight: map[uint16]byte{}, subacks: make(chan *packet.Suback, 1),
		onPublish: o.OnPublish, done: make(chan struct{})}
	cp := packet.Connect{Version: o.Version, ClientID: o.ClientID, CleanStart: o.Clean, KeepAlive: o.KeepAlive}
	if o.Version == packet.V5 && !o.Clean && o.SessionExpiry > 0 {
		cp.Props.SessionExpiry = o.SessionExpiry
		cp.Props.Set(packet.PropSessionExpiry)
	}
	_ = conn.SetDeadline(time.Now().Add(60 * time.Second))
	if _, err := conn.Write(packet.AppendConnect(nil, &cp)); err != nil {
		_ = conn.Close()
		return nil, nil, err
	}
	p, err := c.read()
	if err != nil {
		_ = conn.Close()
		return nil, nil, fmt.Errorf("read CONNACK: %w", err)
	}
	ack, ok := p.(*packet.Connack)
	if !ok || ack.Reason != packet.Success {
		_ = conn.Close()
		return nil, ack, fmt.Errorf("CONNACK refused: %+v", p)
	}
	_ = conn.SetDeadline(time.Time{})
	go c.readLoop()
	return c, ack, nil
}

func (c *Client) read() (any, error) {
	h, err := packet.ReadHeader(c.r, 0)
	if err != nil {
		return nil, err
	}
	body := make([]byte, h.Remaining)
	if _, err := io.ReadFull(c.r, body); err != nil {
		return nil, err
	}
	return packet.Decode(c.version, h, body, true)
}

// readLoop handles everything the broker sends. Acknowledgements it owes
// are written to the buffer and flushed once nothing more is waiting to be
// read, so a burst of deliveries costs one write.
func (c *Client) readLoop() {
	var err error
	defer func() {
		c.err = err
		close(c.done)
	}()
	for {
		var p any
		if p, err = c.read(); err != nil {
			return
		}
		switch p := p.(type) {
		case *packet.Publish:
			switch p.QoS {
			case 1:
				c.queueAck(packet.PUBACK, p.PacketID)
			case 2:
				c.queueAck(packet.PUBREC, p.PacketID)
			}
			if c.onPublish != nil {
				c.onPublish(p)
			}
		case *packet.Ack:
			switch p.Type {
			case packet.PUBACK, packet.PUBCOMP:
				c.completed(p.PacketID)
			case packet.PUBREC:
				if p.Reason >= 0x80 {
					c.completed(p.PacketID)
				} else {
					c.queueAck(packet.PUBREL, p.PacketID)
				}
			case packet.PUBREL:
				c.queueAck(packet.PUBCOMP, p.PacketID)
			}
		case *packet.Suback:
			c.subacks <- p
		case *packet.Disconnect:
			err = fmt.Errorf("broker sent DISCONNECT 0x%02x", p.Reason)
			return
		}
		if c.r.Buffered() == 0 {
			if err = c.Flush(); err != nil {
				return
			}
		}
	}
}

func (c *Client) queueAck(t packet.Type, pid uint16) {
	c.wmu.Lock()
	b := packet.AppendAck(c.w.AvailableBuffer(), c.version, &packet.Ack{Type: t, PacketID: pid})
	_, _ = c.w.Write(b)
	c.wmu.Unlock()
}

func (c *Client) completed(pid uint16) {
	c.mu.Lock()
	_, ok := c.inflight[pid]
	delete(c.inflight, pid)
	c.mu.Unlock()
	if ok {
		<-c.window
	}
}

// Flush writes what is buffered.
func (c *Client) Flush() error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	c.pending = 0
	return c.w.Flush()
}

// Subscribe subscribes one filter and returns the SUBACK reason.
func (c *Client) Subscribe(filter string, qos byte) (byte, error) {
	c.wmu.Lock()
	b := packet.AppendSubscribe(nil, c.version, &packet.Subscribe{PacketID: 1, Subs: []packet.Subscription{{Filter: filter, QoS: qos}}})
	_, err := c.w.Write(b)
	if err == nil {
		err = c.w.Flush()
	}
	c.wmu.Unlock()
	if err != nil {
		return 0, err
	}
	select {
	case sa := <-c.subacks:
		return sa.Reasons[0], nil
	case <-c.done:
		return 0, c.err
	case <-time.After(30 * time.Second):
		return 0, errors.New("no SUBACK within 30 s")
	}
}

// Publish writes one message. A QoS 1/2 publish waits for a window slot
// (flushing first, so the broker sees what it must acknowledge); QoS 0
// publishes are flushed every Window messages. flush forces a write now
// (paced publishing).
// WindowWaits is how many publishes waited because Window publishes were
// unacknowledged: only then does an acknowledgement's latency delay a
// message.
func (c *Client) WindowWaits() int64 { return c.windowFull.Load() }

func (c *Client) Publish(topic string, qos byte, payload []byte, flush bool) error {
	p := packet.Publish{Topic: topic, QoS: qos, Payload: payload}
	if qos > 0 {
		select {
		case c.window <- struct{}{}:
		default:
			c.windowFull.Add(1)
			if err := c.Flush(); err != nil {
				return err
			}
			select {
			case c.window <- struct{}{}:
			case <-c.done:
				return fmt.Errorf("connection ended: %w", c.err)
			case <-time.After(60 * time.Second):
				return errors.New("no acknowledgement within 60 s")
			}
		}
		c.mu.Lock()
		for {
			c.nextPID++
			if c.nextPID == 0 {
				c.nextPID = 1
			}
			if _, used := c.inflight[c.nextPID]; !used {
				break
			}
		}
		p.PacketID = c.nextPID
		c.inflight[p.PacketID] = qos
		c.mu.Unlock()
	}
	c.wmu.Lock()
	_, err := c.w.Write(packet.AppendPublish(c.w.AvailableBuffer(), c.version, &p))
	c.pending++
	if err == nil && (flush || (qos == 0 && c.pending >= cap(c.window))) {
		c.pending = 0
		err = c.w.Flush()
	}
	c.wmu.Unlock()
	return err
}

// Drain flushes and waits until every QoS 1/2 publish is acknowledged.
func (c *Client) Drain(timeout time.Duration) error {
	if err := c.Flush(); err != nil {
		return err
	}
	deadline := time.After(timeout)
	for i := 0; i < cap(c.window); i++ {
		select {
		case c.window <- struct{}{}:
		case <-c.done:
			return fmt.Errorf("connection ended: %w", c.err)
		case <-deadline:
			return fmt.Errorf("%d publishes unacknowledged after %v", cap(c.window)-i, timeout)
		}
	}
	for i := 0; i < cap(c.window); i++ {
		<-c.window
	}
	return nil
}

// Close sends DISCONNECT and closes the connection.
func (c *Client) Close() {
	c.wmu.Lock()
	_, _ = c.w.Write(packet.AppendDisconnect(nil, c.version, &packet.Disconnect{}))
	_ = c.w.Flush()
	c.wmu.Unlock()
	_ = c.conn.Close()
	<-c.done
}

// Done is closed when the connection has ended.
func (c *Client) Done() <-chan struct{} { return c.done }
