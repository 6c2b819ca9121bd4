package est_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/fieldtrust/fieldtrust/internal/est"
	"github.com/fieldtrust/fieldtrust/internal/store"
)

// BenchmarkEnroll measures first enrollments per second: many gateways at
// once, each on its own TLS connection (full handshake with its onboarding
// certificate), sending a channel-bound CSR; the server verifies the
// manufacturer chain, consumes the claim, issues and records a transport
// certificate in SQLite. Onboarding certificates, claims and keys are made
// before the clock starts. Run with a bounded count, e.g. -benchtime=400x.
func BenchmarkEnroll(b *testing.B) {
	p := newPlatform(b, est.Policy{RequireChannelBinding: true})
	acme := newManufacturer(b, "Acme")
	p.trust(b, acme)
	p.operational(b, "ms-1/acc-1/warmup") // create the CAs up front
	devices := make([]tls.Certificate, b.N)
	keys := make([]*ecdsa.PrivateKey, b.N)
	claims := make([]store.Claim, b.N)
	for i := range devices {
		cn := fmt.Sprintf("ACME-GW-%06d", i)
		devices[i] = acme.device(b, cn)
		keys[i], _ = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		claims[i] = store.Claim{ClaimKey: acme.key(store.ClaimBySubject, cn), Path: fmt.Sprintf("ms-1/acc-1/gw-%06d", i), CreatedAt: time.Now()}
	}
	if err := p.d.Store.PutClaims(b.Context(), claims); err != nil {
		b.Fatal(err)
	}
	var next atomic.Int64
	b.SetParallelism(8) // 8 concurrent gateways per CPU
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			i := next.Add(1) - 1
			if _, err := p.client(&devices[i], "").Enroll(b.Context(), keys[i], nil); err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.StopTimer()
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "enroll/s")
}
