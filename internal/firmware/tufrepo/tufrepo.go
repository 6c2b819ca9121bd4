// Package tufrepo is the platform's firmware repository in The Update
// Framework's format (TUF 1.0, through go-tuf v2's metadata package: no
// metadata or signature scheme of our own). It keeps
//
//	KEYS/ (offline, may leave the platform)   root.key, targets.key, N.root.json, root.json (the latest root: what gateways pin)
//	KEYS/online/ (until imported)              snapshot.key, timestamp.key
//	DIR/firmware/keys/                         snapshot.key, timestamp.key (online)
//	DIR/firmware/metadata/                     N.root.json, N.targets.json, N.snapshot.json, timestamp.json
//	DIR/firmware/targets/                      artifacts, content-addressed: the SHA-256 in hex
//
// Consistent snapshots: every version of root, targets and snapshot
// metadata stays under its version-prefixed name, and timestamp.json,
// written last and atomically, points at a complete set. The platform
// holds only the online snapshot and timestamp keys: whoever steals it
// (or its database, or the broker's TLS key) can re-sign freshness but
// never a target, since that takes the offline targets key.
package tufrepo

import (
	"crypto"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/sigstore/sigstore/pkg/signature"
	"github.com/theupdateframework/go-tuf/v2/metadata"

	"github.com/fieldtrust/fieldtrust/internal/atomicfile"
	"github.com/fieldtrust/fieldtrust/internal/firmware"
	"github.com/fieldtrust/fieldtrust/internal/pki"
)

// PassphraseEnv names the environment variable that, when set, encrypts
// the offline keys (and is needed to use them).
const PassphraseEnv = "FIELDTRUST_FIRMWARE_PASSPHRASE"

// Expiry is how long each role's metadata is valid when signed.
type Expiry struct {
	Root, Targets, Snapshot, Timestamp time.Duration
}

// DefaultExpiry: the offline roles a year, snapshot a week, timestamp a
// day (the online keys re-sign them well before: see Refresh). A gateway
// cut off from the platform for longer than a day installs nothing, which
// is the freeze protection working.
var DefaultExpiry = Expiry{Root: 365 * 24 * time.Hour, Targets: 365 * 24 * time.Hour, Snapshot: 7 * 24 * time.Hour, Timestamp: 24 * time.Hour}

// Repo is the repository in a platform data directory.
type Repo struct {
	dir    string
	Now    func() time.Time
	Expiry Expiry
}

// Open returns the repository under dataDir/firmware (it may not exist
// yet: Add creates it from the offline keys).
func Open(dataDir string) *Repo {
	return &Repo{dir: filepath.Join(dataDir, "firmware"), Now: time.Now, Expiry: DefaultExpiry}
}

// Dir is the repository's directory.
func (r *Repo) Dir() string { return r.dir }

func (r *Repo) metaDir() string    { return filepath.Join(r.dir, "metadata") }
func (r *Repo) keyDir() string     { return filepath.Join(r.dir, "keys") }
func (r *Repo) targetsDir() string { return filepath.Join(r.dir, "targets") }

// ErrNotInitialized is returned before the first Add.
var ErrNotInitialized = errors.New("no firmware repository yet: run 'fieldtrust firmware add --keys KEYS ...' once")

// Initialized reports whether the repository has metadata.
func (r *Repo) Initialized() bool {
	_, err := os.Stat(filepath.Join(r.metaDir(), "timestamp.json"))
	return err == nil
}

func passphrase() []byte { return []byte(os.Getenv(PassphraseEnv)) }

// InitKeys creates the four role keys (Ed25519), one per role, and
// version 1 of the root metadata in keysDir, which must not hold keys
// yet, and returns the root metadata (also written to keysDir/root.json:
// the file gateways pin).
func InitKeys(keysDir string, now time.Time, exp Expiry) ([]byte, error) {
	return InitKeysWith(keysDir, now, exp, SingleKeys)
}

func sign[T metadata.Roles](m *metadata.Metadata[T], keys ...crypto.Signer) error {
	m.ClearSignatures()
	for _, k := range keys {
		if err := appendSignature(m, k); err != nil {
			return err
		}
	}
	return nil
}

// appendSignature adds k's signature to those m has.
func appendSignature[T metadata.Roles](m *metadata.Metadata[T], k crypto.Signer) error {
	s, err := signature.LoadSigner(k, crypto.Hash(0))
	if err != nil {
		return err
	}
	_, err = m.Sign(s)
	return err
}

// lock takes the repository's exclusive lock (the CLI and the running
// platform's refresher both write metadata).
func (r *Repo) lock() (func(), error) {
	if err := os.MkdirAll(r.dir, 0o700); err != nil {
		return nil, err
	}
	f, err := os.OpenFile(filepath.Join(r.dir, ".lock"), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, err
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
		f.Close()
		return nil, fmt.Errorf("lock %s: %w", r.dir, err)
	}
	return func() { syscall.Flock(int(f.Fd()), syscall.LOCK_UN); f.Close() }, nil
}

// state is the repository's current metadata.
type state struct {
	root      *metadata.Metadata[metadata.RootType]
	targets   *metadata.Metadata[metadata.TargetsType]
	snapshot  *metadata.Metadata[metadata.SnapshotType]
	timestamp *metadata.Metadata[metadata.TimestampType]
}

func (r *Repo) load() (*state, error) {
	if !r.Initialized() {
		return nil, ErrNotInitialized
	}
	st := &state{}
	var err error
	if st.root, err = latestRoot(r.metaDir()); err != nil {
		return nil, err
	}
	if st.timestamp, err = metadata.Timestamp().FromFile(filepath.Join(r.metaDir(), "timestamp.json")); err != nil {
		return nil, fmt.Errorf("firmware repository: %w", err)
	}
	sv := st.timestamp.Signed.Meta["snapshot.json"].Version
	if st.snapshot, err = metadata.Snapshot().FromFile(filepath.Join(r.metaDir(), fmt.Sprintf("%d.snapshot.json", sv))); err != nil {
		return nil, fmt.Errorf("firmware repository: %w", err)
	}
	tv := st.snapshot.Signed.Meta["targets.json"].Version
	if st.targets, err = metadata.Targets().FromFile(filepath.Join(r.metaDir(), fmt.Sprintf("%d.targets.json", tv))); err != nil {
		return nil, fmt.Errorf("firmware repository: %w", err)
	}
	return st, nil
}

// latestRoot reads the highest N.root.json in dir.
func latestRoot(dir string) (*metadata.Metadata[metadata.RootType], error) {
	n, err := highestRoot(dir)
	if err != nil {
		return nil, err
	}
	m, err := metadata.Root().FromFile(filepath.Join(dir, fmt.Sprintf("%d.root.json", n)))
	if err != nil {
		return nil, fmt.Errorf("root metadata in %s: %w", dir, err)
	}
	return m, nil
}

func highestRoot(dir string) (int64, error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return 0, err
	}
	var best int64
	for _, e := range ents {
		if v, ok := strings.CutSuffix(e.Name(), ".root.json"); ok {
			if n, err := strconv.ParseInt(v, 10, 64); err == nil && n > best {
				best = n
			}
		}
	}
	if best == 0 {
		return 0, fmt.Errorf("no N.root.json in %s", dir)
	}
	return best, nil
}

// importKeys makes the repository from the offline directory the first
// time: the root versions and the online keys (which the operator may
// then delete from KEYS/online). Later it adds root versions the
// repository does not have yet and checks that the online keys are the
// ones root names.
func (r *Repo) importKeys(keysDirs []string) error {
	if len(keysDirs) == 0 {
		return errors.New("no firmware keys directory given")
	}
	for _, d := range []string{r.metaDir(), r.keyDir(), r.targetsDir()} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return err
		}
	}
	for _, keysDir := range keysDirs {
		ents, err := os.ReadDir(keysDir)
		if err != nil {
			return fmt.Errorf("firmware keys %s: %w", keysDir, err)
		}
		for _, e := range ents {
			if !rootFile.MatchString(e.Name()) {
				continue
			}
			dst := filepath.Join(r.metaDir(), e.Name())
			if _, err := os.Stat(dst); err == nil {
				continue
			}
			b, err := os.ReadFile(filepath.Join(keysDir, e.Name()))
			if err != nil {
				return err
			}
			if err := atomicfile.Write(dst, b, 0o644); err != nil {
				return err
			}
		}
	}
	for _, role := range []string{metadata.SNAPSHOT, metadata.TIMESTAMP} {
		dst := filepath.Join(r.keyDir(), role+".key")
		if _, err := os.Stat(dst); err == nil {
			continue
		}
		var b []byte
		err := os.ErrNotExist
		for _, keysDir := range keysDirs {
			if b, err = os.ReadFile(filepath.Join(keysDir, "online", role+".key")); err == nil {
				break
			}
		}
		if err != nil {
			return fmt.Errorf("the platform has no online %s key and %s has none to import (give the directory of 'firmware keys init'): %w", role, strings.Join(keysDirs, ", "), err)
		}
		if err := atomicfile.Write(dst, b, 0o600); err != nil {
			return err
		}
	}
	return nil
}

var rootFile = regexp.MustCompile(`^[1-9][0-9]{0,9}\.root\.json$`)

func (r *Repo) onlineKey(role string) (crypto.Signer, error) {
	return pki.ReadKeyFile(filepath.Join(r.keyDir(), role+".key"), nil)
}

// checkKey makes sure root lists k for role: a key that does not match is
// an operator mistake (the wrong KEYS directory) better caught here than
// by every gateway.
func checkKey(root *metadata.Metadata[metadata.RootType], role string, k crypto.Signer) error {
	pub, err := metadata.KeyFromPublicKey(k.Public())
	if err != nil {
		return err
	}
	id, err := pub.ID()
	if err != nil {
		return err
	}
	for _, kid := range root.Signed.Roles[role].KeyIDs {
		if kid == id {
			return nil
		}
	}
	return fmt.Errorf("the %s key is not the one the firmware root (version %d) names: wrong keys directory?", role, root.Signed.Version)
}

// Artifact is a firmware file to add.
type Artifact struct {
	File       string
	DeviceType string
	Version    string
	MinVersion string
}

// Target is a firmware target as the repository lists it.
type Target struct {
	Name   string
	Length int64
	SHA256 string
	firmware.Custom
	// Awaiting is, after Add, how many more targets signatures the new
	// targets metadata needs before it is published (0: published).
	Awaiting int
}

// Add stores the artifact (content-addressed) and publishes new targets,
// snapshot and timestamp metadata, signing targets with the offline key
// from keysDir. A device type's version is immutable: adding it again
// with other content is refused, with the same content it is a no-op.
func (r *Repo) Add(keysDir string, a Artifact) (Target, error) {
	return r.AddSigned([]string{keysDir}, a)
}

// AddSigned is Add with the targets keys of every directory in keysDirs
// (several holders of a multi-key targets role). With fewer distinct
// targets keys than the threshold, the new targets metadata waits in
// DIR/firmware/pending/ with the signatures it has (Target.Awaiting says
// how many are missing) until Sign adds the rest; nothing is published
// before.
func (r *Repo) AddSigned(keysDirs []string, a Artifact) (Target, error) {
	if err := firmware.CheckDeviceType(a.DeviceType); err != nil {
		return Target{}, err
	}
	if err := firmware.CheckVersion(a.Version); err != nil {
		return Target{}, err
	}
	if a.MinVersion != "" {
		if err := firmware.CheckVersion(a.MinVersion); err != nil {
			return Target{}, fmt.Errorf("--min-version: %w", err)
		}
	}
	unlock, err := r.lock()
	if err != nil {
		return Target{}, err
	}
	defer unlock()
	if err := r.importKeys(keysDirs); err != nil {
		return Target{}, err
	}
	st, err := r.load()
	if errors.Is(err, ErrNotInitialized) {
		st, err = r.fresh()
	}
	if err != nil {
		return Target{}, err
	}
	if err := r.noPending(); err != nil {
		return Target{}, err
	}
	tks, _, err := offlineKeys(keysDirs, st.root, metadata.TARGETS)
	if err != nil {
		return Target{}, err
	}
	if len(tks) == 0 {
		return Target{}, thresholdError(keysDirs, st.root, metadata.TARGETS, 0)
	}
	sha, length, err := r.store(a.File)
	if err != nil {
		return Target{}, err
	}
	name := firmware.TargetName(a.DeviceType, a.Version)
	if old, ok := st.targets.Signed.Targets[name]; ok {
		if hex.EncodeToString(old.Hashes["sha256"]) == sha {
			return toTarget(name, old)
		}
		return Target{}, fmt.Errorf("%s %s is already in the repository with other content; versions are immutable: add it as a new version", a.DeviceType, a.Version)
	}
	f, err := os.Open(filepath.Join(r.targetsDir(), sha))
	if err != nil {
		return Target{}, err
	}
	h256, h512 := sha256.New(), sha512.New()
	if _, err := io.Copy(io.MultiWriter(h256, h512), f); err != nil {
		f.Close()
		return Target{}, err
	}
	f.Close()
	custom, err := json.Marshal(firmware.Custom{DeviceType: a.DeviceType, Version: a.Version, MinVersion: a.MinVersion})
	if err != nil {
		return Target{}, err
	}
	raw := json.RawMessage(custom)
	tf := metadata.TargetFile()
	tf.Length = length
	tf.Hashes = metadata.Hashes{"sha256": h256.Sum(nil), "sha512": h512.Sum(nil)}
	tf.Custom = &raw
	st.targets.Signed.Targets[name] = tf
	t, err := toTarget(name, tf)
	if err != nil {
		return t, err
	}
	t.Awaiting, err = r.publishTargets(st, tks...)
	return t, err
}

func toTarget(name string, tf *metadata.TargetFiles) (Target, error) {
	t := Target{Name: name, Length: tf.Length, SHA256: hex.EncodeToString(tf.Hashes["sha256"])}
	if tf.Custom == nil {
		return t, fmt.Errorf("target %s has no custom metadata", name)
	}
	if err := json.Unmarshal(*tf.Custom, &t.Custom); err != nil {
		return t, fmt.Errorf("target %s: custom metadata: %w", name, err)
	}
	return t, nil
}

// fresh is the state of a repository with root only: empty targets,
// snapshot and timestamp at version 0 (publishTargets makes them 1).
func (r *Repo) fresh() (*state, error) {
	root, err := latestRoot(r.metaDir())
	if err != nil {
		return nil, err
	}
	now := r.Now()
	st := &state{root: root, targets: metadata.Targets(now), snapshot: metadata.Snapshot(now), timestamp: metadata.Timestamp(now)}
	st.targets.Signed.Version, st.snapshot.Signed.Version, st.timestamp.Signed.Version = 0, 0, 0
	return st, nil
}

// store copies file into the content-addressed store.
func (r *Repo) store(file string) (sha string, length int64, err error) {
	in, err := os.Open(file)
	if err != nil {
		return "", 0, err
	}
	defer in.Close()
	tmp, err := os.CreateTemp(r.targetsDir(), ".add*")
	if err != nil {
		return "", 0, err
	}
	defer os.Remove(tmp.Name())
	h := sha256.New()
	length, err = io.Copy(io.MultiWriter(tmp, h), in)
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return "", 0, fmt.Errorf("store %s: %w", file, err)
	}
	if length == 0 {
		return "", 0, fmt.Errorf("%s is empty", file)
	}
	sha = hex.EncodeToString(h.Sum(nil))
	if err := os.Rename(tmp.Name(), filepath.Join(r.targetsDir(), sha)); err != nil {
		return "", 0, err
	}
	return sha, length, atomicfile.SyncDir(r.targetsDir())
}

// publishTargets signs st.targets as the next version with tks, then a
// new snapshot and timestamp with the online keys. With fewer keys than
// the targets threshold it stages the signed metadata instead (see Sign)
// and returns how many signatures are missing.
func (r *Repo) publishTargets(st *state, tks ...crypto.Signer) (awaiting int, err error) {
	now := r.Now()
	st.targets.Signed.Version++
	st.targets.Signed.Expires = now.Add(r.Expiry.Targets).UTC()
	if err := sign(st.targets, tks...); err != nil {
		return 0, err
	}
	if th := st.root.Signed.Roles[metadata.TARGETS].Threshold; len(tks) < th {
		return th - len(tks), r.stage(st.targets)
	}
	return 0, r.commitTargets(st)
}

// commitTargets writes st.targets, fully signed, then snapshot and
// timestamp.
func (r *Repo) commitTargets(st *state) error {
	if err := st.root.VerifyDelegate(metadata.TARGETS, st.targets); err != nil {
		return fmt.Errorf("targets version %d: %w", st.targets.Signed.Version, err)
	}
	if err := r.write(fmt.Sprintf("%d.targets.json", st.targets.Signed.Version), st.targets); err != nil {
		return err
	}
	return r.publishSnapshot(st)
}

func (r *Repo) publishSnapshot(st *state) error {
	sk, err := r.onlineKey(metadata.SNAPSHOT)
	if err != nil {
		return err
	}
	if err := checkKey(st.root, metadata.SNAPSHOT, sk); err != nil {
		return err
	}
	now := r.Now()
	st.snapshot.Signed.Version++
	st.snapshot.Signed.Expires = now.Add(r.Expiry.Snapshot).UTC()
	st.snapshot.Signed.Meta = map[string]*metadata.MetaFiles{"targets.json": metadata.MetaFile(st.targets.Signed.Version)}
	if err := sign(st.snapshot, sk); err != nil {
		return err
	}
	if err := r.write(fmt.Sprintf("%d.snapshot.json", st.snapshot.Signed.Version), st.snapshot); err != nil {
		return err
	}
	return r.publishTimestamp(st)
}

func (r *Repo) publishTimestamp(st *state) error {
	tk, err := r.onlineKey(metadata.TIMESTAMP)
	if err != nil {
		return err
	}
	if err := checkKey(st.root, metadata.TIMESTAMP, tk); err != nil {
		return err
	}
	now := r.Now()
	st.timestamp.Signed.Version++
	st.timestamp.Signed.Expires = now.Add(r.Expiry.Timestamp).UTC()
	st.timestamp.Signed.Meta = map[string]*metadata.MetaFiles{"snapshot.json": metadata.MetaFile(st.snapshot.Signed.Version)}
	if err := sign(st.timestamp, tk); err != nil {
		return err
	}
	return r.write("timestamp.json", st.timestamp)
}

type toBytes interface{ ToBytes(bool) ([]byte, error) }

func (r *Repo) write(name string, m toBytes) error {
	b, err := m.ToBytes(false)
	if err != nil {
		return err
	}
	return atomicfile.Write(filepath.Join(r.metaDir(), name), b, 0o644)
}

// Refresh re-signs what the online keys sign before it expires: a new
// timestamp once half of its validity has passed, a new snapshot (and
// timestamp) once half of the snapshot's has. It reports whether it
// signed anything. Run by the platform's firmware service.
func (r *Repo) Refresh() (bool, error) {
	if !r.Initialized() {
		return false, nil
	}
	unlock, err := r.lock()
	if err != nil {
		return false, err
	}
	defer unlock()
	st, err := r.load()
	if err != nil {
		return false, err
	}
	now := r.Now()
	switch {
	case now.After(st.snapshot.Signed.Expires.Add(-r.Expiry.Snapshot / 2)):
		return true, r.publishSnapshot(st)
	case now.After(st.timestamp.Signed.Expires.Add(-r.Expiry.Timestamp / 2)):
		return true, r.publishTimestamp(st)
	}
	return false, nil
}

// RotateKey replaces one role's key through a new root version that names
// the new key instead of the old one, signed by the root key in force —
// and, when the root key itself rotates, by the new root key too (TUF
// clients check a new root against the root they trust and against
// itself). Gateways follow by themselves: their TUF client walks the root
// versions from the one they pinned, so none is touched. The root and
// targets keys are the offline ones in keysDir (the retired key stays
// there as ROLE.key.retired-N); the snapshot and timestamp keys are the
// platform's online keys (rotating them is the answer to a stolen
// platform). What the new key signs is re-signed at once.
func (r *Repo) RotateKey(keysDir, role string) (rootVersion int64, err error) {
	return r.Rotate([]string{keysDir}, role, Quorum{})
}

// Rotate is RotateKey for roles with several keys, and for changing a
// role's quorum: q (zero: the role's current threshold and number of
// keys) is the new threshold and number of keys of an offline role (the
// online roles keep one key). The new root version is signed by the
// threshold of root keys in force, found in keysDirs (every holder's
// directory, or the one of 'keys init'), and — when root rotates — by
// every new root key. New offline keys are written to the first of
// keysDirs: ROLE.key for one key, keyholder-i/ROLE.key for several (a
// key they replace there is kept as ROLE.key.retired-N); hand each
// keyholder directory to its holder.
func (r *Repo) Rotate(keysDirs []string, role string, q Quorum) (rootVersion int64, err error) {
	offline := role == metadata.ROOT || role == metadata.TARGETS
	if !offline && role != metadata.SNAPSHOT && role != metadata.TIMESTAMP {
		return 0, fmt.Errorf("role %q: want root, targets, snapshot or timestamp", role)
	}
	if !offline && q != (Quorum{}) && q != (Quorum{1, 1}) {
		return 0, fmt.Errorf("%s is an online role with one key signed by the platform: no threshold to set", role)
	}
	unlock, err := r.lock()
	if err != nil {
		return 0, err
	}
	defer unlock()
	if err := r.importKeys(keysDirs); err != nil {
		return 0, err
	}
	if err := r.noPending(); err != nil {
		return 0, err
	}
	st, err := r.load()
	if errors.Is(err, ErrNotInitialized) {
		st, err = r.fresh()
	}
	if err != nil {
		return 0, err
	}
	rks, err := quorumKeys(keysDirs, st.root, metadata.ROOT)
	if err != nil {
		return 0, err
	}
	cur := st.root.Signed.Roles[role]
	if q == (Quorum{}) {
		q = Quorum{Threshold: cur.Threshold, Keys: len(cur.KeyIDs)}
	}
	if err := q.Check(role); err != nil {
		return 0, err
	}
	next := st.root.Signed.Version + 1
	// Where the new keys go: the online key's place, or the offline
	// layout of the first keys directory.
	var files []string
	var pass []byte
	switch {
	case !offline:
		files = []string{filepath.Join(r.keyDir(), role+".key")}
	case q.Keys == 1:
		files, pass = []string{filepath.Join(keysDirs[0], role+".key")}, passphrase()
	default:
		pass = passphrase()
		for i := 1; i <= q.Keys; i++ {
			files = append(files, filepath.Join(HolderDir(keysDirs[0], i), role+".key"))
		}
	}
	for _, kid := range append([]string(nil), cur.KeyIDs...) {
		if err := st.root.Signed.RevokeKey(kid, role); err != nil {
			return 0, err
		}
	}
	// The new keys first (a crash after them leaves the old ones in
	// force, retired beside them), then the root that names them, then
	// what they sign.
	retire := files
	if offline {
		// Every key of the role in the first directory retires, also
		// where the layout changes (one key to holders, or back).
		retire = keyFiles(keysDirs[:1], role)
	}
	for _, f := range retire {
		if err := os.Rename(f, fmt.Sprintf("%s.retired-%d", f, next)); err != nil && !errors.Is(err, os.ErrNotExist) {
			return 0, err
		}
	}
	var nks []crypto.Signer
	for _, f := range files {
		k, err := newKey(st.root, role, f, pass)
		if err != nil {
			return 0, err
		}
		nks = append(nks, k)
	}
	st.root.Signed.Roles[role].Threshold = q.Threshold
	st.root.Signed.Version = next
	st.root.Signed.Expires = r.Now().Add(r.Expiry.Root).UTC()
	signers := rks
	if role == metadata.ROOT {
		signers = append(signers, nks...)
	}
	if err := sign(st.root, signers...); err != nil {
		return 0, err
	}
	b, err := st.root.ToBytes(true)
	if err != nil {
		return 0, err
	}
	name := fmt.Sprintf("%d.root.json", next)
	if !offline {
		// A copy the operator left in KEYS/online is stale now: it must
		// not be imported into a new repository.
		for _, d := range keysDirs {
			stale := filepath.Join(d, "online", role+".key")
			if err := os.Rename(stale, stale+fmt.Sprintf(".retired-%d", next)); err != nil && !errors.Is(err, os.ErrNotExist) {
				return 0, err
			}
		}
	}
	for _, f := range []string{filepath.Join(keysDirs[0], name), filepath.Join(keysDirs[0], "root.json"), filepath.Join(r.metaDir(), name)} {
		if err := atomicfile.Write(f, b, 0o644); err != nil {
			return 0, err
		}
	}
	if st.targets.Signed.Version > 0 {
		switch role {
		case metadata.TARGETS:
			_, err = r.publishTargets(st, nks...)
		case metadata.SNAPSHOT:
			err = r.publishSnapshot(st)
		case metadata.TIMESTAMP:
			err = r.publishTimestamp(st)
		}
		if err != nil {
			return 0, err
		}
	}
	return next, nil
}

var metaName = regexp.MustCompile(`^(?:[1-9][0-9]{0,9}\.(?:root|targets|snapshot)|timestamp)\.json$`)

// ErrNotFound is returned for metadata or artifacts the repository does
// not have.
var ErrNotFound = errors.New("not in the firmware repository")

// Metadata returns a metadata file by its TUF name (N.root.json,
// timestamp.json, N.snapshot.json, N.targets.json).
func (r *Repo) Metadata(name string) ([]byte, error) {
	if !metaName.MatchString(name) {
		return nil, fmt.Errorf("%w: %q is not a TUF metadata name", ErrNotFound, name)
	}
	b, err := os.ReadFile(filepath.Join(r.metaDir(), name))
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("%w: %s", ErrNotFound, name)
	}
	return b, err
}

var shaHex = regexp.MustCompile(`^[0-9a-f]{64}$`)

// ArtifactFile returns the file of the artifact with SHA-256 sha (hex).
func (r *Repo) ArtifactFile(sha string) (string, error) {
	if !shaHex.MatchString(sha) {
		return "", fmt.Errorf("%w: %q is not a SHA-256", ErrNotFound, sha)
	}
	f := filepath.Join(r.targetsDir(), sha)
	if _, err := os.Stat(f); err != nil {
		return "", fmt.Errorf("%w: artifact %s", ErrNotFound, sha)
	}
	return f, nil
}

// Targets lists the current targets, by name.
func (r *Repo) Targets() ([]Target, error) {
	st, err := r.load()
	if err != nil {
		return nil, err
	}
	var out []Target
	for name, tf := range st.targets.Signed.Targets {
		t, err := toTarget(name, tf)
		if err != nil {
			return nil, err
		}
		out = append(out, t)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

// Find returns the target of a device type's version.
func (r *Repo) Find(deviceType, version string) (Target, error) {
	ts, err := r.Targets()
	if err != nil {
		return Target{}, err
	}
	for _, t := range ts {
		if t.Name == firmware.TargetName(deviceType, version) {
			return t, nil
		}
	}
	return Target{}, fmt.Errorf("%w: no firmware %s for device type %s; add it with 'fieldtrust firmware add'", ErrNotFound, version, deviceType)
}

// MetadataBytes is the size of the metadata a gateway fetches for one
// update from a given trusted state: timestamp, snapshot and targets
// (plus any root versions newer than the one it trusts).
func (r *Repo) MetadataBytes(trustedRoot int64) (int64, error) {
	st, err := r.load()
	if err != nil {
		return 0, err
	}
	var n int64
	names := []string{"timestamp.json", fmt.Sprintf("%d.snapshot.json", st.snapshot.Signed.Version), fmt.Sprintf("%d.targets.json", st.targets.Signed.Version)}
	for v := trustedRoot + 1; v <= st.root.Signed.Version; v++ {
		names = append(names, fmt.Sprintf("%d.root.json", v))
	}
	for _, name := range names {
		fi, err := os.Stat(filepath.Join(r.metaDir(), name))
		if err != nil {
			return 0, err
		}
		n += fi.Size()
	}
	return n, nil
}
