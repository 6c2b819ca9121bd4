package devicemsg_test

import (
	"testing"

	"github.com/fieldtrust/fieldtrust/internal/devicemsg"
	"github.com/fieldtrust/fieldtrust/internal/store"
	"github.com/fieldtrust/fieldtrust/internal/tacs"
	"github.com/fieldtrust/fieldtrust/internal/topic"
)

// TestMayRead: the one rule of who reads a scope's device messages (the
// API and the console's audit page).
func TestMayRead(t *testing.T) {
	g := tacs.DefaultGrants()
	for _, tt := range []struct {
		name  string
		subj  tacs.Subject
		scope string
		want  bool
	}{
		{"a customer, its own subtree", tacs.Account("acme"), "acme", true},
		{"a customer, one of its gateways", tacs.Account("acme"), "acme/berlin/gw-1", true},
		{"an account, its parent", tacs.Account("acme/berlin"), "acme", false},
		{"a customer, another's", tacs.Account("acme"), "globex", false},
		{"a customer, everything", tacs.Account("acme"), "", false},
		{"the admin role, everything", tacs.ServiceSubject("console-vendor", tacs.RoleAdmin), "", true},
		{"the admin role, a customer", tacs.ServiceSubject("console-vendor", tacs.RoleAdmin), "acme", true},
		{"a snapshot reader", tacs.ServiceSubject("ingest", tacs.RoleSnapshotReader), "acme", false},
		{"a status reader, everything", tacs.ServiceSubject("console", tacs.RoleStatusReader), "", false},
	} {
		if got := devicemsg.MayRead(g, tt.subj, tt.scope); got != tt.want {
			t.Errorf("%s: MayRead(%s, %q) = %v, want %v", tt.name, tt.subj, tt.scope, got, tt.want)
		}
	}
}

// TestTopicOf: where each kind of device message travelled, and which way.
func TestTopicOf(t *testing.T) {
	const gw = "acme/berlin/gw-1"
	for _, tt := range []struct {
		kind, name, topic string
		outbound          bool
	}{
		{devicemsg.KindCommand, "reboot", topic.CommandsOf(gw), true},
		{devicemsg.KindNotice, "install", topic.FirmwareOf(gw), true},
		{devicemsg.KindDownload, "bytes=0-", topic.FirmwareOf(gw), true},
		{devicemsg.KindResult, "ok", topic.CommandResultsOf(gw), false},
		{devicemsg.KindStatus, "installed", topic.FirmwareStatusOf(gw), false},
		{devicemsg.KindRefusal, "commands", topic.CommandResultsOf(gw), false},
		{devicemsg.KindRefusal, "firmware", topic.FirmwareStatusOf(gw), false},
	} {
		m := store.DeviceMessage{Kind: tt.kind, Name: tt.name, Gateway: gw}
		if got := devicemsg.TopicOf(m); got != tt.topic {
			t.Errorf("TopicOf(%s %s) = %s, want %s", tt.kind, tt.name, got, tt.topic)
		}
		if got := devicemsg.Outbound(tt.kind); got != tt.outbound {
			t.Errorf("Outbound(%s) = %v", tt.kind, got)
		}
	}
}
