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
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/fieldtrust/fieldtrust/internal/agent"
	"github.com/fieldtrust/fieldtrust/internal/bootstrap"
	"github.com/fieldtrust/fieldtrust/internal/broker"
	"github.com/fieldtrust/fieldtrust/internal/console"
	"github.com/fieldtrust/fieldtrust/internal/datadir"
	"github.com/fieldtrust/fieldtrust/internal/devicemsg"
	"github.com/fieldtrust/fieldtrust/internal/drain"
	"github.com/fieldtrust/fieldtrust/internal/envelope"
	"github.com/fieldtrust/fieldtrust/internal/est"
	"github.com/fieldtrust/fieldtrust/internal/firmware/campaignapi"
	"github.com/fieldtrust/fieldtrust/internal/firmware/fwhttp"
	"github.com/fieldtrust/fieldtrust/internal/firmware/signedurl"
	"github.com/fieldtrust/fieldtrust/internal/firmware/tufrepo"
	"github.com/fieldtrust/fieldtrust/internal/ingest"
	"github.com/fieldtrust/fieldtrust/internal/lease"
	"github.com/fieldtrust/fieldtrust/internal/ledger"
	"github.com/fieldtrust/fieldtrust/internal/pki"
	"github.com/fieldtrust/fieldtrust/internal/supervisor"
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
	// ExternalURL is the platform's URL as agents reach it (their
	// baseUrl); "" means https:// + the HTTPS listen address. 'up' records
	// it in DIR/platform/external.url for 'agent create'.
	ExternalURL string
	// Agents tunes the HTTPS agents' service (limits, credential
	// lifetime); zero values take its defaults.
	Agents AgentOptions
	// BrokerURLs are the broker endpoints handed to gateways in bootstrap
	// ("mqtts://host:port" or "mqtts://host:port;weight"); empty means the
	// embedded broker's own listen address.
	BrokerURLs []string
	// Broker is the broker tier: BrokerEmbedded ("" too) or BrokerCluster
	// (this process runs a node of the clustered tier, configured by
	// Cluster; docs/scale.md).
	Broker  string
	Cluster ClusterOptions
	// Grants are the service roles' topic grants (datadir.Grants); nil
	// means tacs.DefaultGrants().
	Grants tacs.Grants
	// PublishInterval is the gateways' snapshot interval (bootstrap).
	PublishInterval time.Duration
	// FirmwareURLValidity is how long signed firmware download URLs are
	// valid (default 7 days).
	FirmwareURLValidity time.Duration
	// EST policy.
	EST    est.Policy
	Logger *slog.Logger
	// Ready, if non-nil, is called once every listener is up, with the
	// actual addresses (useful with port 0).
	Ready func(httpAddr, mqttAddr string)
	// Notifications configures the delivery of what rules send.
	Notifications Notifications

	// hooks let the package's tests break parts of the platform on purpose.
	hooks *testHooks
}

// testHooks replace parts of the platform in tests; nil fields leave them.
type testHooks struct {
	ingestStore   func(ingest.Store) ingest.Store     // what ingest stores in
	ledgerStorage func(ledger.Storage) ledger.Storage // what the ledger appends to
	serveBroker   func(ctx context.Context, b *broker.Broker) error
	policy        *supervisor.Policy
	broker        string // Config.Broker
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
	// The console watches gateways' birth and will messages as an MQTT
	// client of its own (role status-reader). The device messaging service
	// publishes commands and campaign notices as an MQTT client (transport,
	// role device-manager); the firmware service signs the notices (e2e).
	consoleTLS := newServiceCert(d.Transport, "console", cfg.DataDir, nil, nil, log)
	devicesTLS := newServiceCert(d.Transport, devicemsg.ServiceName, cfg.DataDir, nil, nil, log)
	firmwareE2E := newServiceCert(d.E2E, "firmware", cfg.DataDir, nil, nil, log)
	rulesTLS := newServiceCert(d.Transport, "rules", cfg.DataDir, nil, nil, log)
	serviceCerts := []*serviceCert{cert, ingestTLS, ingestE2E, ledgerE2E, commandE2E, consoleTLS, devicesTLS, firmwareE2E, rulesTLS}
	var nodeTLS *serviceCert
	switch cfg.Broker {
	case "", BrokerEmbedded:
	case BrokerCluster:
		if _, ok := d.Store.(leaseStore); cfg.Cluster.multiNode() && !ok {
			return errMultiNodeSQLite
		}
		if nodeTLS, err = nodeCert(d, cfg, dns, ips, log); err != nil {
			return err
		}
		serviceCerts = append(serviceCerts, nodeTLS)
		if err := setClusterRoles(ctx, d, cfg.Cluster); err != nil {
			return err
		}
	default:
		return fmt.Errorf("--broker %q: use %q or %q", cfg.Broker, BrokerEmbedded, BrokerCluster)
	}
	for _, c := range serviceCerts {
		if err := c.load(ctx); err != nil {
			return err
		}
	}
	if err := d.Store.SetServiceRole(ctx, "ingest", tacs.RoleSnapshotReader); err != nil {
		return err
	}
	if err := d.Store.SetServiceRole(ctx, "console", tacs.RoleStatusReader); err != nil {
		return err
	}
	if err := d.Store.SetServiceRole(ctx, devicemsg.ServiceName, tacs.RoleDeviceManager); err != nil {
		return err
	}
	if err := d.Store.SetServiceRole(ctx, "rules", tacs.RoleRulesEngine); err != nil {
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
	grants := cfg.Grants
	if grants == nil {
		grants = tacs.DefaultGrants()
	}
	if err := grants.Validate(); err != nil {
		return fmt.Errorf("service grants: %w", err)
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))

	brokerConfig := broker.Config{
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
	}
	brokers := &brokerRef{}
	var tier publisher = brokers // what publishes and revalidates
	var mqttAddr string
	var ct *clusterTier
	if cfg.Broker == BrokerCluster {
		if ct, err = startClusterTier(ctx, cfg, d, nodeTLS, cert, verifier, ids, grants, log); err != nil {
			return err
		}
		defer ct.stop()
		tier, mqttAddr = ct, ct.node.MQTTAddr()
	} else {
		brk, err := broker.New(brokerConfig)
		if err != nil {
			return fmt.Errorf("start broker on --mqtt-addr %s: %w", cfg.MQTTAddr, err)
		}
		brokers.cur.Store(brk)
		mqttAddr = brk.Addr()
	}

	estSrv, err := est.New(est.Options{Transport: d.Transport, E2E: d.E2E, Verifier: verifier, Records: d.Store, Policy: cfg.EST, Logger: log.With("component", "est")})
	if err != nil {
		return err
	}
	brokerURLs, err := brokerList(cfg.BrokerURLs, mqttAddr)
	if err != nil {
		return err
	}
	interval := cfg.PublishInterval
	if interval <= 0 {
		interval = 10 * time.Second
	}
	bs, err := bootstrap.New(bootstrap.Config{
		Brokers: brokerURLs, PublishInterval: interval, RenewalFraction: 2.0 / 3, CRLTopic: topic.CRLTransport,
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
	var ledgerStorage ledger.Storage = d.Store
	var ingestStore ingest.Store = d.Store
	if h := cfg.hooks; h != nil && h.ledgerStorage != nil {
		ledgerStorage = h.ledgerStorage(ledgerStorage)
	}
	if h := cfg.hooks; h != nil && h.ingestStore != nil {
		ingestStore = h.ingestStore(ingestStore)
	}
	lg, err := ledger.Open(ctx, ledgerStorage)
	if err != nil {
		return err
	}
	sup := supervisor.New(servicePolicy(cfg.hooks), log.With("component", "supervisor"))
	ingestStatus := &ingest.Status{}
	ingestHealth := ingestStatus.Health // a multi-node cluster's node sums up its partitions
	var leases *lease.Manager           // a multi-node cluster's: who runs what
	dccReg, err := newDCCRegistry(d.Store, cfg.DataDir, log.With("component", "registry"))
	if err != nil {
		return err
	}
	calLink := dccReg.link()
	api := &web.API{Calibration: calLink,
		Data: d.Store, Proofs: lg, Grants: grants, Logger: log.With("component", "api"), Rules: d.Store, Messages: d.Store,
		Identify: func(r *http.Request) (tacs.Subject, bool) {
			id, ok := est.IdentityFromContext(r.Context())
			if !ok {
				return tacs.Subject{}, false
			}
			subj, err := ids.subjectOf(id)
			return subj, err == nil
		},
	}
	// The web console (package console) at / on the same listener, behind
	// the same guard: a certificate it sees is a verified transport one.
	transportRoots := x509.NewCertPool()
	transportRoots.AddCert(d.Transport.Root())
	consoleClient := tlspolicy.Client(transportRoots, nil)
	consoleClient.GetClientCertificate = consoleTLS.GetClientCertificate
	watcher := &console.StatusWatcher{TLS: consoleClient, ClientID: "console-status", Logger: log.With("component", "console")}
	if cfg.Broker == BrokerCluster {
		watcher.ClientID = cfg.Cluster.clientID("console") // the cluster binds sessions to identities
	}
	// Commands from the API and the console; the device messaging service
	// it wakes is set below.
	cmds := &commander{signer: commandE2E, e2e: e2eVerifier, store: d.Store, ids: ids, grants: grants, log: log.With("component", "commands")}
	con, err := console.New(console.Options{
		Store: d.Store, Grants: grants, Proofs: lg, Revoker: d.Transport, Status: watcher, Rules: d.Store, Calibration: api.Calibration, Firmware: d.Store,
		Devices: cmds, FirmwareRepo: tufrepo.Open(cfg.DataDir),
		Hosts: append([]string{"localhost"}, cfg.DNSNames...), Logger: log.With("component", "console"),
		CertSubject: func(r *http.Request) (tacs.Subject, *x509.Certificate, bool) {
			id, ok := est.IdentityFromContext(r.Context())
			if !ok || r.TLS == nil || len(r.TLS.VerifiedChains) == 0 {
				return tacs.Subject{}, nil, false
			}
			subj, err := ids.subjectOf(id)
			return subj, r.TLS.VerifiedChains[0][0], err == nil
		},
	})
	if err != nil {
		return err
	}
	watcher.OnChange = con.StatusChanged
	agents, err := startAgents(cfg, d, httpLn.Addr().String(), lg, reg, log)
	if err != nil {
		return err
	}
	mux := http.NewServeMux()
	mux.Handle(est.PathPrefix, estSrv)
	// HTTPS agents present no client certificate; they authenticate with
	// OAuth (package agent). The guard still refuses a bad certificate.
	agentMux := http.NewServeMux()
	agents.Register(agentMux)
	mux.Handle(agent.ManagementPrefix+"/", est.GuardOperational(verifier, log, agentMux))
	mux.Handle(agent.MindConnectPrefix+"/", est.GuardOperational(verifier, log, agentMux))
	agentAdmin := est.GuardOperational(verifier, log, &agent.Admin{Service: agents, Identify: api.Identify, Grants: grants})
	mux.Handle("GET /api/v1/agents", agentAdmin)
	mux.Handle("POST /api/v1/agents", agentAdmin)
	mux.Handle("GET /api/v1/agents/{master}/{account}/{agent}", agentAdmin)
	mux.Handle("POST /api/v1/agents/{master}/{account}/{agent}/revoke", agentAdmin)
	mux.Handle("POST /api/v1/agents/{master}/{account}/{agent}/rotate-iat", agentAdmin)
	mux.Handle(bootstrap.Path, bs)
	mux.Handle("/api/v1/registry/", dccReg) // public: writes carry the lab's signature (docs/dcc.md)
	fwRepo := tufrepo.Open(cfg.DataDir)
	fwURLs, err := signedurl.LoadOrCreate(filepath.Join(fwRepo.Dir(), "url.key"))
	if err != nil {
		return err
	}
	devicesClient := tlspolicy.Client(transportRootPool(d.Transport.Root()), nil)
	devicesClient.GetClientCertificate = devicesTLS.GetClientCertificate
	devicesClientID := "" // devicemsg's default
	if ct != nil {
		devicesClientID = cfg.Cluster.clientID(devicemsg.ServiceName)
	}
	devices := devicemsg.New(devicemsg.Config{
		Store: d.Store, Ledger: lg, E2E: e2eVerifier, Broker: mqttAddr, ClientID: devicesClientID, TLS: devicesClient,
		NoticeSigner: func() (*envelope.Signer, error) { return firmwareE2E.signer() },
		Repo:         fwRepo, URLs: fwURLs, URLValidity: cfg.FirmwareURLValidity, Logger: log.With("component", "devices"),
	})
	(&fwhttp.Handler{Repo: fwRepo, URLs: fwURLs, Recorder: devices, NewID: devicemsg.NewID, Log: log.With("component", "firmware")}).
		Register(mux, func(h http.Handler) http.Handler { return est.GuardOperational(verifier, log, h) })
	(&campaignapi.Handler{Store: d.Store, Repo: fwRepo, Identify: api.Identify, Grants: grants, Wake: devices.Wake, Log: log.With("component", "campaigns")}).
		Register(mux, func(h http.Handler) http.Handler { return est.GuardOperational(verifier, log, h) })
	cmds.devices = devices
	mux.Handle("POST /api/v1/gateways/{path...}", est.GuardOperational(verifier, log, cmds))
	mux.Handle("GET /api/v1/gateways/{path...}", est.GuardOperational(verifier, log, &devicemsg.Audit{Store: d.Store, Identify: api.Identify, Grants: grants, Log: log.With("component", "audit")}))
	mux.Handle("/", est.GuardOperational(verifier, log, web.New(web.Options{
		Roots:   map[pki.Domain]*x509.Certificate{pki.Transport: d.Transport.Root(), pki.E2E: d.E2E.Root()},
		Metrics: requireGrant(ids, grants, topic.System, promhttp.HandlerFor(reg, promhttp.HandlerOpts{})),
		Health: func() (bool, any) {
			var v *lease.View
			if leases != nil {
				view := leases.View()
				v = &view
			}
			return health(sup.Status(), ingestHealth(), v)
		},
		API:    api,
		Pages:  con,
		Logger: log,
	})))
	httpTLS := tlspolicy.Server(cert.GetCertificate, nil, tls.RequestClientCert, nil)
	newServer := func() *http.Server {
		return &http.Server{
			Handler:           mux,
			TLSConfig:         httpTLS,
			ReadHeaderTimeout: 10 * time.Second,
			IdleTimeout:       2 * time.Minute,
			ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelDebug),
		}
	}

	rev := &revocation{ids: ids, e2e: e2eVerifier, broker: tier, auths: []*pki.Authority{d.Transport, d.E2E}, log: log}
	opener, err := envelope.NewOpener(ingestE2E.Current().Leaf, ingestE2E.Current().PrivateKey, envelope.OpenOptions{
		VerifyOptions: envelope.VerifyOptions{Signers: ingest.SignerLookup{V: e2eVerifier}, Verifier: e2eVerifier},
	})
	if err != nil {
		return err
	}
	ingestClient := tlspolicy.Client(transportRoots, nil)
	ingestClient.GetClientCertificate = ingestTLS.GetClientCertificate
	heads := &treeHeads{log: lg, store: d.Store, signer: ledgerE2E, logger: log, reload: cfg.Cluster.multiNode()}
	httpAddr := httpLn.Addr().String()
	watcher.Broker = mqttAddr
	rulesClient := tlspolicy.Client(transportRoots, nil)
	rulesClient.GetClientCertificate = rulesTLS.GetClientCertificate
	rp := newRulesPlatform(cfg.Notifications, d.Store, cfg.DataDir, mqttAddr, rulesClient, reg, log)
	// Rules read the DCC fleet link (docs/rules.md, calibration).
	rp.svc.Calibration = calLink
	ingestClientID := "" // ingest's default
	if ct != nil {
		// The cluster binds sessions to identities by client ID.
		ingestClientID, rp.broker.ClientID = cfg.Cluster.clientID("ingest"), cfg.Cluster.clientID("rules")
	}

	// Every service of the platform runs under the supervisor (restart
	// policy: servicePolicy). The broker's first instance and the HTTPS
	// listener exist already, so that Ready reports bound addresses; a
	// restart binds the same addresses again.
	serveBroker := func(ctx context.Context, b *broker.Broker) error { return b.Serve(ctx) }
	if h := cfg.hooks; h != nil && h.serveBroker != nil {
		serveBroker = h.serveBroker
	}
	services := []supervisor.Service{
		{Name: "broker", Run: func(ctx context.Context) error {
			b := brokers.cur.Load()
			if b == nil {
				bc := brokerConfig
				bc.Addr = mqttAddr
				var err error
				if b, err = broker.New(bc); err != nil {
					return fmt.Errorf("restart on %s: %w", mqttAddr, err)
				}
				brokers.cur.Store(b)
				log.Info("broker restarted", "addr", mqttAddr)
			}
			err := serveBroker(ctx, b)
			brokers.cur.CompareAndSwap(b, nil)
			if ctx.Err() == nil {
				return fmt.Errorf("stopped: %v", err)
			}
			return nil
		}},
		{Name: "ingest", Run: func(ctx context.Context) error {
			return ingest.Run(ctx, ingest.Config{
				Broker: mqttAddr, ClientID: ingestClientID, Unshared: ct != nil, TLS: ingestClient, Opener: opener, Status: ingestStatus,
				Store: ingestStore, Ledger: lg, Logger: log.With("component", "ingest"), Registerer: reg,
				Committed: rp.committed,
			})
		}},
		// An MQTT client of the broker: while the broker is down it
		// fails at once, so it never ends 'up' itself (the broker's own
		// policy does), as rules-broker.
		{Name: "devices", Run: devices.Run, GiveUpAfter: -1},
		{Name: "revocation", Run: rev.run, GiveUpAfter: 10},
		{Name: "treeheads", Run: heads.run, GiveUpAfter: 10},
		{Name: "https", Run: func(ctx context.Context) error {
			ln := httpLn
			httpLn = nil
			if ln == nil {
				var err error
				if ln, err = net.Listen("tcp", httpAddr); err != nil {
					return fmt.Errorf("listen on %s again: %w", httpAddr, err)
				}
			}
			return serveHTTPS(ctx, newServer(), ln, log)
		}},
		{Name: "certificates", Run: func(ctx context.Context) error { return renewServiceCerts(ctx, serviceCerts) }, GiveUpAfter: -1},
		{Name: "registry", Run: dccReg.run, GiveUpAfter: 10},
		{Name: "console", Run: con.Run, GiveUpAfter: 10},
		{Name: "gateway-status", Run: watcher.Run, GiveUpAfter: -1},
	}
	services = append(services, rp.services()...)
	if ct != nil {
		services[0] = supervisor.Service{Name: "broker", Run: ct.run}
	}
	// runCtx ends the services; a drained node of several ends it itself.
	runCtx, stopRun := context.WithCancel(ctx)
	defer stopRun()
	if ct != nil && cfg.Cluster.multiNode() {
		// Several nodes: ingest by partitions, the singletons by lease.
		// Partition sessions keep their metrics private (a partition
		// moves between nodes; the store's counts are the totals).
		pi := &partitionedIngest{certs: d.Store, cover: d.Store.(coverageStore), statuses: map[int]*ingest.Status{}, log: log.With("component", "ingest"),
			base: ingest.Config{Broker: mqttAddr, TLS: ingestClient, Opener: opener, Store: ingestStore, Ledger: lg,
				Logger: log.With("component", "ingest"), Committed: rp.committed}}
		if services, leases, err = splitForCluster(cfg.Cluster.nodeName(), d.Store.(leaseStore), services, pi, log); err != nil {
			return err
		}
		ingestHealth = pi.health
		services = append(services, drainService(cfg.Cluster.nodeName(), d.Store.(drain.Store), leases, ct, stopRun, log))
		if len(cfg.BrokerURLs) < 2 {
			log.Warn("a node of several without a --broker-url per node: gateways bootstrapped here learn only this node and cannot fail over (docs/scale.md)")
		}
	}
	if err := publishFirstCRLs(ctx, rev, cfg.Cluster.multiNode(), log); err != nil {
		return err
	}
	log.Info("platform up", "https", "https://"+httpAddr, "mqtt", "mqtts://"+mqttAddr)
	if cfg.Ready != nil {
		cfg.Ready(httpAddr, mqttAddr)
	}
	runErr := sup.Run(runCtx, services...)
	if runErr != nil {
		log.Error("platform stopping: a service keeps failing", "err", runErr)
	}
	log.Info("platform stopped")
	return runErr
}

// servicePolicy is the platform's restart policy: a failed service is
// restarted after 1 s, doubling to 30 s; the broker, ingest and HTTPS end
// 'up' after 5 failures in a row (about 30 s of failing: a port taken, a
// broken configuration), revocation and tree heads after 10 (about 3 min:
// a database outage they cannot work without), and certificate renewal
// never (a certificate outlives a long outage of its CA: 10 days of its
// 30 remain when renewal starts). A run of a minute resets the count.
func servicePolicy(h *testHooks) supervisor.Policy {
	if h != nil && h.policy != nil {
		return *h.policy
	}
	return supervisor.Policy{MinBackoff: time.Second, MaxBackoff: 30 * time.Second, StableAfter: time.Minute, GiveUpAfter: 5}
}

// serveHTTPS serves srv on ln until ctx ends, then shuts down with a grace
// for the requests in flight.
func serveHTTPS(ctx context.Context, srv *http.Server, ln net.Listener, log *slog.Logger) error {
	served := make(chan error, 1)
	go func() { served <- srv.ServeTLS(ln, "", "") }()
	select {
	case err := <-served:
		return err
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), shutdownGrace)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil && !errors.Is(err, http.ErrServerClosed) {
		log.Warn("https shutdown", "err", err)
	}
	<-served
	return nil
}

// brokerRef is the running broker, replaced when the supervisor restarts
// it; nil between the two.
type brokerRef struct{ cur atomic.Pointer[broker.Broker] }

var errNoBroker = errors.New("the broker is restarting")

// Publish implements the publisher the platform's services use.
func (r *brokerRef) Publish(topic string, payload []byte, retain bool, qos byte) error {
	b := r.cur.Load()
	if b == nil {
		return errNoBroker
	}
	return b.Publish(topic, payload, retain, qos)
}

// Revalidate ends the live sessions that no longer verify.
func (r *brokerRef) Revalidate(ctx context.Context) int {
	b := r.cur.Load()
	if b == nil {
		return 0
	}
	return b.Revalidate(ctx)
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
