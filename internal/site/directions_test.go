package site

import (
	"testing"

	"github.com/fieldtrust/fieldtrust/internal/tacs"
	"github.com/fieldtrust/fieldtrust/internal/topic"
)

// TestDirectionsDisjoint: what the site takes from its gateways and what
// it hands down to them never overlap, so nothing it forwards can come
// back (no loops), and both stay inside the account.
func TestDirectionsDisjoint(t *testing.T) {
	s := &Site{grants: tacs.DefaultGrants(), subject: tacs.SiteSubject("ms/acc")}
	if err := s.planDirections(); err != nil {
		t.Fatal(err)
	}
	if len(s.up) == 0 || len(s.down) == 0 {
		t.Fatalf("up %v, down %v", s.up, s.down)
	}
	matches := func(filters []string, tp string) bool {
		for _, f := range filters {
			if tacs.Match(f, tp) {
				return true
			}
		}
		return false
	}
	for _, ch := range []topic.Channel{topic.Snapshots, topic.Events, topic.Status, topic.Firmware, topic.FirmwareStatus, topic.Commands, topic.CommandResults} {
		own, foreign := topic.Of("ms/acc/gw", ch), topic.Of("ms/other/gw", ch)
		if matches(s.up, own) && matches(s.down, own) {
			t.Errorf("%s goes both up and down", own)
		}
		if matches(s.up, foreign) || matches(s.down, foreign) {
			t.Errorf("%s of another account is forwarded", foreign)
		}
	}
	for _, tp := range []string{topic.SnapshotsOf("ms/acc/gw"), topic.CommandResultsOf("ms/acc/gw")} {
		if !matches(s.up, tp) {
			t.Errorf("%s is not forwarded up", tp)
		}
	}
	if !matches(s.down, topic.CommandsOf("ms/acc/gw")) {
		t.Error("commands are not handed down")
	}
	if matches(s.up, topic.Of("ms/acc/gw", topic.Events)) || matches(s.down, topic.Of("ms/acc/gw", topic.Events)) {
		t.Error("rule events are forwarded")
	}
}
