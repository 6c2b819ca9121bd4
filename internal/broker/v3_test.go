package broker

import (
	"crypto/tls"
	"fmt"
	"io"
	"time"

	pahov3 "github.com/eclipse/paho.mqtt.golang"
)

var ioReadFull = io.ReadFull

type errConnack byte

func (e errConnack) Error() string { return fmt.Sprintf("CONNACK return code %d", byte(e)) }

type v3opts struct {
	clientID  string
	clean     bool
	willTopic string
	keepAlive time.Duration // 0: paho's default
	recv      chan string   // payloads of every message received, if set
}

func (e *env) v3Options(c tls.Certificate, o v3opts) *pahov3.ClientOptions {
	if o.clientID == "" {
		o.clientID = fmt.Sprintf("v3-%d", serialCounter.Add(1))
	}
	opts := pahov3.NewClientOptions().
		AddBroker("tls://" + e.b.Addr()).
		SetTLSConfig(e.clientTLS(c)).
		SetClientID(o.clientID).
		SetCleanSession(o.clean).
		SetProtocolVersion(4).
		SetAutoReconnect(false).
		SetConnectRetry(false).
		SetConnectTimeout(wait).
		SetUsername("admin") // a lying username: ignored by the broker
	if o.keepAlive > 0 {
		opts.SetKeepAlive(o.keepAlive)
	}
	if o.willTopic != "" {
		opts.SetWill(o.willTopic, "bye", 1, false)
	}
	if o.recv != nil {
		opts.SetDefaultPublishHandler(func(_ pahov3.Client, m pahov3.Message) { o.recv <- string(m.Payload()) })
	}
	return opts
}

func (e *env) dialV3(c tls.Certificate, o v3opts) error {
	cl := pahov3.NewClient(e.v3Options(c, o))
	tok := cl.Connect()
	if !tok.WaitTimeout(wait) {
		return fmt.Errorf("connect timed out")
	}
	if tok.Error() == nil {
		e.t.Cleanup(func() { cl.Disconnect(0) })
	}
	return tok.Error()
}

// v3c connects an MQTT 3.1.1 client or fails the test.
func (e *env) v3c(c tls.Certificate, o v3opts) pahov3.Client {
	e.t.Helper()
	cl := pahov3.NewClient(e.v3Options(c, o))
	if tok := cl.Connect(); !tok.WaitTimeout(wait) || tok.Error() != nil {
		e.t.Fatalf("v3 connect: %v", tok.Error())
	}
	e.t.Cleanup(func() { cl.Disconnect(0) })
	return cl
}

func (e *env) v3(c tls.Certificate, o v3opts) pahov3.Client { return e.v3c(c, o) }
