package main

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/fieldtrust/fieldtrust/internal/datadir"
	"github.com/fieldtrust/fieldtrust/internal/dcc/registry"
	"github.com/fieldtrust/fieldtrust/internal/envelope"
	"github.com/fieldtrust/fieldtrust/internal/store/postgres"
	"github.com/fieldtrust/fieldtrust/internal/store/registrystore"
	"github.com/fieldtrust/fieldtrust/internal/store/sqlite"
)

func newRegistryCmd() *cobra.Command {
	var data, addr, db, mirror, pin string
	c := &cobra.Command{
		Use:   "registry --data DIR --http-addr ADDR",
		Short: "Run the DCC V&V registry (transparency log, public lookups and verification)",
		Long: `Run the independent DCC verification and validation registry standalone: labs
register as issuers ('fieldtrust registry issuer'), submit DCCs (POST
/api/v1/registry/dcc), and anyone looks them up by DCC id or equipment with
inclusion proofs against signed checkpoints (docs/dcc.md). With --mirror URL
--pin CERT it mirrors another registry read-only, checking its log.

DIR/registry/ holds the checkpoint key and certificate (created at first
start; give the certificate to mirrors and clients to pin). The database is
DIR/registry.db (SQLite) or --db postgres://...`,
		Args: sealNoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if data == "" || addr == "" {
				return usageError{errors.New("give --data DIR and --http-addr ADDR")}
			}
			ctx := cmd.Context()
			lg := slog.New(slog.NewTextHandler(cmd.ErrOrStderr(), nil))
			st, closeDB, err := openRegistryStore(ctx, data, db)
			if err != nil {
				return err
			}
			defer closeDB()
			var r *registry.Registry
			var m *registry.Mirror
			if mirror != "" {
				if pin == "" {
					return usageError{errors.New("--mirror needs --pin CERT: the source registry's checkpoint certificate")}
				}
				certs, err := readCertFile(pin)
				if err != nil {
					return usageError{fmt.Errorf("--pin: %w", err)}
				}
				if r, err = registry.New(ctx, st, registry.Options{Cert: certs[0], Logger: lg}); err != nil {
					return err
				}
				m = &registry.Mirror{Source: strings.TrimRight(mirror, "/"), Pin: certs[0], Local: r}
			} else {
				key, cert, err := registry.LoadKey(data)
				if err != nil {
					return err
				}
				if r, err = registry.New(ctx, st, registry.Options{Key: key, Cert: cert, Logger: lg}); err != nil {
					return err
				}
			}
			srv := &http.Server{Addr: addr, Handler: r.Handler(), ReadHeaderTimeout: 10 * time.Second, ReadTimeout: time.Minute}
			errc := make(chan error, 1)
			go func() { errc <- srv.ListenAndServe() }()
			lg.Info("registry listening", "addr", addr, "mirror", mirror)
			tick := time.NewTicker(10 * time.Second)
			defer tick.Stop()
			for {
				if m != nil {
					if n, err := m.Sync(ctx); err != nil {
						lg.Error("mirror sync failed", "err", err)
					} else if n > 0 {
						lg.Info("mirrored", "entries", n)
					}
				}
				select {
				case err := <-errc:
					return fmt.Errorf("registry HTTP: %w", err)
				case <-ctx.Done():
					sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
					defer cancel()
					return srv.Shutdown(sctx)
				case <-tick.C:
				}
			}
		},
	}
	f := c.Flags()
	f.StringVar(&data, "data", "", "registry data directory")
	f.StringVar(&addr, "http-addr", "", "listen address, e.g. 127.0.0.1:8444")
	f.StringVar(&db, "db", "", "postgres://... DSN (default: SQLite in DIR/registry.db)")
	f.StringVar(&mirror, "mirror", "", "mirror the registry at this base URL (read-only)")
	f.StringVar(&pin, "pin", "", "the mirrored registry's checkpoint certificate (PEM)")
	c.AddCommand(newRegistryIssuerCmd(), newRegistryRevokeCmd())
	return c
}

func newRegistryRevokeCmd() *cobra.Command {
	var certPath, keyPath, id, reason, out string
	c := &cobra.Command{
		Use:   "revoke --cert CERT --key KEY --dcc-id ID --reason TEXT --out F",
		Short: "Sign a lab's revocation of one of its DCCs, to post to the registry",
		Long: `Sign, as the lab (--cert: its signing certificate and intermediates, leaf
first, as for 'fieldtrust dcc sign'), the statement that revokes a DCC it
registered, with the reason. Post the result (CMS SignedData, DER) to the
registry:

  curl -H 'Content-Type: application/pkcs7-mime' --data-binary @revoke.cms \
    $REG/api/v1/registry/dcc

The revocation is a leaf of the registry's log; lookups show the DCC
revoked, with the reason and the revocation's proof (docs/dcc.md).`,
		Args: sealNoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if id == "" {
				return usageError{errors.New("give --dcc-id ID (the DCC's coreData/uniqueIdentifier)")}
			}
			stmt, err := json.Marshal(registry.Statement{Action: "revoke", DCCID: id, Reason: reason})
			if err != nil {
				return err
			}
			if _, err := registry.ParseStatement(stmt); err != nil {
				return usageError{err}
			}
			certs, key, err := signerFromFiles(certPath, keyPath)
			if err != nil {
				return err
			}
			sd, err := envelope.Sign(stmt, &envelope.Signer{Cert: certs[0], Key: key, Chain: certs[1:], EmbedCerts: true}, time.Now())
			if err != nil {
				return fmt.Errorf("sign the revocation: %w", err)
			}
			return writeOutput(cmd, out, sd)
		},
	}
	f := c.Flags()
	f.StringVar(&certPath, "cert", "", "lab certificate and intermediates (PEM, leaf first)")
	f.StringVar(&keyPath, "key", "", "lab private key (PEM)")
	f.StringVar(&id, "dcc-id", "", "the DCC to revoke")
	f.StringVar(&reason, "reason", "", "why (shown in lookups)")
	f.StringVar(&out, "out", "-", "the signed statement (DER); - for stdout")
	return c
}

func newRegistryIssuerCmd() *cobra.Command {
	var data, db, lab string
	var roots []string
	c := &cobra.Command{
		Use:   "issuer --data DIR --lab NAME --root ROOT [--root ROOT ...]",
		Short: "Register a calibration lab as an issuer (its signing chain's roots)",
		Args:  sealNoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if data == "" || lab == "" || len(roots) == 0 {
				return usageError{errors.New("give --data DIR, --lab NAME and --root ROOT")}
			}
			var certs []*x509.Certificate
			for _, p := range roots {
				cs, err := readCertFile(p)
				if err != nil {
					return usageError{fmt.Errorf("--root: %w", err)}
				}
				certs = append(certs, cs...)
			}
			ctx := cmd.Context()
			st, closeDB, err := openRegistryStore(ctx, data, db)
			if err != nil {
				return err
			}
			defer closeDB()
			key, cert, err := registry.LoadKey(data)
			if err != nil {
				return err
			}
			r, err := registry.New(ctx, st, registry.Options{Key: key, Cert: cert})
			if err != nil {
				return err
			}
			if err := r.AddIssuer(ctx, lab, certs); err != nil {
				return err
			}
			fmt.Fprintf(cmd.ErrOrStderr(), "registered issuer %q with %d root(s)\n", lab, len(certs))
			return nil
		},
	}
	f := c.Flags()
	f.StringVar(&data, "data", "", "registry data directory")
	f.StringVar(&db, "db", "", "postgres://... DSN (default: SQLite in DIR/registry.db)")
	f.StringVar(&lab, "lab", "", "the lab's name")
	f.StringArrayVar(&roots, "root", nil, "root certificate (PEM) the lab's signing chains verify to")
	return c
}

// openRegistryStore opens the registry's tables: in the platform's
// database when DIR is the data directory of 'fieldtrust up' (which serves
// the registry), else DIR/registry.db or --db for a standalone registry.
func openRegistryStore(ctx context.Context, data, db string) (*registrystore.Store, func(), error) {
	if err := os.MkdirAll(data, 0o700); err != nil {
		return nil, nil, err
	}
	if datadir.Initialized(data) {
		st, err := datadir.OpenStore(ctx, data, db)
		if err != nil {
			return nil, nil, err
		}
		rs, err := registrystore.Of(st)
		if err != nil {
			st.Close()
			return nil, nil, err
		}
		return rs, func() { st.Close() }, nil
	}
	if strings.HasPrefix(db, "postgres") {
		s, err := postgres.Open(ctx, db)
		if err != nil {
			return nil, nil, err
		}
		return registrystore.New(s.SQL(), true), func() { s.Close() }, nil
	}
	s, err := sqlite.Open(ctx, filepath.Join(data, "registry.db"))
	if err != nil {
		return nil, nil, err
	}
	return registrystore.New(s.SQL(), false), func() { s.Close() }, nil
}
