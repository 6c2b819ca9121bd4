package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"math/big"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/fieldtrust/fieldtrust/internal/dcc/registry"
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
				key, cert, err := registryKey(data)
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
	c.AddCommand(newRegistryIssuerCmd())
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
			key, cert, err := registryKey(data)
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

func openRegistryStore(ctx context.Context, data, db string) (*registrystore.Store, func(), error) {
	if err := os.MkdirAll(data, 0o700); err != nil {
		return nil, nil, err
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

// registryKey loads or creates DIR/registry/checkpoint.{key,crt}: the
// registry's checkpoint key with a self-signed certificate that clients
// and mirrors pin.
func registryKey(data string) (*ecdsa.PrivateKey, *x509.Certificate, error) {
	dir := filepath.Join(data, "registry")
	kp, cp := filepath.Join(dir, "checkpoint.key"), filepath.Join(dir, "checkpoint.crt")
	if _, err := os.Stat(kp); err == nil {
		k, err := readKeyFile(kp)
		if err != nil {
			return nil, nil, err
		}
		certs, err := readCertFile(cp)
		if err != nil {
			return nil, nil, err
		}
		ek, ok := k.(*ecdsa.PrivateKey)
		if !ok {
			return nil, nil, fmt.Errorf("%s is not an ECDSA key", kp)
		}
		return ek, certs[0], nil
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, nil, err
	}
	k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	pub, _ := x509.MarshalPKIXPublicKey(k.Public())
	ski := sha256.Sum256(pub)
	tmpl := &x509.Certificate{SerialNumber: new(big.Int).SetBytes(ski[:16]), Subject: pkix.Name{CommonName: "fieldtrust DCC registry checkpoints"},
		NotBefore: time.Now().Add(-time.Minute), NotAfter: time.Now().AddDate(20, 0, 0), KeyUsage: x509.KeyUsageDigitalSignature, SubjectKeyId: ski[:20]}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, k.Public(), k)
	if err != nil {
		return nil, nil, err
	}
	kd, _ := x509.MarshalPKCS8PrivateKey(k)
	if err := os.WriteFile(kp, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kd}), 0o600); err != nil {
		return nil, nil, err
	}
	if err := os.WriteFile(cp, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		return nil, nil, err
	}
	c, _ := x509.ParseCertificate(der)
	return k, c, nil
}
