// Package loadgen generates the design thesis's workload end to end: a
// fleet of gateways whose devices send snapshots of 340 channels, sealed
// as a real gateway seals them (snapshot.Builder, then an envelope signed
// by the gateway's e2e key and encrypted for the bootstrap recipients), and
// published QoS 1 over mTLS to the platform's broker, through ingest into
// the store. The end-to-end benchmark (TestEndToEnd, docs/benchmarks.md
// "End to end (issue 6)") drives it against an in-process platform.
//
// Sealing is the gateways' CPU, not the platform's, so snapshots are sealed
// ahead into one file per gateway (Seal) before the clock starts, and the
// measured phase only reads and publishes them (Publish).
package loadgen

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"time"

	"github.com/fieldtrust/fieldtrust/internal/envelope"
	"github.com/fieldtrust/fieldtrust/internal/snapshot"
	"github.com/fieldtrust/fieldtrust/internal/snapshot/synth"
)

// Shape is the fleet: Masters master accounts × Accounts accounts ×
// Gateways gateways × Devices devices, each device sending PerDevice
// snapshots of Channels channels, one every Every, starting at Start.
//
// The default (DefaultShape) is the design thesis's workload: 4 × 5 × 10 ×
// 5 = 1,000 devices behind 200 gateways, 100 snapshots each = 100,000
// snapshots of 340 values = 34 M values; one master account (a customer)
// owns a quarter of the fleet.
type Shape struct {
	Masters, Accounts, Gateways, Devices int
	PerDevice                            int
	Channels                             int
	Every                                time.Duration
	Start                                time.Time
}

// DefaultShape is the full workload (scale 1).
func DefaultShape() Shape {
	return Shape{Masters: 4, Accounts: 5, Gateways: 10, Devices: 5, PerDevice: 100, Channels: 340,
		Every: 15 * time.Minute, Start: time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC)}
}

// Scaled returns the shape with about f of its gateways (at least one per
// master account), keeping every device's history: f = 0.01 sends 1 % of
// the snapshots.
func (s Shape) Scaled(f float64) Shape {
	per := max(1, int(math.Round(float64(s.Accounts*s.Gateways)*f)))
	s.Accounts = min(s.Accounts, per)
	s.Gateways = max(1, per/s.Accounts)
	return s
}

// NumGateways is the number of gateways in the fleet.
func (s Shape) NumGateways() int { return s.Masters * s.Accounts * s.Gateways }

// NumDevices is the number of devices in the fleet.
func (s Shape) NumDevices() int { return s.NumGateways() * s.Devices }

// NumSnapshots is the number of snapshots the fleet sends.
func (s Shape) NumSnapshots() int { return s.NumDevices() * s.PerDevice }

// NumValues is the number of values the fleet sends.
func (s Shape) NumValues() int { return s.NumSnapshots() * s.Channels }

// Master names master account m.
func (s Shape) Master(m int) string { return fmt.Sprintf("ms-%02d", m) }

// Gateway returns the identity path of gateway g (0 <= g < NumGateways):
// ms-MM/acc-A/gw-G, numbered so that consecutive gateways belong to
// different master accounts (every master's devices are spread over the
// whole run).
func (s Shape) Gateway(g int) string {
	m := g % s.Masters
	rest := g / s.Masters
	return fmt.Sprintf("%s/acc-%d/gw-%d", s.Master(m), rest%s.Accounts, rest/s.Accounts)
}

// Device names device d of a gateway.
func (s Shape) Device(d int) string { return fmt.Sprintf("dev-%d", d) }

// Channel names channel i.
func Channel(i int) string { return synth.Channel(i) }

// SealGateway writes the sealed snapshots of gateway g to w, in the order
// the gateway sends them: snapshot k of each of its devices, then k+1.
// Each is framed as a 4-byte big-endian length and the envelope (DER). It
// returns the number of envelopes and their total size.
func (s Shape) SealGateway(w io.Writer, g int, sealer *envelope.Sealer) (n int, bytes int64, err error) {
	bw := bufio.NewWriterSize(w, 1<<20)
	builders := make([]*snapshot.Builder, s.Devices)
	for d := range builders {
		builders[d] = &snapshot.Builder{Device: s.Device(d), DeviceType: "analyzer"}
	}
	rng := synth.NewRand(uint64(g)*0x9E3779B97F4A7C15 + 1)
	vals := synth.Channels(s.Channels)
	var hdr [4]byte
	for k := range s.PerDevice {
		at := s.Start.Add(time.Duration(k) * s.Every).UnixMilli()
		for d, b := range builders {
			synth.Fill(vals, rng, g*s.Devices+d, k)
			enc, _, err := b.Next(at, vals)
			if err != nil {
				return n, bytes, fmt.Errorf("snapshot %d of %s/%s: %w", k, s.Gateway(g), b.Device, err)
			}
			env, err := sealer.Seal(enc)
			if err != nil {
				return n, bytes, fmt.Errorf("seal snapshot %d of %s/%s: %w", k, s.Gateway(g), b.Device, err)
			}
			binary.BigEndian.PutUint32(hdr[:], uint32(len(env)))
			bw.Write(hdr[:])
			if _, err := bw.Write(env); err != nil {
				return n, bytes, err
			}
			n++
			bytes += int64(len(env))
		}
	}
	return n, bytes, bw.Flush()
}

// EnvelopeReader reads the envelopes SealGateway wrote.
type EnvelopeReader struct {
	r *bufio.Reader
	f *os.File
}

// OpenEnvelopes opens a file SealGateway wrote.
func OpenEnvelopes(path string) (*EnvelopeReader, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	return &EnvelopeReader{r: bufio.NewReaderSize(f, 1<<20), f: f}, nil
}

// Next returns the next envelope, or io.EOF after the last.
func (e *EnvelopeReader) Next() ([]byte, error) {
	var hdr [4]byte
	if _, err := io.ReadFull(e.r, hdr[:]); err != nil {
		return nil, err
	}
	n := binary.BigEndian.Uint32(hdr[:])
	if n > 1<<24 {
		return nil, errors.New("corrupt envelope file: length over 16 MiB")
	}
	b := make([]byte, n)
	if _, err := io.ReadFull(e.r, b); err != nil {
		return nil, fmt.Errorf("corrupt envelope file: %w", io.ErrUnexpectedEOF)
	}
	return b, nil
}

// Close closes the file.
func (e *EnvelopeReader) Close() error { return e.f.Close() }
