package rules

import (
	"context"
	"log/slog"
	"sync"
	"time"

	"github.com/fieldtrust/fieldtrust/internal/dcc/calibration"
)

// Calibrations is the DCC fleet link as the rules read it
// (*calibration.Link): the calibration of a device's measurement at its
// measurement time, by the link's one rule (docs/dcc.md "The fleet link").
type Calibrations interface {
	Flags(ctx context.Context, gateway, device string) (func(time.Time) *calibration.Flag, error)
}

// CalibrationTTL is how long the service keeps what it read of a device's
// bindings and instrument history: a DCC registered, revoked or bound
// reaches the rules within it, and a device sending every second costs one
// read per TTL, not one per snapshot.
const CalibrationTTL = 30 * time.Second

// NoInstrument is calibration.status when no instrument is bound to the
// device at the measurement time (the API then has no calibration field).
const NoInstrument = "none"

// calibrationVars is what a condition sees as calibration: status (valid,
// overdue, revoked, uncalibrated, unknown, or none), flagged, overdue,
// dcc_id, lab, proven (the platform verified the device's binding to the
// instrument, docs/dcc.md), and due (a timestamp: the first overdue
// instant) when the applicable DCC states a due date. A nil flag is no
// instrument.
func calibrationVars(f *calibration.Flag) map[string]any {
	if f == nil {
		return map[string]any{"status": NoInstrument, "flagged": false, "overdue": false, "dcc_id": "", "lab": "", "proven": false}
	}
	m := map[string]any{"status": f.Status, "flagged": f.Flagged, "overdue": f.Overdue, "dcc_id": f.DCCID, "lab": f.Lab, "proven": f.Proven}
	if f.DueUnix != 0 {
		m["due"] = time.Unix(f.DueUnix, 0).UTC()
	}
	return m
}

// unknownFlag is the calibration when it cannot be read (no fleet link,
// the bindings unreadable): flagged, never assumed valid.
var unknownFlag = calibration.Flag{Status: calibration.Unknown, Flagged: true}

// calibrationCache reads a device's calibration through the link at most
// once per CalibrationTTL; only rules that read calibration call it.
type calibrationCache struct {
	link Calibrations
	now  func() time.Time
	log  *slog.Logger
	mu   sync.Mutex
	devs map[[2]string]cachedFlags
}

type cachedFlags struct {
	read time.Time
	flag func(time.Time) *calibration.Flag
}

// flag is the calibration of the device's measurement at t. A failed read
// is unknown (and is retried after the TTL, so a broken store is logged
// once per device and TTL, not per snapshot).
func (c *calibrationCache) flag(ctx context.Context, gateway, device string, t time.Time) *calibration.Flag {
	k := [2]string{gateway, device}
	now := c.now()
	c.mu.Lock()
	e, ok := c.devs[k]
	c.mu.Unlock()
	if !ok || now.Sub(e.read) >= CalibrationTTL || now.Before(e.read) {
		f, err := c.link.Flags(ctx, gateway, device)
		if err != nil {
			c.log.Warn("rules: calibration unavailable", "gateway", gateway, "device", device, "err", err)
			f = func(time.Time) *calibration.Flag { u := unknownFlag; return &u }
		}
		e = cachedFlags{read: now, flag: f}
		c.mu.Lock()
		if c.devs == nil {
			c.devs = map[[2]string]cachedFlags{}
		}
		c.devs[k] = e
		c.mu.Unlock()
	}
	return e.flag(t)
}
