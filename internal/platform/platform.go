// Package platform runs the fieldtrust platform: it opens the data
// directory, initializes the PKIs, starts the services (HTTPS, the MQTT
// broker; EST, ingest and the dashboard as they land), keeps revocation
// live, and stops everything cleanly when its context ends.
package platform

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/fieldtrust/fieldtrust/internal/broker"
	"github.com/fieldtrust/fieldtrust/internal/datadir"
	"github.com/fieldtrust/fieldtrust/internal/pki"
	"github.com/fieldtrust/fieldtrust/internal/tacs"
	"github.com/fieldtrust/fieldtrust/internal/tlspolicy"
	"github.com/fieldtrust/fieldtrust/internal/web"
)

// Config configures the platform.
type Config struct {
	DataDir  string
	HTTPAddr string   // HTTPS listen address
	MQTTAddr string   // MQTT over mTLS listen address
	DNSNames []string // extra names for the server certificate
	Logger   *slog.Logger
	// Ready, if non-nil, is called once every listener is up, with the
	// actual addresses (useful with port 0).
	Ready func(httpAddr, mqttAddr string)
}

// shutdownGrace bounds how long in-flight requests may take once the
// platform is told to stop.
const shutdownGrace = 10 * time.Second

// CRL topics: the retained CRL bundle (pki.EncodeCRLBundle) of each domain.
const (
	TopicCRLTransport = "pki/crl/transport"
	TopicCRLE2E       = "pki/crl/e2e"
)

// Run runs the platform until ctx is done, then shuts down cleanly.
func Run(ctx context.Context, cfg Config) error {
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	unlock, err := datadir.LockUp(cfg.DataDir)
	if err != nil {
		return err
	}
	defer unlock()
	d, err := datadir.Open(ctx, cfg.DataDir, log)
	if err != nil {
		return err
	}
	defer d.Close()
	log.Info("data directory open", "dir", cfg.DataDir,
		"transport_root", pki.SerialHex(d.Transport.Root().SerialNumber), "e2e_root", pki.SerialHex(d.E2E.Root().SerialNumber))

	httpLn, err := net.Listen("tcp", cfg.HTTPAddr)
	if err != nil {
		return fmt.Errorf("listen on --http-addr %s: %w (is another process using it?)", cfg.HTTPAddr, err)
	}
	defer httpLn.Close()

	// One server certificate names every address the platform listens on.
	dns := append([]string{"localhost"}, cfg.DNSNames...)
	var ips []net.IP
	for _, addr := range []string{httpLn.Addr().String(), cfg.MQTTAddr} {
		a, err := serverAddresses(addr)
		if err != nil {
			return err
		}
		ips = append(ips, a...)
		if host, _, _ := net.SplitHostPort(addr); host != "" && net.ParseIP(host) == nil && !slices.Contains(dns, host) {
			dns = append(dns, host)
		}
	}
	ips = slices.CompactFunc(ips, net.IP.Equal)
	cert := newServerCert(d.Transport, cfg.DataDir, dns, ips, log)
	if err := cert.load(ctx); err != nil {
		return err
	}
	verifier, err := d.Transport.Verifier(ctx)
	if err != nil {
		return err
	}
	ids, err := newIdentities(ctx, verifier, d.Store.ServiceRoles)
	if err != nil {
		return err
	}

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))

	brk, err := broker.New(broker.Config{
		Addr:       cfg.MQTTAddr,
		TLS:        tlspolicy.Server(cert.GetCertificate, verifier.Roots(), tls.RequireAndVerifyClientCert, verifier.VerifyConnection),
		Identify:   ids.Subject,
		Grants:     tacs.DefaultGrants(),
		StateDir:   filepath.Join(cfg.DataDir, "broker"),
		Logger:     log.With("component", "broker"),
		Registerer: reg,
	})
	if err != nil {
		return fmt.Errorf("start broker on --mqtt-addr %s: %w", cfg.MQTTAddr, err)
	}

	// Client certificates are optional on HTTPS (health and CA download are
	// public); where one is presented, it must verify and not be revoked.
	httpTLS := tlspolicy.Server(cert.GetCertificate, verifier.Roots(), tls.VerifyClientCertIfGiven, func(cs tls.ConnectionState) error {
		if len(cs.PeerCertificates) == 0 {
			return nil
		}
		return verifier.VerifyConnection(cs)
	})
	srv := &http.Server{
		Handler: web.New(web.Options{
			Roots:   map[pki.Domain]*x509.Certificate{pki.Transport: d.Transport.Root(), pki.E2E: d.E2E.Root()},
			Metrics: requireRole(ids, tacs.RoleAdmin, promhttp.HandlerFor(reg, promhttp.HandlerOpts{})),
			Logger:  log,
		}),
		TLSConfig:         httpTLS,
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       2 * time.Minute,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelDebug),
	}

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	wg.Go(func() { cert.run(ctx) })
	brokerErr := make(chan error, 1)
	wg.Go(func() { brokerErr <- brk.Serve(ctx) })
	rev := &revocation{ids: ids, broker: brk, auths: []*pki.Authority{d.Transport, d.E2E}, log: log}
	if err := rev.publishCRLs(ctx); err != nil {
		return err
	}
	wg.Go(func() { rev.run(ctx) })

	serveErr := make(chan error, 1)
	go func() { serveErr <- srv.ServeTLS(httpLn, "", "") }()
	log.Info("platform up", "https", "https://"+httpLn.Addr().String(), "mqtt", "mqtts://"+brk.Addr())
	if cfg.Ready != nil {
		cfg.Ready(httpLn.Addr().String(), brk.Addr())
	}
	var runErr error
	select {
	case err := <-serveErr:
		runErr = fmt.Errorf("https server: %w", err)
	case err := <-brokerErr:
		runErr = fmt.Errorf("broker: %w", err)
		brokerErr <- nil
	case <-ctx.Done():
	}
	log.Info("shutting down")
	cancel()
	sctx, scancel := context.WithTimeout(context.Background(), shutdownGrace)
	defer scancel()
	if err := srv.Shutdown(sctx); err != nil && !errors.Is(err, http.ErrServerClosed) {
		log.Warn("https shutdown", "err", err)
	}
	wg.Wait()
	if err := <-brokerErr; err != nil && runErr == nil && !errors.Is(err, context.Canceled) {
		runErr = fmt.Errorf("broker: %w", err)
	}
	log.Info("platform stopped")
	return runErr
}

// requireRole serves next only to a service client certificate whose
// configured role is role.
func requireRole(ids *identities, role string, next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.TLS == nil || len(r.TLS.VerifiedChains) == 0 {
			http.Error(w, "client certificate required", http.StatusUnauthorized)
			return
		}
		subj, err := ids.Subject(*r.TLS)
		if err != nil || subj.Role != role {
			http.Error(w, "forbidden: needs a service certificate with role "+role, http.StatusForbidden)
			return
		}
		next.ServeHTTP(w, r)
	})
}
