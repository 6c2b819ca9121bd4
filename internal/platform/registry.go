package platform

import (
	"context"
	"crypto/ecdsa"
	"crypto/x509"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"sync/atomic"

	"github.com/fieldtrust/fieldtrust/internal/dcc/calibration"
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
	store  *registrystore.Store
	enroll store.Enrollments // proves manufacturer bindings (calibration.Link)
	key    *ecdsa.PrivateKey
	cert   *x509.Certificate
	log    *slog.Logger

	reg     atomic.Pointer[registry.Registry]
	handler atomic.Pointer[http.Handler]
}

// newDCCRegistry loads (or, the first time, creates) the checkpoint key
// before any service starts: created in the service, it raced with an
// operator's 'fieldtrust registry issuer' (or a test) creating it too, and
// one of them signed heads with a key the other's certificate disowns.
func newDCCRegistry(st store.Store, dataDir string, log *slog.Logger) (*dccRegistry, error) {
	rs, err := registrystore.Of(st)
	if err != nil {
		return nil, err
	}
	key, cert, err := registry.LoadKey(dataDir)
	if err != nil {
		return nil, err
	}
	return &dccRegistry{store: rs, enroll: st, key: key, cert: cert, log: log}, nil
}

// link is the fleet link on the registry's tables: the API flags
// measurements with it (unknown while the registry is not open).
func (d *dccRegistry) link() *calibration.Link {
	return &calibration.Link{Bindings: d.store, Enrollments: d.enroll, Logger: d.log, Registry: func() calibration.Registry {
		if r := d.reg.Load(); r != nil {
			return r
		}
		return nil
	}}
}

func (d *dccRegistry) run(ctx context.Context) error {
	if d.reg.Load() == nil {
		r, err := registry.New(ctx, d.store, registry.Options{Key: d.key, Cert: d.cert, Logger: d.log})
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
