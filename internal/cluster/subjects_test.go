package cluster

import (
	"slices"
	"testing"
)

// TestNATSSubjects: TACS filters become the subjects the engine's MQTT
// layer uses for them (its README-MQTT conversion), '#' covering the
// parent level as in MQTT.
func TestNATSSubjects(t *testing.T) {
	for _, tc := range []struct {
		filter string
		want   []string
	}{
		{"ms/acc/gw", []string{"ms.acc.gw"}},
		{"ms/+/gw/snapshots", []string{"ms.*.gw.snapshots"}},
		{"ms/#", []string{"ms", "ms.>"}},
		{"#", []string{">"}},
		{"pki/crl/#", []string{"pki.crl", "pki.crl.>"}},
		{"a.b/c", []string{"a//b.c"}},
	} {
		if got := natsSubjects(tc.filter); !slices.Equal(got, tc.want) {
			t.Errorf("natsSubjects(%q) = %v, want %v", tc.filter, got, tc.want)
		}
	}
}
