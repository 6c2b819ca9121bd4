// Package devicemsg is the platform's way back to the gateways: the
// device messaging service publishes commands (queued in the store by the
// CLI or the API, already signed by whoever issued them) and campaign
// notices (signed by the firmware service), reads what the gateways
// answer on commands/result and firmware/status, and records every one of
// these messages — and every firmware download — in the store, where a
// customer's audit reads them, and in the ledger.
//
// It is an MQTT client of the broker like any external service, with its
// own transport service identity and the device-manager role (write
// +/+/+/commands and +/+/+/firmware, read +/+/+/commands/result and
// +/+/+/firmware/status): no Broker.Publish. Whatever it publishes is on
// the gateway's own topics, so the customer (who reads its subtree) sees
// it; commands and notices are sealed for the gateway and the customer.
package devicemsg

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strings"
	"sync"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/fieldtrust/fieldtrust/internal/bootstrap"
	"github.com/fieldtrust/fieldtrust/internal/command"
	"github.com/fieldtrust/fieldtrust/internal/envelope"
	"github.com/fieldtrust/fieldtrust/internal/firmware"
	"github.com/fieldtrust/fieldtrust/internal/firmware/rollout"
	"github.com/fieldtrust/fieldtrust/internal/firmware/signedurl"
	"github.com/fieldtrust/fieldtrust/internal/firmware/tufrepo"
	"github.com/fieldtrust/fieldtrust/internal/ledger"
	"github.com/fieldtrust/fieldtrust/internal/pahotoken"
	"github.com/fieldtrust/fieldtrust/internal/pki"
	"github.com/fieldtrust/fieldtrust/internal/store"
	"github.com/fieldtrust/fieldtrust/internal/tacs"
	"github.com/fieldtrust/fieldtrust/internal/topic"
)

// ServiceName is the service's transport identity (role device-manager).
const ServiceName = "device-manager"

// Kinds of device message.
const (
	KindCommand  = "command"
	KindNotice   = "notice"
	KindDownload = "download"
	KindResult   = "result"
	KindStatus   = "status"
	KindRefusal  = "refusal" // a gateway reports it ignored a forged or unreadable message
)

// Command states.
const (
	Queued  = "queued"
	Sent    = "sent"
	Expired = "expired"
)

// Store is what the service reads and writes.
type Store interface {
	store.Firmware
	rollout.Store
	ListCertificates(ctx context.Context, f store.CertFilter) ([]store.Certificate, error)
}

// Ledger records device messages.
type Ledger interface {
	Append(ctx context.Context, leaves [][]byte) (first, size uint64, root []byte, err error)
}

// E2E verifies e2e certificates and signers (*pki.Verifier).
type E2E interface {
	bootstrap.E2EVerifier
	envelope.SignerVerifier
}

// RecordHash is what the ledger leaf of a device message commits to
// (ledger.MessageRecord.Hash); the leaf is ledger.LeafData(gateway,
// RecordHash).
func RecordHash(m store.DeviceMessage) [32]byte { return Record(m).Hash() }

// Record is the ledger's view of a device message.
func Record(m store.DeviceMessage) ledger.MessageRecord {
	return ledger.MessageRecord{Kind: m.Kind, ID: m.ID, Ref: m.Ref, Sender: m.Sender, Name: m.Name, At: m.At, Body: m.Body}
}

// NewID returns a random message id.
func NewID() string {
	b := make([]byte, 8)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// Recipients are the certificates a message for a gateway is sealed for:
// the gateway's newest valid e2e certificate (required), and its
// customer's — the account's and master account's, when they have one —
// so that the customer can read what was sent to its equipment.
func Recipients(ctx context.Context, records bootstrap.Records, e2e bootstrap.E2EVerifier, gateway string, log *slog.Logger) ([]*x509.Certificate, error) {
	path, err := pki.ParsePath(gateway)
	if err != nil || len(path) != 3 {
		return nil, fmt.Errorf("%q is not a gateway path master/account/gateway", gateway)
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	var out []*x509.Certificate
	for _, p := range []pki.Path{path, path[:2], path[:1]} {
		c, err := bootstrap.LatestE2E(ctx, records, e2e, p, log)
		if err != nil {
			return nil, err
		}
		if c == nil && len(p) == 3 {
			return nil, fmt.Errorf("%w: %s", ErrNoE2E, gateway)
		}
		if c != nil {
			out = append(out, c)
		}
	}
	return out, nil
}

// ErrNoE2E: the gateway cannot be sent anything sealed.
var ErrNoE2E = errors.New("the gateway has no valid e2e certificate to seal for (has it enrolled?)")

// QueueCommand signs a command by signer, seals it for the gateway and its
// customer, and queues it for the running platform to publish.
func QueueCommand(ctx context.Context, st Store, e2e bootstrap.E2EVerifier, signerOf func() (*envelope.Signer, error), signerID string, cmd command.Command) error {
	rcpts, err := Recipients(ctx, st, e2e, cmd.Gateway, nil)
	if err != nil {
		return err
	}
	signer, err := signerOf()
	if err != nil {
		return err
	}
	content, err := json.Marshal(cmd)
	if err != nil {
		return err
	}
	if _, err := command.Parse(content); err != nil {
		return err
	}
	env, err := envelope.Seal(content, envelope.SealOptions{Recipients: rcpts, Signer: signer})
	if err != nil {
		return fmt.Errorf("seal command: %w", err)
	}
	return st.PutDeviceMessage(ctx, store.DeviceMessage{ID: cmd.ID, Kind: KindCommand, Gateway: cmd.Gateway, Ref: cmd.ID, Sender: signerID,
		Name: cmd.Type, At: time.Now(), Expires: cmd.Expires, Body: env, State: Queued, LedgerIndex: -1})
}

// Config configures the service.
type Config struct {
	Store  Store
	Ledger Ledger
	E2E    E2E
	// Broker is host:port of the broker, TLS the client configuration with
	// the service's transport certificate (role device-manager).
	Broker string
	TLS    *tls.Config
	// ClientID is the MQTT client ID; default "device-manager" (the
	// clustered tier binds it to the identity).
	ClientID string
	// NoticeSigner signs campaign notices (the e2e "firmware" service).
	NoticeSigner func() (*envelope.Signer, error)
	Repo         *tufrepo.Repo
	URLs         *signedurl.Signer
	URLValidity  time.Duration // default signedurl.DefaultValidity
	Every        time.Duration // how often queued work is looked at; default 1 s
	Logger       *slog.Logger
}

// Service runs the device messaging.
type Service struct {
	cfg  Config
	log  *slog.Logger
	wake chan struct{}
	// downloads waits for the next session to be published on the
	// gateways' firmware topics (download records).
	mu        sync.Mutex
	downloads []store.DeviceMessage
	// Stats for tests and metrics.
	stats Stats
}

// Stats count what the service did.
type Stats struct {
	mu                          sync.Mutex
	Commands, Notices, Received int
	Rejected                    int
}

// New returns the service.
func New(cfg Config) *Service {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.URLValidity <= 0 {
		cfg.URLValidity = signedurl.DefaultValidity
	}
	if cfg.Every <= 0 {
		cfg.Every = time.Second
	}
	return &Service{cfg: cfg, log: cfg.Logger, wake: make(chan struct{}, 1)}
}

// Wake makes the service look at its work now.
func (s *Service) Wake() {
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// Record stores a device message and its ledger leaf.
func (s *Service) Record(ctx context.Context, m store.DeviceMessage) error {
	m.LedgerIndex = -1
	if err := s.cfg.Store.PutDeviceMessage(ctx, m); err != nil {
		return err
	}
	return s.ledger(ctx, m)
}

func (s *Service) ledger(ctx context.Context, m store.DeviceMessage) error {
	first, _, _, err := s.cfg.Ledger.Append(ctx, [][]byte{ledger.LeafData(m.Gateway, RecordHash(m))})
	if err != nil {
		return fmt.Errorf("ledger: device message %s: %w", m.ID, err)
	}
	return s.cfg.Store.SetDeviceMessage(ctx, m.ID, m.State, int64(first))
}

// Downloaded records a firmware download (the HTTPS handler calls it) and
// queues its record for the gateway's firmware topic.
func (s *Service) Downloaded(ctx context.Context, m store.DeviceMessage) error {
	if err := s.Record(ctx, m); err != nil {
		return err
	}
	s.mu.Lock()
	if len(s.downloads) < 10000 {
		s.downloads = append(s.downloads, m)
	}
	s.mu.Unlock()
	s.Wake()
	return nil
}

// Run connects and serves until ctx ends (the supervisor restarts it
// after an error).
func (s *Service) Run(ctx context.Context) error {
	in := make(chan mqtt.Message, 1024)
	lost := make(chan error, 1)
	clientID := s.cfg.ClientID
	if clientID == "" {
		clientID = ServiceName
	}
	opts := mqtt.NewClientOptions().AddBroker("ssl://" + s.cfg.Broker).SetClientID(clientID).
		SetTLSConfig(s.cfg.TLS).SetCleanSession(true).SetOrderMatters(true).
		SetKeepAlive(30 * time.Second).SetConnectTimeout(15 * time.Second).SetAutoReconnect(false).
		SetConnectionLostHandler(func(_ mqtt.Client, err error) {
			select {
			case lost <- err:
			default:
			}
		})
	c := mqtt.NewClient(opts)
	if err := pahotoken.Wait(ctx, c.Connect(), 30*time.Second); err != nil {
		return fmt.Errorf("device messaging: connect to %s: %w", s.cfg.Broker, err)
	}
	defer c.Disconnect(250)
	subs := map[string]byte{topic.AllCommandResults: 1, topic.AllFirmwareStatus: 1}
	tok := c.SubscribeMultiple(subs, func(_ mqtt.Client, m mqtt.Message) { in <- m })
	if err := pahotoken.Wait(ctx, tok, 15*time.Second); err != nil {
		return fmt.Errorf("device messaging: subscribe: %w", err)
	}
	if err := pahotoken.Granted(tok, tacs.RoleDeviceManager, slices.Collect(maps.Keys(subs))...); err != nil {
		return fmt.Errorf("device messaging: %w", err)
	}
	s.log.Info("device messaging connected", "broker", s.cfg.Broker)
	t := time.NewTicker(s.cfg.Every)
	defer t.Stop()
	refresh := time.Now()
	for {
		select {
		case <-ctx.Done():
			return nil
		case err := <-lost:
			return fmt.Errorf("device messaging: connection lost: %w", err)
		case m := <-in:
			s.receive(ctx, m)
		case <-s.wake:
		case <-t.C:
		}
		if err := s.work(ctx, c); err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		if s.cfg.Repo != nil && time.Since(refresh) > time.Minute {
			refresh = time.Now()
			if ok, err := s.cfg.Repo.Refresh(); err != nil {
				s.log.Error("firmware metadata refresh failed", "err", err)
			} else if ok {
				s.log.Info("firmware timestamp/snapshot metadata re-signed")
			}
		}
	}
}

func publish(c mqtt.Client, t string, payload []byte, retain bool) error {
	tok := c.Publish(t, 1, retain, payload)
	if !tok.WaitTimeout(15 * time.Second) {
		return fmt.Errorf("publish %s: no PUBACK within 15 s", t)
	}
	if err := tok.Error(); err != nil {
		return fmt.Errorf("publish %s: %w", t, err)
	}
	return nil
}

// work publishes queued commands, campaign notices and download records.
func (s *Service) work(ctx context.Context, c mqtt.Client) error {
	cmds, err := s.cfg.Store.DeviceMessages(ctx, store.MessageFilter{Kind: KindCommand, State: Queued, Limit: 500})
	if err != nil {
		return err
	}
	now := time.Now()
	for _, m := range cmds {
		if !m.Expires.IsZero() && !now.Before(m.Expires) {
			s.log.Warn("command expired before it could be sent", "id", m.ID, "gateway", m.Gateway)
			if err := s.cfg.Store.SetDeviceMessage(ctx, m.ID, Expired, m.LedgerIndex); err != nil {
				return err
			}
			continue
		}
		if err := publish(c, topic.CommandsOf(m.Gateway), m.Body, false); err != nil {
			return err
		}
		m.State = Sent
		if err := s.ledger(ctx, m); err != nil {
			return err
		}
		s.count(func(st *Stats) { st.Commands++ })
		s.log.Info("command sent", "id", m.ID, "gateway", m.Gateway, "name", m.Name, "by", m.Sender)
	}
	if err := s.campaigns(ctx, c); err != nil {
		return err
	}
	s.mu.Lock()
	dl := s.downloads
	s.downloads = nil
	s.mu.Unlock()
	for _, m := range dl {
		if err := s.publishRecord(ctx, c, m); err != nil {
			s.log.Warn("download record not published", "gateway", m.Gateway, "err", err)
		}
	}
	return nil
}

func (s *Service) count(f func(*Stats)) {
	s.stats.mu.Lock()
	f(&s.stats)
	s.stats.mu.Unlock()
}

// StatsNow returns a copy of the counters.
func (s *Service) StatsNow() (commands, notices, received, rejected int) {
	s.stats.mu.Lock()
	defer s.stats.mu.Unlock()
	return s.stats.Commands, s.stats.Notices, s.stats.Received, s.stats.Rejected
}

func (s *Service) campaigns(ctx context.Context, c mqtt.Client) error {
	cs, err := s.cfg.Store.Campaigns(ctx, rollout.Running, rollout.Aborting)
	if err != nil {
		return err
	}
	for _, camp := range cs {
		devs, err := s.cfg.Store.CampaignDevices(ctx, camp.ID)
		if err != nil {
			return err
		}
		d := rollout.Step(camp, devs, time.Now(), s.cfg.URLValidity/2)
		var sha string
		if len(d.Notify) > 0 {
			t, err := s.cfg.Repo.Find(camp.DeviceType, camp.Version)
			if err != nil {
				s.log.Error("campaign target missing from the repository; pausing", "campaign", camp.ID, "err", err)
				d.Next.State, d.Next.Reason, d.Changed, d.Notify = rollout.Paused, "target missing from the firmware repository: "+err.Error(), true, nil
			}
			sha = t.SHA256
		}
		for _, gw := range d.Notify {
			n := firmware.Notice{Campaign: camp.ID, Action: firmware.ActionInstall, Gateway: gw, Target: camp.Target, DeviceType: camp.DeviceType,
				Version: camp.Version, URL: s.cfg.URLs.Sign(sha, gw, time.Now().Add(s.cfg.URLValidity)), Issued: time.Now().UTC()}
			if err := s.sendNotice(ctx, c, n); err != nil {
				if errors.Is(err, ErrNoE2E) {
					s.log.Warn("campaign notice not sent", "campaign", camp.ID, "gateway", gw, "err", err)
					if _, err := s.cfg.Store.SetCampaignDevice(ctx, camp.ID, gw, firmware.Failed, err.Error(), time.Now()); err != nil {
						return err
					}
					continue
				}
				return err
			}
			if _, err := s.cfg.Store.SetCampaignDevice(ctx, camp.ID, gw, firmware.Notified, "", time.Now()); err != nil {
				return err
			}
		}
		for _, gw := range d.Abort {
			if err := s.sendNotice(ctx, c, firmware.Notice{Campaign: camp.ID, Action: firmware.ActionAbort, Gateway: gw, Issued: time.Now().UTC()}); err != nil && !errors.Is(err, ErrNoE2E) {
				return err
			}
		}
		if d.Changed {
			if d.Next.State != camp.State || d.Next.Stage != camp.Stage {
				s.log.Info("campaign", "id", camp.ID, "state", d.Next.State, "stage", d.Next.Stage, "reason", d.Next.Reason)
			}
			if err := s.cfg.Store.UpdateCampaign(ctx, d.Next); err != nil {
				return err
			}
		}
	}
	return nil
}

// sendNotice seals, publishes (retained: a gateway offline now gets it
// when it connects) and records a notice.
func (s *Service) sendNotice(ctx context.Context, c mqtt.Client, n firmware.Notice) error {
	env, err := s.seal(ctx, n.Gateway, n)
	if err != nil {
		return err
	}
	if err := publish(c, topic.FirmwareOf(n.Gateway), env, true); err != nil {
		return err
	}
	s.count(func(st *Stats) { st.Notices++ })
	return s.Record(ctx, store.DeviceMessage{ID: NewID(), Kind: KindNotice, Gateway: n.Gateway, Ref: n.Campaign, Sender: firmware.Signer, Name: n.Action, At: time.Now(), Body: env})
}

func (s *Service) seal(ctx context.Context, gw string, v any) ([]byte, error) {
	rcpts, err := Recipients(ctx, s.cfg.Store, s.cfg.E2E, gw, s.log)
	if err != nil {
		return nil, err
	}
	content, err := json.Marshal(v)
	if err != nil {
		return nil, err
	}
	signer, err := s.cfg.NoticeSigner()
	if err != nil {
		return nil, err
	}
	return envelope.Seal(content, envelope.SealOptions{Recipients: rcpts, Signer: signer})
}

// publishRecord publishes a download record on the gateway's firmware
// topic (not retained; gateways ignore it), so that the customer's
// subtree shows every download.
func (s *Service) publishRecord(ctx context.Context, c mqtt.Client, m store.DeviceMessage) error {
	env, err := s.seal(ctx, m.Gateway, firmware.Notice{Campaign: m.Ref, Action: firmware.ActionDownloaded, Gateway: m.Gateway, Target: m.Name, Issued: m.At.UTC()})
	if err != nil {
		return err
	}
	return publish(c, topic.FirmwareOf(m.Gateway), env, false)
}

// receive handles a gateway's result or status report: it must verify as
// signed by the gateway whose topic carried it.
func (s *Service) receive(ctx context.Context, m mqtt.Message) {
	path, ch, err := topic.Parse(m.Topic())
	if err != nil {
		return
	}
	opened, err := envelope.Verify(ctx, m.Payload(), envelope.VerifyOptions{Verifier: s.cfg.E2E})
	if err != nil || opened.Signer != path {
		s.count(func(st *Stats) { st.Rejected++ })
		signer := ""
		if opened != nil {
			signer = opened.Signer
		}
		s.log.Warn("gateway report refused: not signed by the gateway of its topic", "topic", m.Topic(), "signer", signer, "err", err, "bytes", len(m.Payload()))
		return
	}
	s.count(func(st *Stats) { st.Received++ })
	rec := store.DeviceMessage{ID: NewID(), Gateway: path, Sender: path, At: time.Now(), Body: m.Payload()}
	switch ch {
	case topic.CommandResults:
		r, err := command.ParseResult(opened.Content)
		if err != nil {
			s.log.Warn("command result refused", "gateway", path, "err", err)
			return
		}
		rec.Kind, rec.Ref, rec.Name = KindResult, r.ID, r.Status
		if r.Status == command.StatusRefused && r.ID == "" {
			rec.Kind, rec.Name = KindRefusal, "commands"
			s.log.Warn("gateway refused a message on its commands topic (forged or unreadable)", "gateway", path, "reason", r.Error, "digest", r.Digest, "count", r.Count)
		}
	case topic.FirmwareStatus:
		st, err := firmware.ParseStatus(opened.Content)
		if err != nil {
			s.log.Warn("firmware status refused", "gateway", path, "err", err)
			return
		}
		rec.Kind, rec.Ref, rec.Name = KindStatus, st.Campaign, st.State
		if st.Refused {
			rec.Kind, rec.Name = KindRefusal, "firmware"
			s.log.Warn("gateway refused a message on its firmware topic (forged or unreadable)", "gateway", path, "reason", st.Reason, "digest", st.Digest, "count", st.Count)
		} else if st.Campaign != "" {
			if _, err := rollout.Advance(ctx, s.cfg.Store, st.Campaign, path, st); err != nil {
				s.log.Error("campaign device state not recorded", "campaign", st.Campaign, "gateway", path, "err", err)
			}
			if st.State == firmware.Failed {
				s.log.Warn("firmware install failed", "campaign", st.Campaign, "gateway", path, "reason", st.Reason)
			}
		}
	default:
		return
	}
	if err := s.Record(ctx, rec); err != nil {
		s.log.Error("gateway report not recorded", "gateway", path, "err", err)
	}
}

// Sender names an identity for records: "service:NAME" or a path.
func Sender(serviceOrPath string) string {
	if strings.Contains(serviceOrPath, "/") || strings.HasPrefix(serviceOrPath, "service:") {
		return serviceOrPath
	}
	return "service:" + serviceOrPath
}
