package store

import (
	"context"
	"time"
)

// Campaign is a firmware rollout (package rollout decides its course).
type Campaign struct {
	ID            string
	Version       string
	DeviceType    string
	Target        string   // TUF target name
	Scope         []string // identity paths (customers, accounts, gateways)
	CanaryPercent int
	MaxFailures   int
	State         string // running, paused, aborted, completed
	Stage         int    // the stage being rolled out: 1 canary, 2 the rest
	Reason        string // why it is paused or aborted
	Created       time.Time
	Updated       time.Time
}

// CampaignDevice is one gateway's place in a campaign.
type CampaignDevice struct {
	Campaign string
	Path     string
	Stage    int
	State    string // firmware.Pending ... firmware.Failed
	Reason   string
	Updated  time.Time
}

// DeviceMessage is something the platform sent to a gateway (a command, a
// campaign notice, a firmware download) or a gateway's answer (a command
// result, a firmware status report, a refusal report): the audit trail a
// customer reads for its devices, each also a ledger leaf. Commands wait
// in the store (State "queued") until the platform's device messaging
// service publishes them.
type DeviceMessage struct {
	Seq         int64 // assigned by the store, increasing
	ID          string
	Kind        string // command, notice, download, result, status, refusal
	Gateway     string
	Ref         string // the command or campaign it belongs to
	Sender      string // identity that signed it (or requested the download)
	Name        string // command name, notice action, status state, download range
	At          time.Time
	Expires     time.Time // commands: not sent after this
	Body        []byte    // the exact bytes sent or received (or the download record)
	State       string    // commands: queued, sent, expired; otherwise ""
	LedgerIndex int64     // -1 until recorded in the ledger
}

// MessageFilter selects device messages (zero fields match everything).
type MessageFilter struct {
	Scope string
	Kind  string
	Ref   string
	State string
	After int64 // Seq greater than
	Limit int   // default 1000
}

// Firmware is what campaigns and device messages persist.
type Firmware interface {
	// CreateCampaign stores a campaign and its devices in one transaction.
	CreateCampaign(ctx context.Context, c Campaign, devices []CampaignDevice) error
	// Campaign returns a campaign or ErrNotFound.
	Campaign(ctx context.Context, id string) (Campaign, error)
	// Campaigns returns the campaigns in any of the states (all without
	// states), oldest first.
	Campaigns(ctx context.Context, states ...string) ([]Campaign, error)
	// UpdateCampaign sets a campaign's state, stage, reason and failure
	// threshold (c.ID names it; the rest is not changed).
	UpdateCampaign(ctx context.Context, c Campaign) error
	// CampaignDevices returns a campaign's devices by path.
	CampaignDevices(ctx context.Context, id string) ([]CampaignDevice, error)
	// SetCampaignDevice records a device's state unless the device is in
	// a final state (installed, failed) already; it reports whether it
	// changed anything.
	SetCampaignDevice(ctx context.Context, id, path, state, reason string, at time.Time) (bool, error)
	// PutDeviceMessage records a message; ErrExists if its ID is taken.
	PutDeviceMessage(ctx context.Context, m DeviceMessage) error
	// DeviceMessages returns matching messages by Seq.
	DeviceMessages(ctx context.Context, f MessageFilter) ([]DeviceMessage, error)
	// SetDeviceMessage sets a message's state and ledger index.
	SetDeviceMessage(ctx context.Context, id, state string, ledgerIndex int64) error
}
