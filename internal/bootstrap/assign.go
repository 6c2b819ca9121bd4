package bootstrap

import (
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"net/url"
	"slices"
)

// Broker is one MQTT broker endpoint a gateway may be assigned to.
type Broker struct {
	// URL is what the gateway connects to, e.g. mqtts://broker-1.example:8883.
	URL string
	// Weight is the broker's share of gateways relative to the others;
	// 0 means 1. "Evenly weighted" allocation: all weights equal.
	Weight float64
}

func validateBrokers(bs []Broker) error {
	seen := map[string]bool{}
	for _, b := range bs {
		u, err := url.Parse(b.URL)
		if err != nil || u.Host == "" || (u.Scheme != "mqtts" && u.Scheme != "ssl" && u.Scheme != "tls" && u.Scheme != "wss") {
			return fmt.Errorf("broker %q: want a TLS URL such as mqtts://host:8883", b.URL)
		}
		if b.Weight < 0 || math.IsNaN(b.Weight) || math.IsInf(b.Weight, 0) {
			return fmt.Errorf("broker %s: weight %v must be a positive number", b.URL, b.Weight)
		}
		if seen[b.URL] {
			return fmt.Errorf("broker %s listed twice", b.URL)
		}
		seen[b.URL] = true
	}
	if len(bs) == 0 {
		return errors.New("no broker")
	}
	return nil
}

// Assign orders the brokers for an identity path by weighted rendezvous
// (highest random weight) hashing: each broker scores
//
//	score = -weight / ln(h),  h = SHA-256(url || 0x00 || path) as a number in (0, 1)
//
// and the brokers are returned by descending score. The first is the
// assignment; the rest are the failover order. This is the weighted HRW of
// Schindelhauer and Schomaker ("Weighted distributed hash tables", 2005):
// each broker gets a share of paths proportional to its weight, the same
// path always lands on the same broker, and adding or removing a broker
// moves only the paths that belong to it, so gateways do not reshuffle.
func Assign(brokers []Broker, path string) []string {
	type scored struct {
		url   string
		score float64
	}
	s := make([]scored, 0, len(brokers))
	for _, b := range brokers {
		w := b.Weight
		if w == 0 {
			w = 1
		}
		s = append(s, scored{b.URL, -w / math.Log(unitHash(b.URL, path))})
	}
	slices.SortStableFunc(s, func(a, b scored) int {
		switch {
		case a.score > b.score:
			return -1
		case a.score < b.score:
			return 1
		}
		if a.url < b.url {
			return -1
		}
		return 1
	})
	out := make([]string, len(s))
	for i, x := range s {
		out[i] = x.url
	}
	return out
}

// unitHash maps (node, key) to a number strictly between 0 and 1.
func unitHash(node, key string) float64 {
	h := sha256.New()
	h.Write([]byte(node))
	h.Write([]byte{0})
	h.Write([]byte(key))
	x := binary.BigEndian.Uint64(h.Sum(nil)[:8]) >> 11 // 53 bits
	return (float64(x) + 0.5) / (1 << 53)
}
