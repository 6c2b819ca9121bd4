// Package demo sets up a demonstration fleet on a data directory: a
// device maker (a manufacturer CA and one onboarding certificate per
// gateway, as a factory would issue them), two customers with accounts and
// credentials for the API, and claims that assign each gateway to its
// customer. The gateways then onboard through EST like real ones: the demo
// gives them nothing but their onboarding certificate.
//
// Everything lives under DIR/demo and is reused on the next run.
package demo

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"errors"
	"fmt"
	"math/big"
	"os"
	"path/filepath"
	"time"

	"github.com/fieldtrust/fieldtrust/internal/console"
	"github.com/fieldtrust/fieldtrust/internal/datadir"
	"github.com/fieldtrust/fieldtrust/internal/firmware/tufrepo"
	"github.com/fieldtrust/fieldtrust/internal/pki"
	"github.com/fieldtrust/fieldtrust/internal/store"
)

// Customer is a demo customer: a master account, one account, gateways.
type Customer struct {
	Master, Account string
	Gateways        []string
}

// Customers are the demo's two customers.
var Customers = []Customer{
	{Master: "acme-pumps", Account: "plant-berlin", Gateways: []string{"gw-1", "gw-2"}},
	{Master: "globex-labs", Account: "lab-munich", Gateways: []string{"gw-1"}},
}

// Gateway is one demo gateway to run.
type Gateway struct {
	Path       string
	Onboarding tls.Certificate
	StateDir   string
}

// Fleet is what Setup prepared.
type Fleet struct {
	Dir       string // DIR/demo
	Gateways  []Gateway
	Customers map[string]string // master account -> directory with cert.pem, key.pem, ca.pem
	// FirmwareKeys is DIR/demo/firmware-keys: the demo's offline firmware
	// keys (in a real deployment they never sit on the platform), and
	// FirmwareRoot its root.json, which every demo gateway pins.
	FirmwareKeys string
	FirmwareRoot []byte
}

// Setup prepares the demo fleet on d (idempotent).
func Setup(ctx context.Context, d *datadir.Dir) (*Fleet, error) {
	f := &Fleet{Dir: filepath.Join(d.Path, "demo"), Customers: map[string]string{}}
	mfgDir := filepath.Join(f.Dir, "manufacturer")
	if err := os.MkdirAll(mfgDir, 0o700); err != nil {
		return nil, err
	}
	ca, caKey, err := manufacturerCA(mfgDir)
	if err != nil {
		return nil, err
	}
	sum := sha256.Sum256(ca.Raw)
	err = d.Store.AddManufacturer(ctx, store.Manufacturer{Fingerprint: hex.EncodeToString(sum[:]), Subject: ca.Subject.String(), NotAfter: ca.NotAfter, DER: ca.Raw, AddedAt: time.Now()})
	if err != nil && !errors.Is(err, store.ErrExists) {
		return nil, fmt.Errorf("trust the demo manufacturer: %w", err)
	}
	n := 0
	for _, c := range Customers {
		for _, g := range c.Gateways {
			n++
			path := c.Master + "/" + c.Account + "/" + g
			onb, serial, err := onboardingCert(mfgDir, fmt.Sprintf("DEMO-SN-%04d", n), ca, caKey)
			if err != nil {
				return nil, err
			}
			err = d.Store.PutClaims(ctx, []store.Claim{{
				ClaimKey:            store.ClaimKey{ManufacturerKeyID: pki.KeyID(ca), Kind: store.ClaimBySerial, Value: pki.SerialHex(serial)},
				ManufacturerSubject: ca.Subject.String(), Path: path, CreatedAt: time.Now(),
			}})
			if err != nil && !errors.Is(err, store.ErrExists) {
				return nil, fmt.Errorf("claim %s: %w", path, err)
			}
			f.Gateways = append(f.Gateways, Gateway{Path: path, Onboarding: onb, StateDir: filepath.Join(f.Dir, "gateways", c.Master+"-"+c.Account+"-"+g)})
		}
		dir, err := customerCredentials(ctx, d, filepath.Join(f.Dir, "customers", c.Master), c.Master)
		if err != nil {
			return nil, err
		}
		f.Customers[c.Master] = dir
	}
	f.FirmwareKeys = filepath.Join(f.Dir, "firmware-keys")
	if _, err := os.Stat(filepath.Join(f.FirmwareKeys, "root.json")); errors.Is(err, os.ErrNotExist) {
		if _, err := tufrepo.InitKeys(f.FirmwareKeys, time.Now(), tufrepo.DefaultExpiry); err != nil {
			return nil, fmt.Errorf("demo firmware keys: %w", err)
		}
	}
	if f.FirmwareRoot, err = os.ReadFile(filepath.Join(f.FirmwareKeys, "root.json")); err != nil {
		return nil, fmt.Errorf("demo firmware root: %w", err)
	}
	return f, nil
}

// manufacturerCA loads or creates the demo device maker's CA.
func manufacturerCA(dir string) (*x509.Certificate, *ecdsa.PrivateKey, error) {
	certFile, keyFile := filepath.Join(dir, "ca.crt"), filepath.Join(dir, "ca.key")
	if certs, err := pki.ReadCertsFile(certFile); err == nil {
		key, err := pki.ReadKeyFile(keyFile, nil)
		if err != nil {
			return nil, nil, err
		}
		return certs[0], key.(*ecdsa.PrivateKey), nil
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "Demo Devices Manufacturing CA", Organization: []string{"Demo Devices GmbH"}},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(10 * 365 * 24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, nil, err
	}
	ca, _ := x509.ParseCertificate(der)
	if err := pki.WriteKeyFile(keyFile, key, nil); err != nil {
		return nil, nil, err
	}
	return ca, key, os.WriteFile(certFile, pki.EncodeCertsPEM(ca), 0o644)
}

// onboardingCert loads or makes the onboarding certificate with the given
// common name, as the factory writes it into a gateway.
func onboardingCert(dir, cn string, ca *x509.Certificate, caKey *ecdsa.PrivateKey) (tls.Certificate, *big.Int, error) {
	certFile, keyFile := filepath.Join(dir, cn+".crt"), filepath.Join(dir, cn+".key")
	if pair, err := tls.LoadX509KeyPair(certFile, keyFile); err == nil {
		return pair, pair.Leaf.SerialNumber, nil
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, nil, err
	}
	serial, _ := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 64))
	tmpl := &x509.Certificate{
		SerialNumber: serial, Subject: pkix.Name{CommonName: cn, Organization: []string{"Demo Devices GmbH"}},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(20 * 365 * 24 * time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, key.Public(), caKey)
	if err != nil {
		return tls.Certificate{}, nil, err
	}
	c, _ := x509.ParseCertificate(der)
	if err := pki.WriteKeyFile(keyFile, key, nil); err != nil {
		return tls.Certificate{}, nil, err
	}
	if err := os.WriteFile(certFile, pki.EncodeCertsPEM(c), 0o644); err != nil {
		return tls.Certificate{}, nil, err
	}
	pair, err := tls.LoadX509KeyPair(certFile, keyFile)
	return pair, serial, err
}

// customerCredentials issues a customer's master-account credentials:
// transport (for the API and MQTT) and e2e (so that gateways seal every
// snapshot for the customer too: the customer can read every byte that
// left its site).
func customerCredentials(ctx context.Context, d *datadir.Dir, dir, master string) (string, error) {
	if _, err := os.Stat(filepath.Join(dir, "e2e-cert.pem")); err == nil { // written last
		return dir, nil
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", err
	}
	for _, a := range []*pki.Authority{d.Transport, d.E2E} {
		key, err := pki.GenerateKey(elliptic.P256())
		if err != nil {
			return "", err
		}
		iss, err := a.Issue(ctx, pki.LeafRequest{Path: pki.Path{master}, PublicKey: key.Public()})
		if err != nil {
			return "", fmt.Errorf("customer %s: %w", master, err)
		}
		prefix := ""
		if a.Domain() == pki.E2E {
			prefix = "e2e-"
		}
		if err := pki.WriteKeyFile(filepath.Join(dir, prefix+"key.pem"), key, nil); err != nil {
			return "", err
		}
		os.WriteFile(filepath.Join(dir, prefix+"cert.pem"), pki.EncodeCertsPEM(iss.Chain...), 0o644)
		os.WriteFile(filepath.Join(dir, prefix+"ca.pem"), pki.EncodeCertsPEM(iss.Root), 0o644)
	}
	return dir, nil
}

// Login is a demo person with a fresh one-time login link to the console.
type Login struct {
	Who        string // "acme-pumps", "vendor admin"
	Invitation console.Invitation
}

// VendorAdmin is the demo's vendor administrator (the vendor's admin scope).
const VendorAdmin = "admin@vendor.example"

// Logins creates (on first use) an admin user for each demo customer and
// a vendor admin, and returns a fresh one-time login link for each: the
// demo prints them so a newcomer is in the console with one click.
func Logins(ctx context.Context, d *datadir.Dir, now time.Time) ([]Login, error) {
	var out []Login
	for _, c := range Customers {
		inv, err := console.LoginLink(ctx, d.Store, "admin@"+c.Master+".example", c.Master, store.RoleAdmin, "demo", now)
		if err != nil {
			return nil, fmt.Errorf("demo login for %s: %w", c.Master, err)
		}
		out = append(out, Login{Who: c.Master, Invitation: inv})
	}
	inv, err := console.LoginLink(ctx, d.Store, VendorAdmin, console.VendorScope, store.RoleAdmin, "demo", now)
	if err != nil {
		return nil, fmt.Errorf("demo login for the vendor admin: %w", err)
	}
	return append(out, Login{Who: "vendor admin", Invitation: inv}), nil
}
