package tufrepo

import (
	"crypto"
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/theupdateframework/go-tuf/v2/metadata"

	"github.com/fieldtrust/fieldtrust/internal/atomicfile"
	"github.com/fieldtrust/fieldtrust/internal/pki"
)

// MaxKeys bounds the keys of one role: a quorum of people, not a key
// store.
const MaxKeys = 16

// Quorum is how many keys an offline role has and how many of them must
// sign (TUF's threshold: distinct keys, counted by the client).
type Quorum struct {
	Threshold, Keys int
}

// Quorums are the offline roles' quorums. The online roles (snapshot,
// timestamp) always have one key signed by the platform itself: a
// threshold there would only take more of the same machine's keys.
type Quorums struct {
	Root, Targets Quorum
}

// SingleKeys is one key per role, threshold 1: what 'keys init' makes
// without --threshold.
var SingleKeys = Quorums{Root: Quorum{1, 1}, Targets: Quorum{1, 1}}

// Check refuses a quorum that cannot be met or is not one.
func (q Quorum) Check(role string) error {
	switch {
	case q.Keys < 1 || q.Keys > MaxKeys:
		return fmt.Errorf("%s: %d keys; want 1 to %d", role, q.Keys, MaxKeys)
	case q.Threshold < 1 || q.Threshold > q.Keys:
		return fmt.Errorf("%s: threshold %d of %d keys; want 1 to %d", role, q.Threshold, q.Keys, q.Keys)
	}
	return nil
}

// multi reports whether the keys go into one directory per key holder.
func (qs Quorums) multi() bool { return qs.Root.Keys > 1 || qs.Targets.Keys > 1 }

// ParseRoleCounts reads "root=2,targets=3" (the CLI's --threshold and
// --keys values) strictly: only the offline roles, each at most once, a
// number from 1 to MaxKeys.
func ParseRoleCounts(s string) (map[string]int, error) {
	out := map[string]int{}
	for _, part := range strings.Split(s, ",") {
		role, num, ok := strings.Cut(strings.TrimSpace(part), "=")
		if !ok {
			return nil, fmt.Errorf("%q: want ROLE=N, e.g. root=2,targets=2", part)
		}
		if role != metadata.ROOT && role != metadata.TARGETS {
			return nil, fmt.Errorf("%q: only the offline roles root and targets have several keys", role)
		}
		if _, dup := out[role]; dup {
			return nil, fmt.Errorf("%s given twice", role)
		}
		n, err := strconv.Atoi(num)
		if err != nil || n < 1 || n > MaxKeys {
			return nil, fmt.Errorf("%s=%s: want a number from 1 to %d", role, num, MaxKeys)
		}
		out[role] = n
	}
	return out, nil
}

// ParseQuorums reads keys init's --threshold and --keys ("root=2,targets=2",
// "root=3,targets=3"; empty: SingleKeys): a role with a threshold only
// gets as many keys, a role with a number of keys only a threshold of 1.
func ParseQuorums(thresholds, counts string) (Quorums, error) {
	qs := SingleKeys
	var th, n map[string]int
	var err error
	if thresholds != "" {
		if th, err = ParseRoleCounts(thresholds); err != nil {
			return qs, fmt.Errorf("--threshold: %w", err)
		}
	}
	if counts != "" {
		if n, err = ParseRoleCounts(counts); err != nil {
			return qs, fmt.Errorf("--keys: %w", err)
		}
	}
	for role, q := range map[string]*Quorum{"root": &qs.Root, "targets": &qs.Targets} {
		if v, ok := th[role]; ok {
			q.Threshold, q.Keys = v, v
		}
		if v, ok := n[role]; ok {
			q.Keys = v
		}
		if err := q.Check(role); err != nil {
			return qs, err
		}
	}
	return qs, nil
}

// HolderDir is the directory of key holder i (1-based) in a keys
// directory with several keys per role: each is a complete --keys
// directory for its holder, meant to be moved to that person's medium.
func HolderDir(keysDir string, i int) string {
	return filepath.Join(keysDir, fmt.Sprintf("keyholder-%d", i))
}

// InitKeysWith is InitKeys with several keys for root and targets. With
// one key per role the layout is InitKeys's (KEYS/root.key,
// KEYS/targets.key); with more, holder i's keys are
// KEYS/keyholder-i/{root,targets}.key (holder i holds root key i and
// targets key i, where the role has that many). KEYS/root.json,
// N.root.json and KEYS/online/ stay at the top either way.
func InitKeysWith(keysDir string, now time.Time, exp Expiry, qs Quorums) ([]byte, error) {
	if err := qs.Root.Check(metadata.ROOT); err != nil {
		return nil, err
	}
	if err := qs.Targets.Check(metadata.TARGETS); err != nil {
		return nil, err
	}
	if _, err := os.Stat(filepath.Join(keysDir, "root.json")); err == nil {
		return nil, fmt.Errorf("%s already holds firmware keys; use another directory (or 'firmware keys rotate')", keysDir)
	}
	if _, err := os.Stat(filepath.Join(keysDir, "root.key")); err == nil {
		return nil, fmt.Errorf("%s already holds firmware keys; use another directory (or 'firmware keys rotate')", keysDir)
	}
	if err := os.MkdirAll(filepath.Join(keysDir, "online"), 0o700); err != nil {
		return nil, err
	}
	root := metadata.Root(now.Add(exp.Root).UTC())
	root.Signed.ConsistentSnapshot = true
	var rootKeys []crypto.Signer
	for _, role := range []string{metadata.ROOT, metadata.TARGETS, metadata.SNAPSHOT, metadata.TIMESTAMP} {
		q := Quorum{1, 1}
		switch role {
		case metadata.ROOT:
			q = qs.Root
		case metadata.TARGETS:
			q = qs.Targets
		}
		for i := 1; i <= q.Keys; i++ {
			file := filepath.Join(keysDir, "online", role+".key")
			var pass []byte
			if role == metadata.ROOT || role == metadata.TARGETS {
				pass, file = passphrase(), filepath.Join(keysDir, role+".key")
				if qs.multi() {
					file = filepath.Join(HolderDir(keysDir, i), role+".key")
				}
			}
			k, err := newKey(root, role, file, pass)
			if err != nil {
				return nil, err
			}
			if role == metadata.ROOT {
				rootKeys = append(rootKeys, k)
			}
		}
		root.Signed.Roles[role].Threshold = q.Threshold
	}
	if err := sign(root, rootKeys...); err != nil {
		return nil, err
	}
	b, err := root.ToBytes(true)
	if err != nil {
		return nil, err
	}
	for _, name := range []string{"1.root.json", "root.json"} {
		if err := atomicfile.Write(filepath.Join(keysDir, name), b, 0o644); err != nil {
			return nil, err
		}
	}
	return b, nil
}

// newKey makes an Ed25519 key, writes it to file and adds it to root's
// role.
func newKey(root *metadata.Metadata[metadata.RootType], role, file string, pass []byte) (crypto.Signer, error) {
	_, k, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, err
	}
	pub, err := metadata.KeyFromPublicKey(k.Public())
	if err != nil {
		return nil, err
	}
	if err := root.Signed.AddKey(pub, role); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(filepath.Dir(file), 0o700); err != nil {
		return nil, err
	}
	if err := pki.WriteKeyFile(file, k, pass); err != nil {
		return nil, err
	}
	return k, nil
}

// keyFiles are the files that may hold a role's offline key in the keys
// directories given: DIR/ROLE.key and DIR/keyholder-*/ROLE.key.
func keyFiles(keysDirs []string, role string) []string {
	var out []string
	for _, d := range keysDirs {
		out = append(out, filepath.Join(d, role+".key"))
		holders, _ := filepath.Glob(filepath.Join(d, "keyholder-*", role+".key"))
		sort.Strings(holders)
		out = append(out, holders...)
	}
	return out
}

// keyID is the TUF key id of k.
func keyID(k crypto.Signer) (string, error) {
	pub, err := metadata.KeyFromPublicKey(k.Public())
	if err != nil {
		return "", err
	}
	return pub.ID()
}

// offlineKeys are the distinct keys in keysDirs that root names for role
// (a key found twice, in two directories, counts once: TUF counts
// distinct keys, and so does the repository before any gateway would).
// Keys root does not name (retired, another repository's) are skipped.
// It fails only when a key file cannot be read.
func offlineKeys(keysDirs []string, root *metadata.Metadata[metadata.RootType], role string) ([]crypto.Signer, map[string]bool, error) {
	named := map[string]bool{}
	for _, id := range root.Signed.Roles[role].KeyIDs {
		named[id] = true
	}
	var out []crypto.Signer
	ids := map[string]bool{}
	for _, f := range keyFiles(keysDirs, role) {
		k, err := pki.ReadKeyFile(f, passphrase())
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			return nil, nil, fmt.Errorf("firmware %s key %s: %w", role, f, err)
		}
		id, err := keyID(k)
		if err != nil {
			return nil, nil, err
		}
		if !named[id] || ids[id] {
			continue
		}
		ids[id] = true
		out = append(out, k)
	}
	return out, ids, nil
}

// quorumKeys are offlineKeys, refused when fewer than role's threshold.
func quorumKeys(keysDirs []string, root *metadata.Metadata[metadata.RootType], role string) ([]crypto.Signer, error) {
	ks, _, err := offlineKeys(keysDirs, root, role)
	if err != nil {
		return nil, err
	}
	if th := root.Signed.Roles[role].Threshold; len(ks) < th {
		return nil, thresholdError(keysDirs, root, role, len(ks))
	}
	return ks, nil
}

func thresholdError(keysDirs []string, root *metadata.Metadata[metadata.RootType], role string, have int) error {
	r := root.Signed.Roles[role]
	if have == 0 {
		return fmt.Errorf("the %s key is not the one the firmware root (version %d) names: wrong keys directory? (%s needs %d of its %d keys; found none in %s)",
			role, root.Signed.Version, role, r.Threshold, len(r.KeyIDs), strings.Join(keysDirs, ", "))
	}
	return fmt.Errorf("%s needs %d of its %d keys and %s holds %d of them: add the other key holders' directories (--keys DIR, once each)",
		role, r.Threshold, len(r.KeyIDs), strings.Join(keysDirs, ", "), have)
}

// signedBy counts the distinct keys named for role whose signature on m
// verifies, as the gateway's TUF client does.
func signedBy[T metadata.Roles](root *metadata.Metadata[metadata.RootType], role string, m *metadata.Metadata[T]) int {
	n := 0
	for _, id := range root.Signed.Roles[role].KeyIDs {
		one := *m
		one.Signatures = nil
		for _, s := range m.Signatures {
			if s.KeyID == id {
				one.Signatures = []metadata.Signature{s}
				break
			}
		}
		if len(one.Signatures) == 0 {
			continue
		}
		probe := *root
		probe.Signed.Roles = map[string]*metadata.Role{role: {KeyIDs: []string{id}, Threshold: 1}}
		if probe.VerifyDelegate(role, &one) == nil {
			n++
		}
	}
	return n
}

// pendingFile is the targets metadata that waits for more signatures.
func (r *Repo) pendingFile() string { return filepath.Join(r.dir, "pending", "targets.json") }

// stage keeps m, signed by fewer keys than the threshold, until Sign
// completes it. Gateways never see it: it is not under metadata/.
func (r *Repo) stage(m *metadata.Metadata[metadata.TargetsType]) error {
	b, err := m.ToBytes(true)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(r.pendingFile()), 0o700); err != nil {
		return err
	}
	return atomicfile.Write(r.pendingFile(), b, 0o644)
}

// noPending refuses to start another change while targets metadata
// waits for signatures: the two would claim the same version.
func (r *Repo) noPending() error {
	m, err := metadata.Targets().FromFile(r.pendingFile())
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("pending targets metadata %s: %w", r.pendingFile(), err)
	}
	return fmt.Errorf("targets version %d waits for signatures: complete it with 'fieldtrust firmware sign --keys DIR' or drop it with 'fieldtrust firmware sign --discard'", m.Signed.Version)
}

// Signing is the state of targets metadata waiting for signatures.
type Signing struct {
	Version    int64    // the targets version
	Targets    []string // its target names
	Have, Need int      // distinct valid signatures, the threshold
	Published  bool     // Sign published it (Have ≥ Need)
}

// Pending reports the targets metadata waiting for signatures, if any.
func (r *Repo) Pending() (*Signing, error) {
	m, err := metadata.Targets().FromFile(r.pendingFile())
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("pending targets metadata: %w", err)
	}
	st, err := r.load()
	if errors.Is(err, ErrNotInitialized) {
		st, err = r.fresh()
	}
	if err != nil {
		return nil, err
	}
	return signing(st.root, m), nil
}

func signing(root *metadata.Metadata[metadata.RootType], m *metadata.Metadata[metadata.TargetsType]) *Signing {
	s := &Signing{Version: m.Signed.Version, Have: signedBy(root, metadata.TARGETS, m), Need: root.Signed.Roles[metadata.TARGETS].Threshold}
	for name := range m.Signed.Targets {
		s.Targets = append(s.Targets, name)
	}
	sort.Strings(s.Targets)
	return s
}

// Sign adds the signatures of the targets keys in keysDirs to the
// pending targets metadata (an offline holder brings its directory) and
// publishes it, with a new snapshot and timestamp, once the distinct
// valid signatures reach the threshold. Signatures that do not verify
// with a key root names for targets are dropped first, and a key that
// signed already adds nothing. Staged metadata without any valid
// signature left is refused: a holder signs only what another holder
// signed before (whoever controls the platform's directory can replace
// the staged file, not sign it).
func (r *Repo) Sign(keysDirs []string) (*Signing, error) {
	unlock, err := r.lock()
	if err != nil {
		return nil, err
	}
	defer unlock()
	m, err := metadata.Targets().FromFile(r.pendingFile())
	if errors.Is(err, os.ErrNotExist) {
		return nil, errors.New("no targets metadata waits for signatures")
	}
	if err != nil {
		return nil, fmt.Errorf("pending targets metadata: %w", err)
	}
	st, err := r.load()
	if errors.Is(err, ErrNotInitialized) {
		st, err = r.fresh()
	}
	if err != nil {
		return nil, err
	}
	if m.Signed.Version != st.targets.Signed.Version+1 {
		return nil, fmt.Errorf("pending targets version %d does not follow the published version %d: drop it with 'fieldtrust firmware sign --discard' and add again", m.Signed.Version, st.targets.Signed.Version)
	}
	valid := m.Signatures[:0:0]
	for _, s := range m.Signatures {
		one := *m
		one.Signatures = []metadata.Signature{s}
		if signedBy(st.root, metadata.TARGETS, &one) == 1 && !hasSignature(valid, s.KeyID) {
			valid = append(valid, s)
		}
	}
	m.Signatures = valid
	if len(valid) == 0 {
		// Only a key holder's signature shows what a holder approved:
		// whoever can write the platform's directory could have put
		// anything here, and must not get it signed.
		return nil, errors.New("the staged targets metadata carries no valid signature of a targets key (altered, or staged without one): nothing signed; drop it with 'fieldtrust firmware sign --discard' and add again")
	}
	tks, _, err := offlineKeys(keysDirs, st.root, metadata.TARGETS)
	if err != nil {
		return nil, err
	}
	if len(tks) == 0 {
		return nil, thresholdError(keysDirs, st.root, metadata.TARGETS, 0)
	}
	for _, k := range tks {
		id, err := keyID(k)
		if err != nil {
			return nil, err
		}
		if hasSignature(m.Signatures, id) {
			continue
		}
		if err := appendSignature(m, k); err != nil {
			return nil, err
		}
	}
	s := signing(st.root, m)
	if s.Have < s.Need {
		return s, r.stage(m)
	}
	st.targets = m
	if err := r.commitTargets(st); err != nil {
		return nil, err
	}
	s.Published = true
	return s, os.Remove(r.pendingFile())
}

// Discard drops the pending targets metadata (its artifacts stay in the
// content-addressed store, unreferenced).
func (r *Repo) Discard() error {
	unlock, err := r.lock()
	if err != nil {
		return err
	}
	defer unlock()
	if err := os.Remove(r.pendingFile()); errors.Is(err, os.ErrNotExist) {
		return errors.New("no targets metadata waits for signatures")
	} else if err != nil {
		return err
	}
	return nil
}

func hasSignature(sigs []metadata.Signature, id string) bool {
	for _, s := range sigs {
		if s.KeyID == id {
			return true
		}
	}
	return false
}
