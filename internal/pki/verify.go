package pki

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"maps"
	"sync"
	"sync/atomic"
	"time"

	"github.com/fieldtrust/fieldtrust/internal/store"
)

// ErrRevoked is returned (wrapped) when a certificate in a chain is revoked.
var ErrRevoked = errors.New("certificate revoked")

// ErrUntrusted is returned (wrapped) when a chain does not verify against
// the domain's root.
var ErrUntrusted = errors.New("certificate not trusted")

// Verifier checks certificate chains of one trust domain: signature chain to
// the root, validity, namespace (IdentityFromChain), key (CheckKey) and
// revocation, of serials and of identity paths. Its revocation state is a
// snapshot that Refresh replaces atomically, so the broker can keep
// verifying while the operator revokes from the CLI.
type Verifier struct {
	domain   Domain
	root     *x509.Certificate
	services *x509.Certificate
	roots    *x509.CertPool
	records  Records                         // nil for a verifier built from fixed state
	state    atomic.Pointer[revocationState] // never nil after construction
	// version is the store's revocation version state was loaded at;
	// -1 before the first load. Guarded by refreshMu.
	refreshMu sync.Mutex
	version   int64

	// chains caches x509 chain building, the expensive part of Verify
	// (one ECDSA verification per link), per leaf + intermediates + usage.
	// Only the signature chain is cached; revocation, namespace and the
	// validity window are checked on every call. Guarded by mu.
	mu     sync.Mutex
	chains map[[32]byte]cachedChains
	// building holds the chain builds under way, by cache key: callers
	// that miss the cache for a key being built wait for that build
	// instead of repeating it (ingest opens envelopes of one signer on
	// several goroutines at once; each build is a few P-384
	// verifications). Guarded by mu.
	building map[[32]byte]*chainBuild
	// testHookBuild, if set, runs at the start of every chain build.
	testHookBuild func()

	// cas holds the domain's intermediate CAs known from the store, so
	// that signers named only by key id (their chain not embedded) and
	// clients presenting their leaf alone verify. Written under casMu.
	cas   atomic.Pointer[caSet]
	casMu sync.Mutex

	leavesMu sync.Mutex
	leaves   leafIndex // guarded by leavesMu
}

// leafIndex maps subject key IDs to the domain's leaf certificates, so
// envelopes that name their signer only by key ID can be opened. Rebuilt
// from the store on a miss, at most once per leafRescan.
type leafIndex struct {
	bySKI   map[string]*x509.Certificate
	scanned time.Time
}

// leafRescan limits how often a lookup miss rescans the store, so a flood
// of envelopes naming unknown keys costs one scan per interval, not one each.
const leafRescan = time.Second

// revocationState is what a Verifier knows about revocation.
type revocationState struct {
	serials map[string]int       // serial hex -> CRL reason
	paths   map[string]time.Time // identity path -> revoked at (see revokedByPath)
}

type caSet struct {
	pool    *x509.CertPool
	serials map[string]bool
}

// maxCachedChains bounds the chain cache; past it the cache starts over.
// A fleet's worth of signers (tens of thousands) fits.
const maxCachedChains = 50_000

type cachedChains struct {
	chains              [][]*x509.Certificate
	notBefore, notAfter time.Time // intersection of the chains' validity
}

// chainBuild is a chain build under way; done is closed when it ends.
type chainBuild struct {
	done    chan struct{}
	waiters int // guarded by Verifier.mu
}

// Verifier returns a verifier for the authority's domain with the current
// revocation state.
func (a *Authority) Verifier(ctx context.Context) (*Verifier, error) {
	v := NewVerifier(a.domain, a.root, a.services, nil)
	v.records = a.records
	if _, err := v.Refresh(ctx); err != nil {
		return nil, err
	}
	return v, nil
}

// NewVerifier returns a verifier for a domain from its root and services CA
// and a fixed set of revoked serials (lowercase hex), as a field gateway
// knows them from CRLs.
func NewVerifier(domain Domain, root, services *x509.Certificate, revoked map[string]int) *Verifier {
	v := &Verifier{domain: domain, root: root, services: services, roots: x509.NewCertPool(), version: -1}
	v.roots.AddCert(root)
	v.SetRevoked(revoked)
	return v
}

// Refresh reloads the revocation state from the store and reports whether
// it changed. It first reads the store's revocation version (one row) and
// reloads only when that moved, so polling it every second costs one small
// query however many certificates the domain has.
func (v *Verifier) Refresh(ctx context.Context) (changed bool, err error) {
	if v.records == nil {
		return false, nil
	}
	v.refreshMu.Lock()
	defer v.refreshMu.Unlock()
	pr, paths := v.records.(PathRecords)
	var version int64
	if paths {
		// Read the version before the state: a revocation in between is
		// then loaded now and seen again (harmlessly) next time.
		if version, err = pr.RevocationVersion(ctx, string(v.domain)); err != nil {
			return false, fmt.Errorf("refresh %s revocations: %w", v.domain, err)
		}
		if version == v.version {
			return false, nil
		}
	}
	if err := v.loadCAs(ctx); err != nil {
		return false, err
	}
	list, err := v.records.ListCertificates(ctx, store.CertFilter{Domain: string(v.domain), RevokedOnly: true})
	if err != nil {
		return false, fmt.Errorf("refresh %s revocations: %w", v.domain, err)
	}
	next := &revocationState{serials: make(map[string]int, len(list)), paths: map[string]time.Time{}}
	for _, c := range list {
		next.serials[c.Serial] = c.Reason
	}
	if paths {
		revs, err := pr.PathRevocations(ctx, string(v.domain))
		if err != nil {
			return false, fmt.Errorf("refresh %s path revocations: %w", v.domain, err)
		}
		for _, r := range revs {
			next.paths[r.Path] = r.RevokedAt
		}
	}
	v.version = version
	old := v.state.Load()
	if maps.Equal(next.serials, old.serials) && maps.EqualFunc(next.paths, old.paths, time.Time.Equal) {
		return false, nil
	}
	v.state.Store(next)
	return true, nil
}

var caKinds = []string{KindMasterCA, KindAccountCA, KindServicesCA}

// loadCAs adds intermediate CAs created since the last call.
func (v *Verifier) loadCAs(ctx context.Context) error {
	all, err := v.records.ListCertificates(ctx, store.CertFilter{Domain: string(v.domain), Kinds: caKinds})
	if err != nil {
		return fmt.Errorf("load %s CAs: %w", v.domain, err)
	}
	_, err = v.addCAs(all)
	return err
}

// loadPathCAs adds the master-account and account CAs named by leaf's
// common name, if it is an identity path, and reports whether any was new.
func (v *Verifier) loadPathCAs(ctx context.Context, leaf *x509.Certificate) (bool, error) {
	p, err := ParsePath(leaf.Subject.CommonName)
	if err != nil {
		return false, nil
	}
	var recs []store.Certificate
	for i := 1; i <= len(p) && i <= 2; i++ {
		list, err := v.records.ListCertificates(ctx, store.CertFilter{Domain: string(v.domain), Name: p[:i].String(), Kinds: caKinds})
		if err != nil {
			return false, fmt.Errorf("load %s CAs of %s: %w", v.domain, p, err)
		}
		recs = append(recs, list...)
	}
	return v.addCAs(recs)
}

// AddCAs makes intermediate CAs of the domain known to a verifier built
// from fixed state (NewVerifier), so clients that present only their leaf
// verify. A verifier of an Authority learns its CAs from the store.
func (v *Verifier) AddCAs(certs ...*x509.Certificate) {
	v.casMu.Lock()
	defer v.casMu.Unlock()
	v.mergeCAsLocked(certs)
}

// addCAs adds the CA records not known yet to the CA set (copy on write)
// and reports whether there were any.
func (v *Verifier) addCAs(recs []store.Certificate) (bool, error) {
	v.casMu.Lock()
	defer v.casMu.Unlock()
	old := v.cas.Load()
	var added []*x509.Certificate
	for _, c := range recs {
		if c.Kind != KindMasterCA && c.Kind != KindAccountCA && c.Kind != KindServicesCA {
			continue
		}
		if old != nil && old.serials[c.Serial] {
			continue
		}
		cert, err := x509.ParseCertificate(c.DER)
		if err != nil {
			return false, fmt.Errorf("CA %s in the store: %w", c.Name, err)
		}
		added = append(added, cert)
	}
	if len(added) == 0 && old != nil {
		return false, nil
	}
	v.mergeCAsLocked(added)
	return len(added) > 0, nil
}

// mergeCAsLocked stores a new CA set with added. The caller holds casMu.
func (v *Verifier) mergeCAsLocked(added []*x509.Certificate) {
	old := v.cas.Load()
	next := &caSet{pool: x509.NewCertPool(), serials: map[string]bool{}}
	if old != nil {
		next.pool = old.pool.Clone()
		maps.Copy(next.serials, old.serials)
	}
	for _, c := range added {
		next.pool.AddCert(c)
		next.serials[SerialHex(c.SerialNumber)] = true
	}
	v.cas.Store(next)
}

// ErrUnknownKey is returned by LeafBySKI when no certificate of the domain
// has the key ID.
var ErrUnknownKey = errors.New("no certificate with that key ID")

// LeafBySKI returns the domain's leaf certificate with subject key ID ski
// (the newest one, for a key that was re-certified), and its
// intermediates, from what the store recorded.
func (v *Verifier) LeafBySKI(ctx context.Context, ski []byte) (*x509.Certificate, error) {
	v.leavesMu.Lock()
	defer v.leavesMu.Unlock()
	if c, ok := v.leaves.bySKI[string(ski)]; ok {
		return c, nil
	}
	if v.records == nil || time.Since(v.leaves.scanned) < leafRescan {
		return nil, ErrUnknownKey
	}
	all, err := v.records.ListCertificates(ctx, store.CertFilter{Domain: string(v.domain)})
	if err != nil {
		return nil, fmt.Errorf("look up signer key: %w", err)
	}
	idx := make(map[string]*x509.Certificate, len(all))
	for _, rec := range all {
		if rec.Kind != KindLeaf && rec.Kind != KindService {
			continue
		}
		c, err := x509.ParseCertificate(rec.DER)
		if err != nil {
			continue
		}
		idx[string(c.SubjectKeyId)] = c // later records (renewals) win
	}
	v.leaves = leafIndex{bySKI: idx, scanned: time.Now()}
	if c, ok := idx[string(ski)]; ok {
		return c, nil
	}
	return nil, ErrUnknownKey
}

// SetRevoked replaces the revoked serials, e.g. from freshly received
// CRLs. It forgets path revocations, which only the store knows.
func (v *Verifier) SetRevoked(revoked map[string]int) {
	r := maps.Clone(revoked)
	if r == nil {
		r = map[string]int{}
	}
	v.state.Store(&revocationState{serials: r, paths: map[string]time.Time{}})
}

// Roots returns a pool holding the domain's root, for tls.Config.ClientCAs
// and RootCAs.
func (v *Verifier) Roots() *x509.CertPool { return v.roots }

// Root returns the domain's root certificate.
func (v *Verifier) Root() *x509.Certificate { return v.root }

// CheckRevoked returns an error wrapping ErrRevoked if any certificate of
// chain is revoked. Revoking a CA thus revokes everything below it.
func (v *Verifier) CheckRevoked(chain []*x509.Certificate) error {
	revoked := v.state.Load().serials
	for _, c := range chain {
		if reason, ok := revoked[SerialHex(c.SerialNumber)]; ok {
			return fmt.Errorf("%w: %q (serial %s, reason %s)", ErrRevoked, c.Subject.CommonName, SerialHex(c.SerialNumber), ReasonName(reason))
		}
	}
	return nil
}

// checkPathRevoked returns an error wrapping ErrRevoked if leaf, the
// certificate of identity id, was issued before id's path was revoked.
func (v *Verifier) checkPathRevoked(id Identity, leaf *x509.Certificate) error {
	if id.IsService() {
		return nil
	}
	if at, ok := v.state.Load().paths[id.Path.String()]; ok && revokedByPath(leaf, at) {
		return pathRevokedError(id.Path, leaf, at)
	}
	return nil
}

// revokedByPath is the one rule of path revocation: a certificate of a path
// revoked at time at is revoked if it was issued before at. Issue keeps
// NotBefore of every certificate issued after a revocation at or after at
// (see Authority.RevokePath), so NotBefore tells the two apart.
func revokedByPath(c *x509.Certificate, at time.Time) bool { return c.NotBefore.Before(at) }

func pathRevokedError(p Path, c *x509.Certificate, at time.Time) error {
	return fmt.Errorf("%w: %q (serial %s) was issued before its path was revoked at %s", ErrRevoked, p, SerialHex(c.SerialNumber), at.UTC().Format(time.RFC3339))
}

// Identify derives the identity of an already verified chain and checks
// revocation.
func (v *Verifier) Identify(chain []*x509.Certificate) (Identity, error) {
	if len(chain) == 0 || !chain[len(chain)-1].Equal(v.root) {
		return Identity{}, fmt.Errorf("%w: chain does not end at the %s root", ErrUntrusted, v.domain)
	}
	id, err := IdentityFromChain(chain, v.services)
	if err != nil {
		return Identity{}, err
	}
	if err := CheckKey(chain[0].PublicKey, v.domain); err != nil {
		return Identity{}, fmt.Errorf("certificate %q: %w", chain[0].Subject.CommonName, err)
	}
	if err := v.CheckRevoked(chain); err != nil {
		return Identity{}, err
	}
	if err := v.checkPathRevoked(id, chain[0]); err != nil {
		return Identity{}, err
	}
	return id, nil
}

// Verify verifies leaf with the given intermediates at time at (zero: now)
// for usage (x509.ExtKeyUsageAny to skip the check), then identifies it. It
// returns the identity and the verified chain.
func (v *Verifier) Verify(leaf *x509.Certificate, intermediates []*x509.Certificate, at time.Time, usage x509.ExtKeyUsage) (Identity, []*x509.Certificate, error) {
	chains, err := v.buildChains(leaf, intermediates, at, usage)
	if err != nil {
		return Identity{}, nil, err
	}
	var firstErr error
	for _, chain := range chains {
		id, err := v.Identify(chain)
		if err == nil {
			return id, chain, nil
		}
		if firstErr == nil {
			firstErr = err
		}
	}
	return Identity{}, nil, firstErr
}

// buildChains returns the verified chains of leaf at time at, from the
// cache when an earlier call built them and at lies in their validity.
func (v *Verifier) buildChains(leaf *x509.Certificate, intermediates []*x509.Certificate, at time.Time, usage x509.ExtKeyUsage) ([][]*x509.Certificate, error) {
	if at.IsZero() {
		at = time.Now()
	}
	h := sha256.New()
	fmt.Fprintf(h, "%d|", usage)
	for _, c := range append([]*x509.Certificate{leaf}, intermediates...) {
		s := sha256.Sum256(c.Raw)
		h.Write(s[:])
	}
	var key [32]byte
	h.Sum(key[:0])
	for {
		v.mu.Lock()
		cached, ok := v.chains[key]
		if ok && !at.Before(cached.notBefore) && !at.After(cached.notAfter) {
			v.mu.Unlock()
			return cached.chains, nil
		}
		b := v.building[key]
		if b == nil {
			b = &chainBuild{done: make(chan struct{})}
			if v.building == nil {
				v.building = map[[32]byte]*chainBuild{}
			}
			v.building[key] = b
			v.mu.Unlock()
			defer func() {
				v.mu.Lock()
				delete(v.building, key)
				v.mu.Unlock()
				close(b.done)
			}()
			break
		}
		// Wait for the build under way, then look again: it cached its
		// chains, or it failed and this caller builds (and reports) itself.
		b.waiters++
		v.mu.Unlock()
		<-b.done
	}
	if v.testHookBuild != nil {
		v.testHookBuild()
	}
	seen := v.cas.Load()
	chains, err := v.verifyWithCAs(leaf, intermediates, at, usage)
	var unknown x509.UnknownAuthorityError
	if errors.As(err, &unknown) && v.records != nil {
		// A CA created since the last refresh (a new account enrolled its
		// first device, which presents its leaf alone): look up the CAs
		// the leaf's path names, a couple of indexed reads, and try again;
		// also when a concurrent caller added them meanwhile (ingest
		// opens envelopes in parallel), or only the first would verify.
		if added, lerr := v.loadPathCAs(context.Background(), leaf); lerr == nil && (added || v.cas.Load() != seen) {
			chains, err = v.verifyWithCAs(leaf, intermediates, at, usage)
		}
	}
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrUntrusted, err)
	}
	entry := cachedChains{chains: chains, notBefore: leaf.NotBefore, notAfter: leaf.NotAfter}
	for _, chain := range chains {
		for _, c := range chain {
			if c.NotBefore.After(entry.notBefore) {
				entry.notBefore = c.NotBefore
			}
			if c.NotAfter.Before(entry.notAfter) {
				entry.notAfter = c.NotAfter
			}
		}
	}
	v.mu.Lock()
	if v.chains == nil || len(v.chains) >= maxCachedChains {
		v.chains = make(map[[32]byte]cachedChains)
	}
	v.chains[key] = entry
	v.mu.Unlock()
	return chains, nil
}

func (v *Verifier) verifyWithCAs(leaf *x509.Certificate, intermediates []*x509.Certificate, at time.Time, usage x509.ExtKeyUsage) ([][]*x509.Certificate, error) {
	pool := x509.NewCertPool()
	if cas := v.cas.Load(); cas != nil {
		pool = cas.pool // read-only use; the set is copied on write
		if len(intermediates) > 0 {
			pool = cas.pool.Clone()
		}
	}
	for _, c := range intermediates {
		pool.AddCert(c)
	}
	return leaf.Verify(x509.VerifyOptions{
		Roots:         v.roots,
		Intermediates: pool,
		CurrentTime:   at,
		KeyUsages:     []x509.ExtKeyUsage{usage},
	})
}

// VerifySigner verifies an end-to-end signer certificate at the signing
// time and returns its identity as a string (see Identity.String).
func (v *Verifier) VerifySigner(leaf *x509.Certificate, intermediates []*x509.Certificate, at time.Time) (string, error) {
	id, _, err := v.Verify(leaf, intermediates, at, x509.ExtKeyUsageAny)
	if err != nil {
		return "", err
	}
	return id.String(), nil
}

// IdentifyTLS identifies the peer of a TLS connection whose client
// certificate the handshake verified against v.Roots(). It checks
// revocation, so calling it again later tells whether a live connection
// must be dropped.
func (v *Verifier) IdentifyTLS(cs tls.ConnectionState) (Identity, error) {
	if len(cs.VerifiedChains) == 0 {
		return Identity{}, fmt.Errorf("%w: no verified client certificate", ErrUntrusted)
	}
	var firstErr error
	for _, chain := range cs.VerifiedChains {
		id, err := v.Identify(chain)
		if err == nil {
			return id, nil
		}
		if firstErr == nil {
			firstErr = err
		}
	}
	return Identity{}, firstErr
}

// VerifyConnection is a tls.Config.VerifyConnection hook: it refuses
// handshakes from revoked or out-of-namespace client certificates.
func (v *Verifier) VerifyConnection(cs tls.ConnectionState) error {
	_, err := v.IdentifyTLS(cs)
	return err
}
