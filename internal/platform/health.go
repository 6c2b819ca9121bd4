package platform

import (
	"github.com/fieldtrust/fieldtrust/internal/ingest"
	"github.com/fieldtrust/fieldtrust/internal/lease"
	"github.com/fieldtrust/fieldtrust/internal/supervisor"
)

// healthJSON is what /healthz serves: each service's state and restart
// count, and ingest's connection state and lag. It is public, so it says
// nothing more (no error texts, addresses or names of tenants).
type healthJSON struct {
	Status   string                       `json:"status"` // "ok" or "unhealthy"
	Services map[string]serviceHealthJSON `json:"services"`
	Ingest   ingestHealthJSON             `json:"ingest"`
	// Cluster is, on a node of a multi-node cluster, who runs what: the
	// live nodes, each ingest partition's and each singleton role's node.
	Cluster *lease.View `json:"cluster,omitempty"`
}

type serviceHealthJSON struct {
	State    string `json:"state"`
	Restarts int    `json:"restarts"`
}

type ingestHealthJSON struct {
	State      string  `json:"state"`
	Connected  bool    `json:"connected"`
	Pending    int     `json:"pending"`
	LagSeconds float64 `json:"lag_seconds"`
}

// health judges the platform: healthy when every service runs and ingest
// makes progress (web serves 503 otherwise).
func health(services []supervisor.Status, in ingest.Health, cluster *lease.View) (bool, any) {
	ok := in.Healthy() && (cluster == nil || cluster.Connected)
	h := healthJSON{Cluster: cluster, Services: map[string]serviceHealthJSON{}, Ingest: ingestHealthJSON{
		State: in.State, Connected: in.Connected, Pending: in.Pending, LagSeconds: in.Lag.Seconds(),
	}}
	for _, s := range services {
		h.Services[s.Name] = serviceHealthJSON{State: s.State, Restarts: s.Restarts}
		ok = ok && s.State == supervisor.StateRunning
	}
	h.Status = "ok"
	if !ok {
		h.Status = "unhealthy"
	}
	if cluster != nil && cluster.Draining {
		// 'fieldtrust cluster drain': not to be sent new work.
		ok, h.Status = false, "draining"
	}
	return ok, h
}
