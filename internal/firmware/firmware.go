// Package firmware holds what the platform and the gateway must agree on
// for firmware updates: the fieldtrust part of a TUF target's custom
// metadata, the campaign notice a gateway receives on its firmware
// channel, the progress reports it sends on firmware/status, and how
// versions compare.
//
// The trust in an update is TUF's (package tufrepo on the platform, the
// go-tuf updater on the gateway), rooted in the root.json pinned in the
// gateway at installation. The notice only tells a gateway where to look:
// it is sealed and signed by the platform's firmware service, but a
// notice, even a forged one, can make a gateway install nothing that the
// offline targets key did not sign.
package firmware

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"golang.org/x/mod/semver"

	"github.com/fieldtrust/fieldtrust/internal/ident"
)

// Signer is the e2e identity that signs campaign notices.
const Signer = "service:firmware"

// Custom is the "custom" object of a firmware target in TUF targets
// metadata. It is signed with the target by the targets key.
type Custom struct {
	DeviceType string `json:"device_type"`
	Version    string `json:"version"`
	MinVersion string `json:"min_version,omitempty"`
}

// TargetName is the TUF target path of a device type's version.
func TargetName(deviceType, version string) string { return deviceType + "/" + version }

// CheckDeviceType refuses a device type that is not an identity element
// (it names a directory on the gateway and a path segment).
func CheckDeviceType(t string) error {
	if err := ident.ValidateElement(t); err != nil {
		return fmt.Errorf("device type %q: %w", t, err)
	}
	return nil
}

// CheckVersion refuses a version that is not semantic (MAJOR.MINOR.PATCH,
// optionally -prerelease), so that "never older" has one meaning.
func CheckVersion(v string) error {
	if strings.Contains(v, "+") {
		return fmt.Errorf("version %q: build metadata (+...) does not order versions; leave it out", v)
	}
	if v == "" || len(v) > 64 || !semver.IsValid("v"+v) || semver.Canonical("v"+v) != "v"+v {
		return fmt.Errorf("version %q is not a semantic version MAJOR.MINOR.PATCH (e.g. 2.4.1)", v)
	}
	return nil
}

// Compare orders two versions accepted by CheckVersion: -1, 0 or +1.
// The empty version (nothing installed) is older than any.
func Compare(a, b string) int {
	switch {
	case a == "" && b == "":
		return 0
	case a == "":
		return -1
	case b == "":
		return 1
	}
	return semver.Compare("v"+a, "v"+b)
}

// Notice actions.
const (
	ActionInstall = "install"
	ActionAbort   = "abort"
	// ActionDownloaded records a download on the gateway's firmware topic
	// for the customer's eyes; gateways ignore it.
	ActionDownloaded = "downloaded"
)

// Notice is a campaign notice: JSON, signed by Signer and sealed for the
// gateway (and its customer), retained on the gateway's firmware topic so
// that a gateway offline when it was sent gets it when it connects.
type Notice struct {
	Campaign   string    `json:"campaign"`
	Action     string    `json:"action"`
	Gateway    string    `json:"gateway"` // the gateway it is for
	Target     string    `json:"target"`  // TUF target name
	DeviceType string    `json:"device_type"`
	Version    string    `json:"version"`
	URL        string    `json:"url"` // signed download URL, bound to Gateway
	Issued     time.Time `json:"issued"`
}

// MaxNotice bounds a notice's JSON.
const MaxNotice = 16 << 10

// ParseNotice decodes a notice strictly.
func ParseNotice(b []byte) (Notice, error) {
	var n Notice
	if len(b) > MaxNotice {
		return n, errors.New("notice: too large")
	}
	if err := StrictJSON(b, &n); err != nil {
		return n, fmt.Errorf("notice: %w", err)
	}
	switch n.Action {
	case ActionInstall:
		if err := CheckDeviceType(n.DeviceType); err != nil {
			return n, fmt.Errorf("notice: %w", err)
		}
		if err := CheckVersion(n.Version); err != nil {
			return n, fmt.Errorf("notice: %w", err)
		}
		if n.Target != TargetName(n.DeviceType, n.Version) || n.URL == "" {
			return n, errors.New("notice: target or URL missing or inconsistent")
		}
	case ActionAbort, ActionDownloaded:
	default:
		return n, fmt.Errorf("notice: unknown action %q", n.Action)
	}
	if n.Campaign == "" || len(n.Campaign) > 64 {
		return n, errors.New("notice: campaign id missing or too long")
	}
	return n, nil
}

// Device states of a campaign, in the order a gateway passes them.
const (
	Pending     = "pending"
	Notified    = "notified"
	Downloading = "downloading"
	Verifying   = "verifying"
	Installing  = "installing"
	Installed   = "installed"
	Failed      = "failed"
)

// Terminal reports whether a device state is final.
func Terminal(state string) bool { return state == Installed || state == Failed }

// Rank orders device states; a report never moves a device back.
func Rank(state string) int {
	switch state {
	case Pending:
		return 0
	case Notified:
		return 1
	case Downloading:
		return 2
	case Verifying:
		return 3
	case Installing:
		return 4
	case Installed, Failed:
		return 5
	}
	return -1
}

// Reasons a gateway reports with Failed. Tests and operators match them.
const (
	ReasonDowngrade   = "downgrade"
	ReasonDeviceType  = "wrong device type"
	ReasonMetadata    = "metadata refused"
	ReasonExpired     = "metadata expired"
	ReasonNotTargeted = "target not in signed metadata"
	ReasonTampered    = "artifact hash mismatch"
	ReasonTruncated   = "artifact truncated"
	ReasonDownload    = "download refused"
	ReasonUnhealthy   = "unhealthy after install; rolled back"
	ReasonInstall     = "install failed"
	ReasonAborted     = "campaign aborted"
)

// Status is a gateway's progress report on firmware/status: JSON, signed
// (CMS SignedData) by the gateway's e2e key. Refused is set when the
// gateway ignored a message on its firmware topic (a forged or unreadable
// notice); then Campaign may be empty and Digest names the message.
type Status struct {
	Campaign string    `json:"campaign,omitempty"`
	State    string    `json:"state"`
	Reason   string    `json:"reason,omitempty"`
	Version  string    `json:"version,omitempty"` // the version installed now
	Refused  bool      `json:"refused,omitempty"`
	Digest   string    `json:"digest,omitempty"` // SHA-256 (hex) of a refused message
	Count    int       `json:"count,omitempty"`  // refusals summed up in this report
	Time     time.Time `json:"time"`
}

// MaxStatus bounds a status report's JSON.
const MaxStatus = 4 << 10

// ParseStatus decodes a status report strictly.
func ParseStatus(b []byte) (Status, error) {
	var s Status
	if len(b) > MaxStatus {
		return s, errors.New("firmware status: too large")
	}
	if err := StrictJSON(b, &s); err != nil {
		return s, fmt.Errorf("firmware status: %w", err)
	}
	if Rank(s.State) < 0 && !s.Refused {
		return s, fmt.Errorf("firmware status: unknown state %q", s.State)
	}
	if len(s.Reason) > 512 || len(s.Campaign) > 64 || len(s.Version) > 64 || len(s.Digest) > 64 {
		return s, errors.New("firmware status: field too long")
	}
	return s, nil
}

// StrictJSON decodes one JSON value into v, refusing unknown fields and
// trailing data.
func StrictJSON(b []byte, v any) error {
	d := json.NewDecoder(strings.NewReader(string(b)))
	d.DisallowUnknownFields()
	if err := d.Decode(v); err != nil {
		return err
	}
	if d.More() {
		return errors.New("data after the JSON object")
	}
	return nil
}
