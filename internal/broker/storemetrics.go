package broker

import "github.com/prometheus/client_golang/prometheus"

// storeMetrics time the path a persistent session's acknowledgement waits
// on (docs/broker.md, "Persistence"), so its latency can be attributed to
// a stage instead of guessed: queueing behind the batch being logged,
// resolving a batch into mutations, the log write, its fdatasync (split by
// whether a checkpoint into bbolt ran meanwhile, whose own fsyncs share
// the disk), and the whole wait; plus the checkpoint rounds and the ops
// per batch. Nil in tests that open a store directly.
type storeMetrics struct {
	queue, resolve, write, wait prometheus.Observer
	sync                        [2]prometheus.Observer // [1]: a checkpoint was running during the sync
	checkpoint                  prometheus.Observer
	batch                       prometheus.Observer
	logged, cancelled           prometheus.Counter // message and delivery writes: logged, or cancelled before (acknowledged first)
}

// storeStageBuckets: 5 µs to 2 s in steps of about a third, fine enough
// for a p99 of a sub-millisecond stage.
var storeStageBuckets = prometheus.ExponentialBucketsRange(5e-6, 2, 48)

func newStoreMetrics(reg prometheus.Registerer) (*storeMetrics, error) {
	stages, err := register(reg, prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Namespace: "fieldtrust", Subsystem: "broker", Name: "store_seconds",
		Help:    "Persistent-session store: per acknowledgement queue (enqueued until its batch is taken) and wait (enqueued until durable and acknowledged); per batch resolve, write, sync (checkpoint=yes if a bbolt checkpoint ran meanwhile); per checkpoint round checkpoint.",
		Buckets: storeStageBuckets,
	}, []string{"stage", "checkpoint"}))
	if err != nil {
		return nil, err
	}
	batch, err := register(reg, prometheus.NewHistogram(prometheus.HistogramOpts{
		Namespace: "fieldtrust", Subsystem: "broker", Name: "store_batch_ops",
		Help:    "Operations (writes, deletions, acknowledgement barriers) logged per write-ahead log batch (one fdatasync).",
		Buckets: prometheus.ExponentialBuckets(1, 2, 14),
	}))
	if err != nil {
		return nil, err
	}
	writes, err := register(reg, prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "fieldtrust", Subsystem: "broker", Name: "store_delivery_writes_total",
		Help: "Writes of persistent sessions' messages and deliveries that reached the write-ahead log (logged), or were cancelled before because the subscriber had acknowledged the delivery (cancelled).",
	}, []string{"result"}))
	if err != nil {
		return nil, err
	}
	return &storeMetrics{
		logged:     writes.WithLabelValues("logged"),
		cancelled:  writes.WithLabelValues("cancelled"),
		queue:      stages.WithLabelValues("queue", ""),
		resolve:    stages.WithLabelValues("resolve", ""),
		write:      stages.WithLabelValues("write", ""),
		wait:       stages.WithLabelValues("wait", ""),
		sync:       [2]prometheus.Observer{stages.WithLabelValues("sync", "no"), stages.WithLabelValues("sync", "yes")},
		checkpoint: stages.WithLabelValues("checkpoint", ""),
		batch:      batch,
	}, nil
}
