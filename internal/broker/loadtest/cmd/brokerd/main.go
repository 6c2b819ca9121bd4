// Command brokerd runs fieldtrust's broker (internal/broker) as its own
// process for the load harness in internal/broker/loadtest, wired the way
// the platform wires it: a transport pki.Verifier checks every client
// chain (VerifyConnection) and maps it to a TACS subject (IdentifyTLS).
// The Verifier is built from the root and services CA files with an empty
// revocation set (pki.NewVerifier, as a gateway builds one from CRLs); the
// per-connection work is the platform's, which refreshes the same state
// from its store only periodically.
// A separate process makes its RSS measurable, keeps the harness's clients
// out of its CPU profile and its GC, and mirrors how Mosquitto runs.
//
// It prints "ADDR host:port" once it accepts connections and stops on
// SIGINT/SIGTERM or when its standard input closes (the harness died).
package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	_ "net/http/pprof"
	"os"
	"os/signal"
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"runtime/pprof"
	"strings"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/fieldtrust/fieldtrust/internal/broker"
	"github.com/fieldtrust/fieldtrust/internal/broker/loadtest"
	"github.com/fieldtrust/fieldtrust/internal/pki"
	"github.com/fieldtrust/fieldtrust/internal/tacs"
	"github.com/fieldtrust/fieldtrust/internal/tlspolicy"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "brokerd:", err)
		os.Exit(1)
	}
}

func run() error {
	rootFile := flag.String("root", "", "transport root CA (PEM)")
	servicesFile := flag.String("services", "", "transport services CA (PEM)")
	certFile := flag.String("cert", "", "server certificate chain (PEM)")
	keyFile := flag.String("key", "", "server key (PEM)")
	stateDir := flag.String("state", "", "broker state directory")
	addr := flag.String("addr", "127.0.0.1:0", "listen address")
	cpuProfile := flag.String("cpuprofile", "", "write a CPU profile of the whole run to this file")
	intermediates := flag.String("intermediates", "", "account and master CAs (PEM): clients may then present their leaf alone, as with the platform")
	debugAddr := flag.String("debug-addr", "", "serve net/http/pprof on this loopback address (memory and goroutine profiles of a run)")
	gogc := flag.Int("gogc", 0, "GC percent (0: the runtime's default or $GOGC; as debug.SetGCPercent)")
	memLimit := flag.Int64("memlimit", 0, "soft memory limit in bytes (0: none or $GOMEMLIMIT; as debug.SetMemoryLimit)")
	memProfileRate := flag.Int("memprofilerate", 0, "runtime.MemProfileRate (0: the runtime's default; 1 records every allocation, for an exact heap profile by allocation site)")
	perConn := flag.Bool("goroutine-per-conn", false, "keep one blocked reader goroutine per connection instead of parking idle readers (broker.Config.GoroutinePerConnection)")
	flag.Parse()
	if *memProfileRate > 0 {
		runtime.MemProfileRate = *memProfileRate
	}
	if *gogc != 0 {
		debug.SetGCPercent(*gogc)
	}
	if *memLimit > 0 {
		debug.SetMemoryLimit(*memLimit)
	}
	if *rootFile == "" || *servicesFile == "" || *certFile == "" || *keyFile == "" || *stateDir == "" {
		return errors.New("-root, -services, -cert, -key and -state are required")
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	go func() { // the harness holds our stdin; EOF means it is gone
		_, _ = io.Copy(io.Discard, os.Stdin)
		stop()
	}()

	root, err := readCert(*rootFile)
	if err != nil {
		return err
	}
	services, err := readCert(*servicesFile)
	if err != nil {
		return err
	}
	verifier := pki.NewVerifier(pki.Transport, root, services, nil)
	var verifyClient broker.VerifyClientFunc
	if *intermediates != "" {
		cas, err := pki.ReadCertsFile(*intermediates)
		if err != nil {
			return err
		}
		verifier.AddCAs(append(cas, services)...)
		verifyClient = func(leaf *x509.Certificate, inter []*x509.Certificate) ([]*x509.Certificate, error) {
			_, chain, err := verifier.Verify(leaf, inter, time.Time{}, x509.ExtKeyUsageClientAuth)
			return chain, err
		}
	}
	cert, err := tls.LoadX509KeyPair(*certFile, *keyFile)
	if err != nil {
		return err
	}
	getCert := func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return &cert, nil }
	// The broker's series and the runtime's GC pauses and scheduling
	// latencies, served on -debug-addr at /metrics: the harness attributes
	// a run's latency with them (loadtest.Broker.Metrics).
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(collectors.WithGoCollectorRuntimeMetrics(collectors.MetricsGC, collectors.MetricsScheduler)),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	b, err := broker.New(broker.Config{
		Registerer:             reg,
		Addr:                   *addr,
		TLS:                    tlsConfig(getCert, verifier, verifyClient != nil),
		VerifyClient:           verifyClient,
		Identify:               loadtest.Identify(verifier),
		Grants:                 tacs.DefaultGrants(),
		StateDir:               *stateDir,
		GoroutinePerConnection: *perConn,
		Logger:                 slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelError})),
	})
	if err != nil {
		return err
	}
	if *cpuProfile != "" {
		f, err := os.Create(*cpuProfile)
		if err != nil {
			return err
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			return err
		}
		defer func() {
			pprof.StopCPUProfile()
			_ = f.Close()
		}()
	}
	if *debugAddr != "" {
		ln, err := net.Listen("tcp", *debugAddr)
		if err != nil {
			return err
		}
		if !ln.Addr().(*net.TCPAddr).IP.IsLoopback() {
			return fmt.Errorf("-debug-addr %s: loopback only", *debugAddr)
		}
		http.HandleFunc("/debug/memory", memoryClasses)
		http.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
		go func() { _ = http.Serve(ln, nil) }() // net/http/pprof registers on the default mux
		fmt.Fprintf(os.Stderr, "pprof on http://%s/debug/pprof/\n", ln.Addr())
		fmt.Printf("DEBUG %s\n", ln.Addr())
	}
	fmt.Printf("ADDR %s\n", b.Addr())
	return b.Serve(ctx)
}

// tlsConfig is the platform's broker TLS: verified against the root by the
// TLS layer, or by VerifyClient (which the platform uses).
func tlsConfig(getCert func(*tls.ClientHelloInfo) (*tls.Certificate, error), v *pki.Verifier, own bool) *tls.Config {
	if own {
		return tlspolicy.Server(getCert, v.Roots(), tls.RequireAndVerifyClientCert, nil)
	}
	return tlspolicy.Server(getCert, v.Roots(), tls.RequireAndVerifyClientCert, v.VerifyConnection)
}

func readCert(file string) (*x509.Certificate, error) {
	certs, err := pki.ReadCertsFile(file)
	if err != nil {
		return nil, err
	}
	if len(certs) != 1 {
		return nil, fmt.Errorf("%s: want one certificate, got %d", file, len(certs))
	}
	return certs[0], nil
}

// memoryClasses writes where the process's memory is, from runtime/metrics
// ("NAME VALUE" lines; ?gc=1 collects first, ?free=1 also returns free
// memory to the OS): live heap objects against
// free, unused and released heap spans, stacks and the runtime's own, so
// an idle connection's RSS can be split into live data and GC slack.
func memoryClasses(w http.ResponseWriter, r *http.Request) {
	switch {
	case r.URL.Query().Get("free") == "1":
		debug.FreeOSMemory() // a GC, then every free span returned to the OS
	case r.URL.Query().Get("gc") == "1":
		runtime.GC()
	}
	var samples []metrics.Sample
	for _, d := range metrics.All() {
		if d.Kind == metrics.KindUint64 && (strings.HasPrefix(d.Name, "/memory/classes/") || strings.HasPrefix(d.Name, "/gc/heap/") ||
			d.Name == "/gc/gogc:percent" || d.Name == "/gc/gomemlimit:bytes" || d.Name == "/sched/goroutines:goroutines") {
			samples = append(samples, metrics.Sample{Name: d.Name})
		}
	}
	metrics.Read(samples)
	for _, s := range samples {
		fmt.Fprintf(w, "%s %d\n", s.Name, s.Value.Uint64())
	}
}
