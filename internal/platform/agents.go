package platform

import (
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/fieldtrust/fieldtrust/internal/agent"
	"github.com/fieldtrust/fieldtrust/internal/datadir"
	"github.com/fieldtrust/fieldtrust/internal/ledger"
	"github.com/fieldtrust/fieldtrust/internal/pki"
)

// AgentOptions tune the HTTPS agents' service.
type AgentOptions struct {
	Limits             agent.Limits
	CredentialLifetime time.Duration
}

// ExternalURLFile records the external URL 'up' serves agents at, for
// the offline 'agent create' (DIR/platform/external.url).
const ExternalURLFile = "platform/external.url"

// ExternalURL returns the URL a platform listening on httpAddr is reached
// at when none is configured: https:// + the address, with a loopback
// host for an unspecified one.
func ExternalURL(configured, httpAddr string) (string, error) {
	if configured != "" {
		u := strings.TrimRight(configured, "/")
		if !strings.HasPrefix(u, "https://") || strings.ContainsAny(u, " \t\n") {
			return "", fmt.Errorf("--external-url %q: want https://host[:port]", configured)
		}
		return u, nil
	}
	host, port, err := net.SplitHostPort(httpAddr)
	if err != nil {
		return "", err
	}
	if ip := net.ParseIP(host); host == "" || (ip != nil && ip.IsUnspecified()) {
		host = "localhost"
	}
	return "https://" + net.JoinHostPort(host, port), nil
}

// startAgents makes the agent service of the running platform and
// records its external URL.
func startAgents(cfg Config, d *datadir.Dir, httpAddr string, lg *ledger.Log, reg prometheus.Registerer, log *slog.Logger) (*agent.Service, error) {
	url, err := ExternalURL(cfg.ExternalURL, httpAddr)
	if err != nil {
		return nil, err
	}
	keys, err := agent.LoadKeys(cfg.DataDir, []byte(os.Getenv(pki.PassphraseEnv)))
	if err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(cfg.DataDir, ExternalURLFile), []byte(url+"\n"), 0o600); err != nil {
		return nil, fmt.Errorf("record the external URL: %w", err)
	}
	return agent.New(agent.Config{
		Store: d.Store, Keys: keys, BaseURL: url, Ledger: lg, Limits: cfg.Agents.Limits,
		CredentialLifetime: cfg.Agents.CredentialLifetime, Registerer: reg, Logger: log.With("component", "agents"),
	})
}
