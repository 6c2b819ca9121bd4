// Package topic is fieldtrust's MQTT topic scheme: which topics the
// platform, its services and the gateways use, built and parsed in one
// place. Every device-level identity (a gateway, master/account/gateway)
// owns the channels below its path:
//
//	{master}/{account}/{gateway}/{channel}
//
// and the platform publishes the CRL bundles of its two PKIs, retained,
// under pki/crl/. What a well-formed topic or filter is, and who may use
// it, is package tacs's; this package only names the topics of the scheme
// and validates with tacs, so the two cannot drift apart.
package topic

import (
	"errors"
	"fmt"
	"strings"

	"github.com/fieldtrust/fieldtrust/internal/tacs"
)

// Channel is the part of a device topic after the identity path.
type Channel string

// The channels of a device.
const (
	Snapshots      Channel = "snapshots"       // sealed snapshots, gateway -> ingest
	Events         Channel = "events"          // device events
	Status         Channel = "status"          // retained birth message and last will (gateway.Status)
	Firmware       Channel = "firmware"        // firmware offers, firmware service -> gateway
	FirmwareStatus Channel = "firmware/status" // firmware progress, gateway -> platform
	Commands       Channel = "commands"        // signed, sealed commands, platform -> gateway (package command)
	CommandResults Channel = "commands/result" // command results, gateway -> platform
)

// channels lists every channel of the scheme.
var channels = []Channel{Snapshots, Events, Status, Firmware, FirmwareStatus, Commands, CommandResults}

// PathElements is the number of identity elements in a device topic: the
// identity path of a gateway.
const PathElements = 3

// The platform's own topics. The first level "pki" is reserved for the
// platform: no master account may be named like it (tacs refuses such a
// subject), since it would own pki/# through the own-subtree rule.
const (
	// Reserved is the first level of the platform's topics.
	Reserved = "pki"
	// CRLTransport carries the retained CRL bundle (pki.EncodeCRLBundle)
	// of the transport PKI; CRLE2E that of the e2e PKI.
	CRLTransport = "pki/crl/transport"
	CRLE2E       = "pki/crl/e2e"
	// CRLs matches both CRL topics: readable by every identity (tacs).
	CRLs = "pki/crl/#"
)

// Filters of the scheme.
const (
	// AllSnapshots is every gateway's snapshots: what the snapshot-reader
	// role (ingest) is granted.
	AllSnapshots = "+/+/+/" + string(Snapshots)
	// AllFirmware is every gateway's firmware channel: what the
	// firmware-writer role is granted.
	AllFirmware = "+/+/+/" + string(Firmware)
	// AllCommands, AllCommandResults and AllFirmwareStatus are every
	// gateway's commands, command results and firmware reports: with
	// AllFirmware, what the device-manager role (the platform's device
	// messaging service) is granted.
	AllCommands       = "+/+/+/" + string(Commands)
	AllCommandResults = "+/+/+/" + string(CommandResults)
	AllFirmwareStatus = "+/+/+/" + string(FirmwareStatus)
	// Everything is every tenant's topic (not $SYS): reading it is what
	// entitles a service to data about any tenant, such as rejects.
	Everything = "#"
	// System is the broker's own statistics ($SYS): reading it is what
	// entitles a service to the platform's metrics.
	System = "$SYS/#"
	// IngestGroup is ingest's default shared-subscription group.
	IngestGroup = "ingest"
	// Ingest is ingest's shared subscription to every gateway's snapshots.
	Ingest = "$share/" + IngestGroup + "/" + AllSnapshots
)

// Of returns the topic of channel ch of the identity path (or, with '+'
// levels in path, the filter for that channel of several gateways). The
// path is not checked: callers pass verified identity paths. Parse is the
// way back, and validates.
func Of(path string, ch Channel) string { return path + "/" + string(ch) }

// SnapshotsOf is the topic a gateway publishes its sealed snapshots on.
func SnapshotsOf(path string) string { return Of(path, Snapshots) }

// StatusOf is the topic of a gateway's retained birth message and will.
func StatusOf(path string) string { return Of(path, Status) }

// CommandsOf is the topic the platform sends a gateway's commands on.
func CommandsOf(path string) string { return Of(path, Commands) }

// CommandResultsOf is the topic a gateway reports command results on.
func CommandResultsOf(path string) string { return Of(path, CommandResults) }

// FirmwareOf returns the firmware topic of path.
func FirmwareOf(path string) string { return Of(path, Firmware) }

// FirmwareStatusOf returns the firmware status topic of path.
func FirmwareStatusOf(path string) string { return Of(path, FirmwareStatus) }

// Shared returns the shared subscription "$share/group/filter".
func Shared(group, filter string) string { return "$share/" + group + "/" + filter }

// ErrNotInScheme is wrapped by Parse's error for a topic that is not a
// device channel of the scheme.
var ErrNotInScheme = errors.New("not a topic of the fieldtrust scheme")

// Parse splits a device topic into its identity path and channel. It
// accepts exactly the topics Of builds: a well-formed topic name (tacs)
// whose first three levels are a valid, unreserved identity path and whose
// rest is a channel of the scheme. Anything else is an error wrapping
// ErrNotInScheme that says what is wrong.
func Parse(topic string) (path string, ch Channel, err error) {
	if err := tacs.ValidateTopic(topic); err != nil {
		return "", "", fmt.Errorf("%w: %v", ErrNotInScheme, err)
	}
	levels := strings.SplitN(topic, "/", PathElements+1)
	if len(levels) <= PathElements {
		return "", "", fmt.Errorf("%w: topic %q has fewer than %d levels; want {master}/{account}/{gateway}/{channel}", ErrNotInScheme, topic, PathElements+1)
	}
	path = strings.Join(levels[:PathElements], "/")
	if err := tacs.Account(path).Validate(); err != nil {
		return "", "", fmt.Errorf("%w: topic %q: identity path: %v", ErrNotInScheme, topic, err)
	}
	ch = Channel(levels[PathElements])
	for _, c := range channels {
		if c == ch {
			return path, ch, nil
		}
	}
	return "", "", fmt.Errorf("%w: topic %q: unknown channel %q", ErrNotInScheme, topic, ch)
}

// ParseChannel is Parse for a topic that must carry channel want; it
// returns the identity path.
func ParseChannel(topic string, want Channel) (string, error) {
	path, ch, err := Parse(topic)
	if err != nil {
		return "", err
	}
	if ch != want {
		return "", fmt.Errorf("%w: topic %q is the %s channel, not %s", ErrNotInScheme, topic, ch, want)
	}
	return path, nil
}
