package gateway

import (
	"fmt"
	"math"
	"math/rand/v2"

	"github.com/fieldtrust/fieldtrust/internal/snapshot"
)

// channelSpec describes one simulated channel: its unit (UCUM), group,
// a baseline and how it moves.
type channelSpec struct {
	name, unit, group string
	base, noise       float64
	counter           float64 // per reading increment, for monotone counters
}

// deviceTypes are the kinds of equipment the simulator knows, after the
// test benches, pumps and compressors of the design thesis.
var deviceTypes = map[string][]channelSpec{
	"test-bench": {
		{"operating_hours", "h", "runtime", 1200, 0, 1.0 / 360},
		{"cycles", "1", "runtime", 50000, 0, 3},
		{"temp_oil", "Cel", "thermal", 62, 1.5, 0},
		{"temp_coolant", "Cel", "thermal", 38, 0.8, 0},
		{"temp_ambient", "Cel", "thermal", 22, 0.3, 0},
		{"pressure_hydraulic", "bar", "hydraulic", 180, 4, 0},
		{"pressure_pneumatic", "bar", "pneumatic", 6.2, 0.1, 0},
		{"flow_hydraulic", "L/min", "hydraulic", 42, 1.2, 0},
		{"vibration_rms", "mm/s", "mechanical", 2.1, 0.3, 0},
		{"power", "kW", "electrical", 15, 1.1, 0},
		{"voltage_l1", "V", "electrical", 230, 1.5, 0},
		{"current_l1", "A", "electrical", 21, 1.2, 0},
	},
	"pump": {
		{"operating_hours", "h", "runtime", 8300, 0, 1.0 / 360},
		{"starts", "1", "runtime", 1200, 0, 0.01},
		{"pressure_in", "bar", "hydraulic", 1.1, 0.05, 0},
		{"pressure_out", "bar", "hydraulic", 9.8, 0.2, 0},
		{"flow", "m3/h", "hydraulic", 24, 0.7, 0},
		{"temp_bearing", "Cel", "thermal", 48, 0.9, 0},
		{"speed", "1/min", "mechanical", 2900, 12, 0},
		{"vibration_rms", "mm/s", "mechanical", 1.4, 0.2, 0},
	},
	"compressor": {
		{"operating_hours", "h", "runtime", 21000, 0, 1.0 / 360},
		{"load_cycles", "1", "runtime", 310000, 0, 1},
		{"pressure_out", "bar", "pneumatic", 7.5, 0.15, 0},
		{"temp_discharge", "Cel", "thermal", 85, 2, 0},
		{"temp_oil", "Cel", "thermal", 70, 1.2, 0},
		{"power", "kW", "electrical", 37, 2.5, 0},
	},
}

// simDevice is one simulated measurement device.
type simDevice struct {
	id, typ string
	specs   []channelSpec
	state   []float64
	rng     *rand.Rand
}

// newSimulator returns n devices of mixed types, seeded by gateway path so
// that a restarted gateway simulates the same fleet.
func newSimulator(n int, seed string) []*simDevice {
	types := []string{"test-bench", "pump", "compressor"}
	var h uint64 = 1469598103934665603
	for _, c := range []byte(seed) {
		h = (h ^ uint64(c)) * 1099511628211
	}
	devs := make([]*simDevice, n)
	for i := range n {
		typ := types[i%len(types)]
		d := &simDevice{id: fmt.Sprintf("%s-%d", typ, i+1), typ: typ, specs: deviceTypes[typ], rng: rand.New(rand.NewPCG(h, uint64(i)))}
		d.state = make([]float64, len(d.specs))
		for j, s := range d.specs {
			d.state[j] = s.base * (0.9 + 0.2*d.rng.Float64())
		}
		devs[i] = d
	}
	return devs
}

// read advances the device and returns one reading of every channel.
func (d *simDevice) read() []snapshot.Value {
	out := make([]snapshot.Value, len(d.specs))
	for j, s := range d.specs {
		if s.counter > 0 {
			d.state[j] += s.counter * (0.5 + d.rng.Float64())
		} else {
			// A mean-reverting random walk around the baseline.
			d.state[j] += 0.2*(s.base-d.state[j]) + s.noise*d.rng.NormFloat64()
		}
		// Round as a real sensor reports: 3 decimals.
		out[j] = snapshot.Value{Channel: s.name, Unit: s.unit, Group: s.group, Value: math.Round(d.state[j]*1000) / 1000}
	}
	return out
}
