// Package tufclient is the gateway's side of the firmware trust: the
// go-tuf v2 updater (the TUF client workflow: root rotation, threshold
// signatures, expiry, rollback, freeze and mix-and-match protection),
// starting from the root pinned at installation and fetching metadata
// over the gateway's mutually authenticated HTTPS connection.
package tufclient

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"time"

	"github.com/theupdateframework/go-tuf/v2/metadata"
	"github.com/theupdateframework/go-tuf/v2/metadata/config"
	"github.com/theupdateframework/go-tuf/v2/metadata/updater"

	"github.com/fieldtrust/fieldtrust/internal/firmware"
)

// MetadataPath is where the platform serves TUF metadata.
const MetadataPath = "/firmware/v1/metadata/"

// Client looks firmware targets up.
type Client struct {
	// Platform is https://host:port.
	Platform string
	// HTTP is the gateway's client (its transport certificate).
	HTTP *http.Client
	// Dir keeps the trusted metadata between runs (rollback protection
	// across restarts).
	Dir string
	// PinnedRoot is the root metadata installed with the gateway.
	PinnedRoot []byte
	// Now, if set, is the reference time for expiry (tests).
	Now func() time.Time
}

// Target is a verified target.
type Target struct {
	Name   string
	Info   *metadata.TargetFiles
	Custom firmware.Custom
	// RootVersion is the root version the lookup ended trusting.
	RootVersion int64
}

// Error is a refusal with the reason a gateway reports.
type Error struct {
	Reason string
	Err    error
}

func (e *Error) Error() string { return e.Reason + ": " + e.Err.Error() }
func (e *Error) Unwrap() error { return e.Err }

// Lookup refreshes the metadata and returns the target of that name. A
// refusal is an *Error whose Reason is one of firmware's reasons.
func (c *Client) Lookup(name string) (*Target, error) {
	if err := os.MkdirAll(c.Dir, 0o700); err != nil {
		return nil, err
	}
	trusted := c.PinnedRoot
	// The root this client walked to before, if readable: starting again
	// from the pinned one would be safe (the chain is re-walked) but
	// would forget the versions seen.
	if b, err := os.ReadFile(filepath.Join(c.Dir, "root.json")); err == nil && len(b) > 0 {
		if _, err := metadata.Root().FromBytes(b); err == nil {
			trusted = b
		}
	}
	cfg, err := config.New(c.Platform+MetadataPath, trusted)
	if err != nil {
		return nil, err
	}
	cfg.LocalMetadataDir = c.Dir
	cfg.LocalTargetsDir = filepath.Join(c.Dir, "targets-unused")
	cfg.Fetcher = &fetcher{c: c.HTTP}
	cfg.TimestampMaxLength, cfg.SnapshotMaxLength, cfg.TargetsMaxLength, cfg.RootMaxLength = 16<<10, 1<<20, 4<<20, 512<<10
	up, err := updater.New(cfg)
	if err != nil {
		return nil, &Error{Reason: firmware.ReasonMetadata, Err: fmt.Errorf("trusted root: %w", err)}
	}
	if c.Now != nil {
		up.UnsafeSetRefTime(c.Now())
	}
	if err := up.Refresh(); err != nil {
		return nil, classify(err)
	}
	tf, err := up.GetTargetInfo(name)
	if err != nil {
		return nil, &Error{Reason: firmware.ReasonNotTargeted, Err: err}
	}
	t := &Target{Name: name, Info: tf, RootVersion: up.GetTrustedMetadataSet().Root.Signed.Version}
	if tf.Custom == nil {
		return nil, &Error{Reason: firmware.ReasonMetadata, Err: fmt.Errorf("target %s has no fieldtrust custom metadata", name)}
	}
	if err := firmware.StrictJSON(*tf.Custom, &t.Custom); err != nil {
		return nil, &Error{Reason: firmware.ReasonMetadata, Err: fmt.Errorf("target %s: custom metadata: %w", name, err)}
	}
	if len(tf.Hashes["sha256"]) != 32 {
		return nil, &Error{Reason: firmware.ReasonMetadata, Err: fmt.Errorf("target %s has no SHA-256", name)}
	}
	return t, nil
}

func classify(err error) error {
	var exp *metadata.ErrExpiredMetadata
	if errors.As(err, &exp) {
		return &Error{Reason: firmware.ReasonExpired, Err: err}
	}
	return &Error{Reason: firmware.ReasonMetadata, Err: err}
}

// fetcher implements go-tuf's Fetcher over the gateway's HTTPS client.
type fetcher struct{ c *http.Client }

func (f *fetcher) DownloadFile(url string, maxLength int64, _ time.Duration) ([]byte, error) {
	resp, err := f.c.Get(url)
	if err != nil {
		return nil, &metadata.ErrDownload{Msg: err.Error()}
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		io.Copy(io.Discard, io.LimitReader(resp.Body, 4096))
		return nil, &metadata.ErrDownloadHTTP{StatusCode: resp.StatusCode, URL: url}
	}
	b, err := io.ReadAll(io.LimitReader(resp.Body, maxLength+1))
	if err != nil {
		return nil, &metadata.ErrDownload{Msg: err.Error()}
	}
	if int64(len(b)) > maxLength {
		return nil, &metadata.ErrDownloadLengthMismatch{Msg: fmt.Sprintf("%s is longer than %d bytes", url, maxLength)}
	}
	return b, nil
}
