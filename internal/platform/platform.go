// Package platform runs the fieldtrust platform: it opens the data
// directory, initializes the PKIs, and starts the services (HTTPS now; the
// broker, EST, ingest and the dashboard hang on it as they land), and stops
// them cleanly when its context ends.
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
	"slices"
	"time"

	"github.com/fieldtrust/fieldtrust/internal/datadir"
	"github.com/fieldtrust/fieldtrust/internal/pki"
	"github.com/fieldtrust/fieldtrust/internal/tlspolicy"
	"github.com/fieldtrust/fieldtrust/internal/web"
)

// Config configures the platform.
type Config struct {
	DataDir  string
	HTTPAddr string   // HTTPS listen address
	DNSNames []string // extra names for the server certificate
	Logger   *slog.Logger
	// Ready, if non-nil, is called once every listener is up, with the
	// actual HTTPS address (useful with port 0).
	Ready func(httpAddr string)
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
	d, err := datadir.Open(ctx, cfg.DataDir, log)
	if err != nil {
		return err
	}
	defer d.Close()
	log.Info("data directory open", "dir", cfg.DataDir,
		"transport_root", pki.SerialHex(d.Transport.Root().SerialNumber), "e2e_root", pki.SerialHex(d.E2E.Root().SerialNumber))

	ln, err := net.Listen("tcp", cfg.HTTPAddr)
	if err != nil {
		return fmt.Errorf("listen on --http-addr %s: %w (is another process using it?)", cfg.HTTPAddr, err)
	}
	defer ln.Close()
	ips, err := serverAddresses(ln.Addr().String())
	if err != nil {
		return err
	}
	dns := append([]string{"localhost"}, cfg.DNSNames...)
	if host, _, _ := net.SplitHostPort(cfg.HTTPAddr); host != "" && net.ParseIP(host) == nil && !slices.Contains(dns, host) {
		dns = append(dns, host)
	}
	cert := newServerCert(d.Transport, cfg.DataDir, dns, ips, log)
	if err := cert.load(ctx); err != nil {
		return err
	}
	verifier, err := d.Transport.Verifier(ctx)
	if err != nil {
		return err
	}
	// Client certificates are optional on HTTPS (health and CA download are
	// public); where one is presented, it must verify and not be revoked.
	tlsConf := tlspolicy.Server(cert.GetCertificate, verifier.Roots(), tls.VerifyClientCertIfGiven, func(cs tls.ConnectionState) error {
		if len(cs.PeerCertificates) == 0 {
			return nil
		}
		return verifier.VerifyConnection(cs)
	})
	srv := &http.Server{
		Handler: web.New(web.Options{
			Roots:  map[pki.Domain]*x509.Certificate{pki.Transport: d.Transport.Root(), pki.E2E: d.E2E.Root()},
			Logger: log,
		}),
		TLSConfig:         tlsConf,
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       2 * time.Minute,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelDebug),
	}

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go cert.run(ctx)
	go refreshRevocations(ctx, verifier, log)

	serveErr := make(chan error, 1)
	go func() { serveErr <- srv.ServeTLS(ln, "", "") }()
	log.Info("platform up", "https", "https://"+ln.Addr().String(), "health", "https://"+ln.Addr().String()+"/healthz")
	if cfg.Ready != nil {
		cfg.Ready(ln.Addr().String())
	}
	select {
	case err := <-serveErr:
		return fmt.Errorf("https server: %w", err)
	case <-ctx.Done():
	}
	log.Info("shutting down")
	sctx, scancel := context.WithTimeout(context.Background(), shutdownGrace)
	defer scancel()
	if err := srv.Shutdown(sctx); err != nil && !errors.Is(err, http.ErrServerClosed) {
		log.Warn("https shutdown", "err", err)
	}
	log.Info("platform stopped")
	return nil
}

// revocationPoll is how often the platform rereads revocation state that
// the operator CLI may have changed; well inside the 5 s promise.
const revocationPoll = time.Second

func refreshRevocations(ctx context.Context, v *pki.Verifier, log *slog.Logger) {
	t := time.NewTicker(revocationPoll)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			changed, err := v.Refresh(ctx)
			if err != nil && ctx.Err() == nil {
				log.Warn("refreshing revocations failed", "err", err)
			}
			if changed {
				log.Info("revocation state changed; new handshakes use it")
			}
		}
	}
}
