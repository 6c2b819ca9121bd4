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
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/fieldtrust/fieldtrust/internal/bootstrap"
	"github.com/fieldtrust/fieldtrust/internal/broker"
	"github.com/fieldtrust/fieldtrust/internal/datadir"
	"github.com/fieldtrust/fieldtrust/internal/envelope"
	"github.com/fieldtrust/fieldtrust/internal/est"
	"github.com/fieldtrust/fieldtrust/internal/ingest"
	"github.com/fieldtrust/fieldtrust/internal/ledger"
	"github.com/fieldtrust/fieldtrust/internal/pki"
	"github.com/fieldtrust/fieldtrust/internal/tacs"
	"github.com/fieldtrust/fieldtrust/internal/tlspolicy"
	"github.com/fieldtrust/fieldtrust/internal/topic"
	"github.com/fieldtrust/fieldtrust/internal/web"
)

// Config configures the platform.
type Config struct {
	DataDir  string
	DB       string   // "" (SQLite in DataDir, or what DataDir was first used with) or postgres://...
	HTTPAddr string   // HTTPS listen address
	MQTTAddr string   // MQTT over mTLS listen address
	DNSNames []string // extra names for the server certificate
	// BrokerURLs are the broker endpoints handed to gateways in bootstrap
	// ("mqtts://host:port" or "mqtts://host:port;weight"); empty means the
	// embedded broker's own listen address.
	BrokerURLs []string
	// PublishInterval is the gateways' snapshot interval (bootstrap).
	PublishInterval time.Duration
	// EST policy.
	EST    est.Policy
	Logger *slog.Logger
	// Ready, if non-nil, is called once every listener is up, with the
	// actual addresses (useful with port 0).
	Ready func(httpAddr, mqttAddr string)
}

// shutdownGrace bounds how long in-flight requests may take once the
// platform is told to stop.
const shutdownGrace = 10 * time.Second

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
	d, err := datadir.OpenDB(ctx, cfg.DataDir, cfg.DB, log)
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
	cert := newServiceCert(d.Transport, "platform", cfg.DataDir, dns, ips, log)
	// The platform's own services and their certificates: the ingest
	// service reads snapshots (transport, role snapshot-reader) and is a
	// recipient of every sealed snapshot (e2e); the ledger signs tree
	// heads and the platform signs commands (e2e).
	ingestTLS := newServiceCert(d.Transport, "ingest", cfg.DataDir, nil, nil, log)
	ingestE2E := newServiceCert(d.E2E, "ingest", cfg.DataDir, nil, nil, log)
	ingestE2E.keepKey = true
	ledgerE2E := newServiceCert(d.E2E, "ledger", cfg.DataDir, nil, nil, log)
	commandE2E := newServiceCert(d.E2E, "platform", cfg.DataDir, nil, nil, log)
	serviceCerts := []*serviceCert{cert, ingestTLS, ingestE2E, ledgerE2E, commandE2E}
	for _, c := range serviceCerts {
		if err := c.load(ctx); err != nil {
			return err
		}
	}
	if err := d.Store.SetServiceRole(ctx, "ingest", tacs.RoleSnapshotReader); err != nil {
		return err
	}
	verifier, err := d.Transport.Verifier(ctx)
	if err != nil {
		return err
	}
	e2eVerifier, err := d.E2E.Verifier(ctx)
	if err != nil {
		return err
	}
	ids, err := newIdentities(ctx, verifier, d.Store.ServiceRoles)
	if err != nil {
		return err
	}

	// One set of grants decides for the broker, the API, commands and
	// metrics alike.
	grants := tacs.DefaultGrants()
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))

	brk, err := broker.New(broker.Config{
		Addr: cfg.MQTTAddr,
		TLS:  tlspolicy.Server(cert.GetCertificate, verifier.Roots(), tls.RequireAndVerifyClientCert, nil),
		// The broker verifies chains with the transport verifier, which
		// knows every account CA from the store: a device may present its
		// leaf alone (less to send, and far less for the broker to hold
		// per connection). Revocation, namespace and key rules are the
		// verifier's, during the handshake.
		VerifyClient: func(leaf *x509.Certificate, inter []*x509.Certificate) ([]*x509.Certificate, error) {
			_, chain, err := verifier.Verify(leaf, inter, time.Time{}, x509.ExtKeyUsageClientAuth)
			return chain, err
		},
		Identify:   ids.Subject,
		Grants:     grants,
		StateDir:   filepath.Join(cfg.DataDir, "broker"),
		Logger:     log.With("component", "broker"),
		Registerer: reg,
	})
	if err != nil {
		return fmt.Errorf("start broker on --mqtt-addr %s: %w", cfg.MQTTAddr, err)
	}

	estSrv, err := est.New(est.Options{Transport: d.Transport, E2E: d.E2E, Verifier: verifier, Records: d.Store, Policy: cfg.EST, Logger: log.With("component", "est")})
	if err != nil {
		return err
	}
	brokers, err := brokerList(cfg.BrokerURLs, brk.Addr())
	if err != nil {
		return err
	}
	interval := cfg.PublishInterval
	if interval <= 0 {
		interval = 10 * time.Second
	}
	bs, err := bootstrap.New(bootstrap.Config{
		Brokers: brokers, PublishInterval: interval, RenewalFraction: 2.0 / 3, CRLTopic: topic.CRLTransport,
		IngestE2E: func(context.Context) (*x509.Certificate, error) { return ingestE2E.Current().Leaf, nil },
		Transport: verifier, E2E: e2eVerifier, Records: d.Store, Logger: log.With("component", "bootstrap"),
	})
	if err != nil {
		return err
	}
	// HTTPS asks for a client certificate without requiring one or checking
	// it at the TLS layer: EST must see manufacturer onboarding
	// certificates, which do not chain to the transport root. Every other
	// route is behind GuardOperational, which refuses any certificate that
	// is not a valid, unrevoked transport certificate; requests without one
	// reach only the public routes (/healthz, /ca).
	lg, err := ledger.Open(ctx, d.Store)
	if err != nil {
		return err
	}
	api := &web.API{
		Data: d.Store, Proofs: lg, Grants: grants, Logger: log.With("component", "api"),
		Identify: func(r *http.Request) (tacs.Subject, bool) {
			id, ok := est.IdentityFromContext(r.Context())
			if !ok {
				return tacs.Subject{}, false
			}
			subj, err := ids.subjectOf(id)
			return subj, err == nil
		},
	}
	mux := http.NewServeMux()
	mux.Handle(est.PathPrefix, estSrv)
	mux.Handle(bootstrap.Path, bs)
	cmds := &commander{signer: commandE2E, e2e: e2eVerifier, records: d.Store, broker: brk, ids: ids, grants: grants, log: log.With("component", "commands")}
	mux.Handle("POST /api/v1/gateways/{path...}", est.GuardOperational(verifier, log, cmds))
	mux.Handle("/", est.GuardOperational(verifier, log, web.New(web.Options{
		Roots:   map[pki.Domain]*x509.Certificate{pki.Transport: d.Transport.Root(), pki.E2E: d.E2E.Root()},
		Metrics: requireGrant(ids, grants, topic.System, promhttp.HandlerFor(reg, promhttp.HandlerOpts{})),
		API:     api,
		Logger:  log,
	})))
	httpTLS := tlspolicy.Server(cert.GetCertificate, nil, tls.RequestClientCert, nil)
	srv := &http.Server{
		Handler:           mux,
		TLSConfig:         httpTLS,
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       2 * time.Minute,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelDebug),
	}

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	for _, c := range serviceCerts {
		wg.Go(func() { c.run(ctx) })
	}
	brokerErr := make(chan error, 1)
	wg.Go(func() { brokerErr <- brk.Serve(ctx) })
	rev := &revocation{ids: ids, e2e: e2eVerifier, broker: brk, auths: []*pki.Authority{d.Transport, d.E2E}, log: log}
	if err := rev.publishCRLs(ctx); err != nil {
		return err
	}
	wg.Go(func() { rev.run(ctx) })

	opener, err := envelope.NewOpener(ingestE2E.Current().Leaf, ingestE2E.Current().PrivateKey, envelope.OpenOptions{
		VerifyOptions: envelope.VerifyOptions{Signers: ingest.SignerLookup{V: e2eVerifier}, Verifier: e2eVerifier},
	})
	if err != nil {
		return err
	}
	transportRoots := x509.NewCertPool()
	transportRoots.AddCert(d.Transport.Root())
	ingestClient := tlspolicy.Client(transportRoots, nil)
	ingestClient.GetClientCertificate = ingestTLS.GetClientCertificate
	wg.Go(func() {
		err := ingest.Run(ctx, ingest.Config{
			Broker: "ssl://" + brk.Addr(), TLS: ingestClient, Opener: opener,
			Store: d.Store, Ledger: lg, Logger: log.With("component", "ingest"), Registerer: reg,
		})
		if err != nil {
			log.Error("ingest stopped", "err", err)
		}
	})
	heads := &treeHeads{log: lg, store: d.Store, signer: ledgerE2E, logger: log}
	wg.Go(func() { heads.run(ctx) })

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

// requireGrant serves next only to a service client certificate whose
// role's grants let it read filter: the HTTP face of what that service may
// read over MQTT (metrics are the platform's $SYS).
func requireGrant(ids *identities, grants tacs.Grants, filter string, next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.TLS == nil || len(r.TLS.VerifiedChains) == 0 {
			http.Error(w, "client certificate required", http.StatusUnauthorized)
			return
		}
		subj, err := ids.Subject(*r.TLS)
		if err != nil || !subj.IsService() || !tacs.Authorize(grants, subj, tacs.Subscribe, filter).Allowed {
			http.Error(w, "forbidden: needs a service certificate whose role may read "+filter, http.StatusForbidden)
			return
		}
		next.ServeHTTP(w, r)
	})
}

// brokerList parses the broker URLs for bootstrap; with none given, the
// embedded broker's address.
func brokerList(urls []string, embedded string) ([]bootstrap.Broker, error) {
	if len(urls) == 0 {
		return []bootstrap.Broker{{URL: "mqtts://" + embedded, Weight: 1}}, nil
	}
	var out []bootstrap.Broker
	for _, u := range urls {
		b := bootstrap.Broker{URL: u, Weight: 1}
		if url, w, ok := strings.Cut(u, ";"); ok {
			weight, err := strconv.ParseFloat(w, 64)
			if err != nil || weight <= 0 {
				return nil, fmt.Errorf("--broker-url %q: weight %q must be a positive number", u, w)
			}
			b = bootstrap.Broker{URL: url, Weight: weight}
		}
		out = append(out, b)
	}
	return out, nil
}
