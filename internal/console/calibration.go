package console

import (
	"context"
	"errors"

	"github.com/fieldtrust/fieldtrust/internal/dcc/calibration"
)

// calibrationView is the device page's calibration card: the DCC fleet
// link's report (docs/dcc.md "The fleet link"), read by the same rule as
// GET /api/v1/devices/{path}/calibration (calibration.Link.Report), for a
// device the page has already found in the viewer's scope.
type calibrationView struct {
	Report      *calibration.Report
	Unavailable bool // the registry is not open yet: the status is unknown
}

// Bound reports whether any instrument was ever declared for the device.
func (c calibrationView) Bound() bool { return c.Report != nil && len(c.Report.Bindings) > 0 }

// calibrationOf reads the device's calibration; nil when the console has
// no fleet link (Options.Calibration). The caller has checked the scope:
// this is only reached for a device the viewer may read.
func (c *Console) calibrationOf(ctx context.Context, gateway, device string) (*calibrationView, error) {
	if c.opts.Calibration == nil {
		return nil, nil
	}
	rep, err := c.opts.Calibration.Report(ctx, gateway, device)
	if errors.Is(err, calibration.ErrUnavailable) {
		return &calibrationView{Unavailable: true}, nil
	}
	if err != nil {
		return nil, err
	}
	return &calibrationView{Report: rep}, nil
}
