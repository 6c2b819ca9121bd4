package broker

import (
	"errors"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the broker's Prometheus series. Label values come from small
// fixed sets (stages, tacs reasons, QoS levels), never from identities or
// topics, so cardinality stays bounded.
type metrics struct {
	connections  *prometheus.GaugeVec   // live authenticated connections
	connects     *prometheus.CounterVec // accepted connections
	refusals     *prometheus.CounterVec // stage, reason
	messagesIn   *prometheus.CounterVec // qos
	messagesOut  *prometheus.CounterVec // qos
	dropped      *prometheus.CounterVec // reason
	backpressure *prometheus.CounterVec // publishes held back for a slow subscriber
	store        *storeMetrics          // storemetrics.go

	in, out [3]prometheus.Counter // by QoS; see resolve
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		connections: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Namespace: "fieldtrust", Subsystem: "broker", Name: "connections",
			Help: "Live authenticated MQTT connections.",
		}, nil),
		connects: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "fieldtrust", Subsystem: "broker", Name: "connections_total",
			Help: "MQTT connections accepted after identification and access checks.",
		}, nil),
		refusals: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "fieldtrust", Subsystem: "broker", Name: "refusals_total",
			Help: "Refused MQTT operations by stage (connect, subscribe, publish, will, delivery, session_resume, revalidate) and reason.",
		}, []string{"stage", "reason"}),
		messagesIn: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "fieldtrust", Subsystem: "broker", Name: "messages_in_total",
			Help: "PUBLISH packets accepted from clients.",
		}, []string{"qos"}),
		messagesOut: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "fieldtrust", Subsystem: "broker", Name: "messages_out_total",
			Help: "PUBLISH packets written to clients.",
		}, []string{"qos"}),
		dropped: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "fieldtrust", Subsystem: "broker", Name: "dropped_total",
			Help: "Messages not delivered to one subscriber because of its limits: queue_full (QoS 1/2 queue of a session at its byte limit, offline or stalled), write_queue_full (unwritten QoS 0 bytes of a stalled subscriber).",
		}, []string{"reason"}),
		backpressure: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "fieldtrust", Subsystem: "broker", Name: "backpressure_waits_total",
			Help: "Times a publish (any QoS) waited for a live subscriber's backlog to drain (backpressure).",
		}, nil),
	}
	if reg == nil {
		reg = prometheus.NewRegistry()
	}
	// A broker restarted in the same process (tests, or a supervisor that
	// re-creates it) reuses the series it registered before.
	var err error
	if m.connections, err = register(reg, m.connections); err != nil {
		return nil, err
	}
	if m.connects, err = register(reg, m.connects); err != nil {
		return nil, err
	}
	if m.refusals, err = register(reg, m.refusals); err != nil {
		return nil, err
	}
	if m.messagesIn, err = register(reg, m.messagesIn); err != nil {
		return nil, err
	}
	if m.messagesOut, err = register(reg, m.messagesOut); err != nil {
		return nil, err
	}
	if m.dropped, err = register(reg, m.dropped); err != nil {
		return nil, err
	}
	if m.backpressure, err = register(reg, m.backpressure); err != nil {
		return nil, err
	}
	if m.store, err = newStoreMetrics(reg); err != nil {
		return nil, err
	}
	m.resolve()
	return m, nil
}

func register[C prometheus.Collector](reg prometheus.Registerer, c C) (C, error) {
	if err := reg.Register(c); err != nil {
		var are prometheus.AlreadyRegisteredError
		if errors.As(err, &are) {
			if existing, ok := are.ExistingCollector.(C); ok {
				return existing, nil
			}
		}
		return c, err
	}
	return c, nil
}

var qosLabel = [3]string{"0", "1", "2"}

// in and out are messagesIn and messagesOut resolved per QoS, so the hot
// path does no label lookup.
func (m *metrics) resolve() {
	for q := range 3 {
		m.in[q] = m.messagesIn.WithLabelValues(qosLabel[q])
		m.out[q] = m.messagesOut.WithLabelValues(qosLabel[q])
	}
}

func qosOf(q byte) string {
	if q > 2 {
		return "invalid"
	}
	return qosLabel[q]
}
