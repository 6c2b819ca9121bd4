package platform

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"sync/atomic"

	"github.com/fieldtrust/fieldtrust/internal/dcc/registry"
	"github.com/fieldtrust/fieldtrust/internal/store"
	"github.com/fieldtrust/fieldtrust/internal/store/registrystore"
)

// dccRegistry is the DCC V&V registry (docs/dcc.md) as a service of 'up':
// its tables live in the platform's database, its checkpoint key in
// DIR/registry/ (where the standalone 'fieldtrust registry' keeps it), and
// its public routes /api/v1/registry/... on up's HTTPS API. The service
// opens the registry — replaying log entries its tables miss — and serves
// it until up stops; until it has, and while the supervisor restarts it,
// the routes answer 503.
type dccRegistry struct {
	store   store.Store
	dataDir string
	log     *slog.Logger

	reg     atomic.Pointer[registry.Registry]
	handler atomic.Pointer[http.Handler]
}

func newDCCRegistry(st store.Store, dataDir string, log *slog.Logger) *dccRegistry {
	return &dccRegistry{store: st, dataDir: dataDir, log: log}
}

func (d *dccRegistry) run(ctx context.Context) error {
	if d.reg.Load() == nil {
		st, err := registrystore.Of(d.store)
		if err != nil {
			return err
		}
		key, cert, err := registry.LoadKey(d.dataDir)
		if err != nil {
			return err
		}
		r, err := registry.New(ctx, st, registry.Options{Key: key, Cert: cert, Logger: d.log})
		if err != nil {
			return fmt.Errorf("open: %w", err)
		}
		h := r.Handler()
		d.reg.Store(r)
		d.handler.Store(&h)
	}
	<-ctx.Done()
	return nil
}

// Registry is the open registry, nil until the service has opened it.
func (d *dccRegistry) Registry() *registry.Registry { return d.reg.Load() }

func (d *dccRegistry) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	h := d.handler.Load()
	if h == nil {
		w.Header().Set("Retry-After", "1")
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusServiceUnavailable)
		io.WriteString(w, `{"error":"the DCC registry is starting; retry shortly"}`+"\n")
		return
	}
	(*h).ServeHTTP(w, r)
}
