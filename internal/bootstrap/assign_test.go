package bootstrap

import (
	"fmt"
	"math"
	"slices"
	"testing"
)

// TestAssignDeterministic: the same inputs give the same order, whatever
// order the brokers are configured in.
func TestAssignDeterministic(t *testing.T) {
	a := []Broker{{URL: "mqtts://b1:8883"}, {URL: "mqtts://b2:8883"}, {URL: "mqtts://b3:8883"}}
	b := []Broker{a[2], a[0], a[1]}
	for _, path := range []string{"ms-1/acc-1/dev-1", "ms-1/acc-1/dev-2", "x/y/z"} {
		first := Assign(a, path)
		if len(first) != 3 {
			t.Fatalf("Assign returned %v", first)
		}
		for range 3 {
			if got := Assign(a, path); !slices.Equal(got, first) {
				t.Fatalf("Assign(%s) not stable: %v then %v", path, first, got)
			}
		}
		if got := Assign(b, path); !slices.Equal(got, first) {
			t.Fatalf("Assign(%s) depends on configuration order: %v vs %v", path, first, got)
		}
	}
	// Golden: pins the hash, so a change of algorithm is a conscious one
	// (it would move every gateway).
	for path, want := range map[string][]string{
		"ms-1/acc-1/dev-1": {"mqtts://b3:8883", "mqtts://b2:8883", "mqtts://b1:8883"},
		"ms-1/acc-1/dev-2": {"mqtts://b1:8883", "mqtts://b2:8883", "mqtts://b3:8883"},
	} {
		if got := Assign(a, path); !slices.Equal(got, want) {
			t.Errorf("Assign(%s) = %v, want %v", path, got, want)
		}
	}
}

// TestAssignSpread: over many paths each broker's share is close to its
// weight's share, and removing a broker moves only its own paths.
func TestAssignSpread(t *testing.T) {
	const n = 20000
	paths := make([]string, n)
	for i := range paths {
		paths[i] = fmt.Sprintf("ms-%d/acc-%d/dev-%d", i%7, i%13, i)
	}
	tests := []struct {
		name    string
		brokers []Broker
	}{
		{"evenly weighted 3", []Broker{{URL: "mqtts://b1:8883"}, {URL: "mqtts://b2:8883"}, {URL: "mqtts://b3:8883"}}},
		{"evenly weighted 5", []Broker{{URL: "mqtts://b1:8883"}, {URL: "mqtts://b2:8883"}, {URL: "mqtts://b3:8883"}, {URL: "mqtts://b4:8883"}, {URL: "mqtts://b5:8883"}}},
		{"weights 1:2:1", []Broker{{URL: "mqtts://b1:8883", Weight: 1}, {URL: "mqtts://b2:8883", Weight: 2}, {URL: "mqtts://b3:8883", Weight: 1}}},
		{"weights 0.5:0.5:3", []Broker{{URL: "mqtts://b1:8883", Weight: 0.5}, {URL: "mqtts://b2:8883", Weight: 0.5}, {URL: "mqtts://b3:8883", Weight: 3}}},
		{"single", []Broker{{URL: "mqtts://b1:8883"}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var total float64
			for _, b := range tt.brokers {
				total += weight(b)
			}
			count := map[string]int{}
			for _, p := range paths {
				count[Assign(tt.brokers, p)[0]]++
			}
			for _, b := range tt.brokers {
				want := weight(b) / total
				got := float64(count[b.URL]) / n
				// 20,000 samples: 3 standard deviations is under 1.1 %.
				if math.Abs(got-want) > 0.02 {
					t.Errorf("%s got %.3f of the paths, want %.3f", b.URL, got, want)
				}
			}
		})
	}
	// Removing b3 moves only b3's paths.
	all := tests[0].brokers
	for _, p := range paths {
		before := Assign(all, p)[0]
		after := Assign(all[:2], p)[0]
		if before != "mqtts://b3:8883" && after != before {
			t.Fatalf("%s moved from %s to %s although its broker stayed", p, before, after)
		}
	}
}

func weight(b Broker) float64 {
	if b.Weight == 0 {
		return 1
	}
	return b.Weight
}

func TestValidateBrokers(t *testing.T) {
	for _, tt := range []struct {
		brokers []Broker
		ok      bool
	}{
		{[]Broker{{URL: "mqtts://b1:8883"}}, true},
		{[]Broker{{URL: "mqtt://b1:1883"}}, false}, // no TLS
		{[]Broker{{URL: "b1:8883"}}, false},
		{[]Broker{{URL: "mqtts://b1:8883", Weight: -1}}, false},
		{[]Broker{{URL: "mqtts://b1:8883", Weight: math.NaN()}}, false},
		{[]Broker{{URL: "mqtts://b1:8883"}, {URL: "mqtts://b1:8883"}}, false},
		{nil, false},
	} {
		if err := validateBrokers(tt.brokers); (err == nil) != tt.ok {
			t.Errorf("validateBrokers(%v) = %v, want ok=%v", tt.brokers, err, tt.ok)
		}
	}
}
