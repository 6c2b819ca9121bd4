// Package abslot is the gateway's default firmware installer: two slot
// directories per device type, A and B, and a boot record naming the
// active one. Installing writes the inactive slot (synced), then switches
// the boot record atomically (temporary file, fsync, rename, directory
// fsync) to the new slot, marked tentative, remembering the previous one.
// The new version then has to prove itself healthy: Commit clears the
// tentative mark, Rollback switches back. A power cut at any point leaves
// either the old boot record or the new one, and the slot it names
// complete.
//
//	DIR/<device type>/a/firmware.bin, DIR/<device type>/b/firmware.bin
//	DIR/<device type>/boot.json  {"active":"a","version":"2.4.1","tentative":true,"previous":{"slot":"b","version":"2.4.0"}}
package abslot

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/fieldtrust/fieldtrust/internal/atomicfile"
	"github.com/fieldtrust/fieldtrust/internal/firmware"
)

// Installer installs into Dir.
type Installer struct{ Dir string }

// Slot is one side of a boot record.
type Slot struct {
	Slot    string `json:"slot"`
	Version string `json:"version"`
}

// Boot is a device type's boot record.
type Boot struct {
	Active    string `json:"active"`
	Version   string `json:"version"`
	Tentative bool   `json:"tentative,omitempty"`
	Previous  *Slot  `json:"previous,omitempty"`
}

func (i *Installer) typeDir(deviceType string) (string, error) {
	if err := firmware.CheckDeviceType(deviceType); err != nil {
		return "", err
	}
	return filepath.Join(i.Dir, deviceType), nil
}

// Boot returns the boot record of a device type; the zero record (no
// version) if nothing was ever installed.
func (i *Installer) Boot(deviceType string) (Boot, error) {
	var b Boot
	dir, err := i.typeDir(deviceType)
	if err != nil {
		return b, err
	}
	data, err := os.ReadFile(filepath.Join(dir, "boot.json"))
	if errors.Is(err, os.ErrNotExist) {
		return b, nil
	}
	if err != nil {
		return b, fmt.Errorf("boot record of %s: %w", deviceType, err)
	}
	if err := json.Unmarshal(data, &b); err != nil || (b.Active != "a" && b.Active != "b") {
		return b, fmt.Errorf("boot record of %s is damaged (%v): restore %s from the other slot's version", deviceType, err, filepath.Join(dir, "boot.json"))
	}
	return b, nil
}

func (i *Installer) writeBoot(dir string, b Boot) error {
	data, err := json.Marshal(b)
	if err != nil {
		return err
	}
	return atomicfile.Write(filepath.Join(dir, "boot.json"), data, 0o644)
}

// Version is the version a device type runs ("" if none).
func (i *Installer) Version(deviceType string) (string, bool, error) {
	b, err := i.Boot(deviceType)
	return b.Version, b.Tentative, err
}

// Install writes file into the inactive slot and boots it tentatively.
// Installing the version that is already booted tentatively does nothing
// (a restart after a power cut between the switch and its record).
func (i *Installer) Install(ctx context.Context, deviceType, version, file string) error {
	dir, err := i.typeDir(deviceType)
	if err != nil {
		return err
	}
	b, err := i.Boot(deviceType)
	if err != nil {
		return err
	}
	if b.Tentative && b.Version == version {
		return nil
	}
	if b.Tentative {
		return fmt.Errorf("%s %s is still on trial; commit or roll it back first", deviceType, b.Version)
	}
	target := "a"
	if b.Active == "a" {
		target = "b"
	}
	slot := filepath.Join(dir, target)
	if err := os.MkdirAll(slot, 0o700); err != nil {
		return err
	}
	if err := copyFile(ctx, file, filepath.Join(slot, "firmware.bin")); err != nil {
		return fmt.Errorf("write slot %s of %s: %w", target, deviceType, err)
	}
	next := Boot{Active: target, Version: version, Tentative: true}
	if b.Active != "" {
		next.Previous = &Slot{Slot: b.Active, Version: b.Version}
	}
	return i.writeBoot(dir, next)
}

// Commit makes a tentative version permanent.
func (i *Installer) Commit(deviceType string) error {
	dir, err := i.typeDir(deviceType)
	if err != nil {
		return err
	}
	b, err := i.Boot(deviceType)
	if err != nil || !b.Tentative {
		return err
	}
	b.Tentative = false
	return i.writeBoot(dir, b)
}

// Rollback boots the previous slot again (or nothing, if there was none).
func (i *Installer) Rollback(deviceType string) error {
	dir, err := i.typeDir(deviceType)
	if err != nil {
		return err
	}
	b, err := i.Boot(deviceType)
	if err != nil || !b.Tentative {
		return err
	}
	if b.Previous == nil {
		return os.Remove(filepath.Join(dir, "boot.json"))
	}
	return i.writeBoot(dir, Boot{Active: b.Previous.Slot, Version: b.Previous.Version})
}

func copyFile(ctx context.Context, src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	tmp := dst + ".tmp"
	out, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	_, err = io.Copy(out, ctxReader{ctx, in})
	if err == nil {
		err = out.Sync()
	}
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(tmp)
		return err
	}
	if err := os.Rename(tmp, dst); err != nil {
		return err
	}
	return atomicfile.SyncDir(filepath.Dir(dst))
}

type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c ctxReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}
