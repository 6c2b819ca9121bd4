// Package synth generates the thesis-shaped measurement workload both
// load tests use (the store's, in storetest, and the end-to-end one, in
// loadgen): channels with units in 12 groups, and deterministic values that
// look like instruments' (smooth signals with noise, counters, status
// codes). The same seed gives the same values on every run and for every
// store implementation, so their numbers compare.
package synth

import (
	"fmt"
	"math"

	"github.com/fieldtrust/fieldtrust/internal/snapshot"
)

// Groups is the number of channel groups, each with its unit.
const Groups = 12

var units = [Groups]string{"Cel", "bar", "l/min", "A", "V", "W", "Hz", "%", "mm/s", "rpm", "kPa", "m3/h"}

// Channel names channel i.
func Channel(i int) string { return fmt.Sprintf("ch-%03d", i) }

// Channels returns n channels: analog channels with units in Groups groups,
// every tenth an integral counter or status without a unit.
func Channels(n int) []snapshot.Value {
	out := make([]snapshot.Value, n)
	for i := range out {
		g := i % Groups
		out[i] = snapshot.Value{Channel: Channel(i), Unit: units[g], Group: fmt.Sprintf("group-%02d", g)}
		if i%10 == 9 {
			out[i].Unit = ""
		}
	}
	return out
}

// Fill sets the values of snapshot k of device d: smooth signals with noise
// rounded to 0.001, as instruments report them; counters and status values
// integral.
func Fill(vals []snapshot.Value, rng *Rand, d, k int) {
	for i := range vals {
		switch {
		case i%10 == 9 && i%20 == 19:
			vals[i].Value = float64(rng.Intn(4)) // status
		case i%10 == 9:
			vals[i].Value = float64(d*1000 + k*7 + i) // counter
		default:
			base := float64(10 + i%50)
			v := base + 3*math.Sin(float64(k)/8+float64(i)) + rng.Float()
			vals[i].Value = math.Round(v*1000) / 1000
		}
	}
}

// Rand is a small deterministic generator (xorshift64). Not for anything
// but test data.
type Rand struct{ s uint64 }

// NewRand returns a generator; seed must not be 0.
func NewRand(seed uint64) *Rand { return &Rand{s: seed} }

func (r *Rand) next() uint64 {
	r.s ^= r.s << 13
	r.s ^= r.s >> 7
	r.s ^= r.s << 17
	return r.s
}

// Intn returns a number in [0, n).
func (r *Rand) Intn(n int) int { return int(r.next() % uint64(n)) }

// Float returns a number in [0, 1).
func (r *Rand) Float() float64 { return float64(r.next()>>11) / (1 << 53) }
