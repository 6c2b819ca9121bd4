package cluster

import (
	"strings"

	"github.com/nats-io/nats-server/v2/server"

	"github.com/fieldtrust/fieldtrust/internal/tacs"
)

// natsSubjects converts a valid TACS filter (tacs.Rights hands out only
// valid ones) to the NATS subjects the engine's MQTT layer uses for it, by
// the engine's own conversion (README-MQTT, mqttToNATSSubjectConversion):
// '/' separates tokens, '.' inside a level becomes "//", '+' is '*', and
// "a/#" is two subjects, "a" and "a.>" (MQTT's '#' includes the parent
// level). TACS refuses empty levels, so the engine's special forms for
// them never occur.
func natsSubjects(filter string) []string {
	levels := strings.Split(filter, "/")
	for i, l := range levels {
		switch l {
		case "+":
			levels[i] = "*"
		case "#":
			levels[i] = ">"
		default:
			levels[i] = strings.ReplaceAll(l, ".", "//")
		}
	}
	last := len(levels) - 1
	if levels[last] == ">" && last > 0 {
		return []string{strings.Join(levels[:last], "."), strings.Join(levels, ".")}
	}
	return []string{strings.Join(levels, ".")}
}

// engineSubjects are the engine's own subject spaces. MQTT says '#' and
// '+' never match a first level starting with '$' (and TACS follows it);
// NATS wildcards do match such tokens, so a grant of "#" would otherwise
// let its holder publish to the JetStream API ($JS.API.STREAM.DELETE...)
// through an MQTT topic "$JS/API/...". They are denied to every client,
// for publishing and subscribing, whatever its rights (the fence is
// tested by TestClusterAdversarial/dollar_topics).
var engineSubjects = []string{
	"$JS.>", "$JSC.>", "$MQTT.>", "$SYS.>", "$KV.>", "$O.>", "$SRV.>", "$NRG.>", "$G.>", "$LDM.>",
	"_INBOX.>", "_R_.>",
}

// mqttDeliverySubjects is where the engine's MQTT layer delivers JetStream
// (QoS 1/2) messages to a session: it subscribes there on the client's
// behalf, under the client's permissions. MQTT clients cannot subscribe
// there themselves: the engine refuses every MQTT filter under "$MQTT."
// (mqtt.go, "Do not allow MQTT clients to subscribe directly to internal
// subjects"; TestClusterAdversarial/dollar_topics).
const mqttDeliverySubjects = "$MQTT.sub.>"

// subscribeFence is engineSubjects less the $MQTT space, which the engine
// fences itself and needs for deliveries.
func subscribeFence() []string {
	var out []string
	for _, s := range engineSubjects {
		if s != "$MQTT.>" {
			out = append(out, s)
		}
	}
	return out
}

// permissions states the rights of a subject (tacs.Rights, one rule) as
// the engine's permission lists. An empty non-nil allow list allows
// nothing (a nil one would allow everything).
func permissions(rights []tacs.Grant) *server.Permissions {
	p := &server.Permissions{
		Publish:   &server.SubjectPermission{Allow: []string{}, Deny: append([]string(nil), engineSubjects...)},
		Subscribe: &server.SubjectPermission{Allow: []string{mqttDeliverySubjects}, Deny: subscribeFence()},
	}
	for _, g := range rights {
		subjects := natsSubjects(g.Filter)
		if g.Deny {
			// A deny grant refuses what it covers: subscriptions to it
			// and, through the engine's delivery check of deny
			// subjects, its messages on wider subscriptions.
			if g.Read {
				p.Subscribe.Deny = append(p.Subscribe.Deny, subjects...)
			}
			if g.Write {
				p.Publish.Deny = append(p.Publish.Deny, subjects...)
			}
			continue
		}
		if g.Read {
			p.Subscribe.Allow = append(p.Subscribe.Allow, subjects...)
		}
		if g.Write {
			p.Publish.Allow = append(p.Publish.Allow, subjects...)
		}
	}
	return p
}
