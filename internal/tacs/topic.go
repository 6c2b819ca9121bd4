package tacs

import (
	"strconv"
	"strings"
	"unicode/utf8"
)

// Limits on topics and filters. The platform's own topics are at most
// 3×64+len("commands/result")+4 ≈ 211 bytes and 5 levels deep; the bounds
// leave room for sub-channels while keeping a hostile SUBSCRIBE cheap to
// evaluate and to log.
const (
	// MaxTopicLen is the longest topic or filter, in bytes, including a
	// $share/group/ prefix.
	MaxTopicLen = 1024
	// MaxLevels is the largest number of '/'-separated levels.
	MaxLevels = 32
)

const sharePrefix = "$share"

// checkText rejects what no level may contain: invalid UTF-8, NUL and other
// C0 control characters and DEL (MQTT forbids NUL and discourages the rest;
// they also make log lines lie), and anything over MaxTopicLen.
func checkText(s string) Reason {
	switch {
	case s == "":
		return ReasonEmptyLevel
	case len(s) > MaxTopicLen:
		return ReasonTooLong
	case !utf8.ValidString(s):
		return ReasonBadEncoding
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c == 0x7f {
			return ReasonBadEncoding
		}
	}
	return ""
}

// splitLevels splits s into levels and refuses empty levels ("a//b", "/a",
// "a/"). MQTT allows them, but our topic scheme never produces one, and
// refusing them removes a whole class of "same topic, different spelling"
// tricks.
func splitLevels(s string) ([]string, Reason) {
	levels := strings.Split(s, "/")
	if len(levels) > MaxLevels {
		return nil, ReasonTooDeep
	}
	for _, l := range levels {
		if l == "" {
			return nil, ReasonEmptyLevel
		}
	}
	return levels, ""
}

// parseFilter validates a subscription filter (without a $share prefix):
// '+' and '#' only as a whole level, '#' only last.
func parseFilter(s string) ([]string, Reason) {
	if r := checkText(s); r != "" {
		return nil, r
	}
	levels, r := splitLevels(s)
	if r != "" {
		return nil, r
	}
	for i, l := range levels {
		if l == "+" || (l == "#" && i == len(levels)-1) {
			continue
		}
		if strings.ContainsAny(l, "+#") {
			return nil, ReasonBadWildcard
		}
	}
	return levels, ""
}

// parseTopic validates a topic name: a filter without wildcards.
func parseTopic(s string) ([]string, Reason) {
	if r := checkText(s); r != "" {
		return nil, r
	}
	if strings.ContainsAny(s, "+#") {
		return nil, ReasonWildcardInTopic
	}
	return splitLevels(s)
}

// splitShare separates "$share/group/filter" into group and filter. ok is
// false when s is not a shared subscription. The prefix is compared
// case-insensitively because the embedded broker does so; treating
// "$SHARE/..." as a plain '$' topic here while the broker treats it as a
// share would let the two disagree about what was authorised.
func splitShare(s string) (group, inner string, ok bool) {
	if len(s) < len(sharePrefix) || !strings.EqualFold(s[:len(sharePrefix)], sharePrefix) {
		return "", "", false
	}
	rest := s[len(sharePrefix):]
	if rest == "" || rest[0] != '/' {
		return "", "", false
	}
	group, inner, _ = strings.Cut(rest[1:], "/")
	return group, inner, true
}

// covers reports whether every topic that filter f can match is also
// matched by filter g. Both are already-validated level slices.
//
// It walks both level by level: '#' in g accepts any remainder of f
// (including none, since "a/#" matches "a"); '#' in f requires '#' in g at
// the same position; '+' in f requires '+' or '#' in g; a literal in f needs
// an equal literal or a wildcard in g. At the first level a '+' or '#' in g
// does not match a literal beginning with '$' (MQTT-4.7.2-1), while a
// wildcard in f there never matches '$' topics either, so it stays covered.
func covers(g, f []string) bool {
	for i := 0; ; i++ {
		if i < len(g) && g[i] == "#" {
			return !(i == 0 && len(f) > 0 && isDollar(f[0]))
		}
		if i == len(f) {
			return i == len(g)
		}
		if i == len(g) || f[i] == "#" {
			return false
		}
		switch {
		case f[i] == "+":
			if g[i] != "+" {
				return false
			}
		case g[i] == "+":
			if i == 0 && isDollar(f[0]) {
				return false
			}
		case g[i] != f[i]:
			return false
		}
	}
}

func isDollar(level string) bool { return strings.HasPrefix(level, "$") }

// Match reports whether the MQTT filter matches the topic name, following
// MQTT 3.1.1/5 §4.7: '+' matches exactly one level, a trailing '#' matches
// the parent level and any number of levels below it, and neither matches a
// first level beginning with '$'. A "$share/group/" prefix is not
// interpreted. Match does not validate its inputs; it is the reference
// matcher tests compare Authorize against.
func Match(filter, topic string) bool {
	f := strings.Split(filter, "/")
	t := strings.Split(topic, "/")
	for i := range f {
		if f[i] == "#" {
			return !(i == 0 && isDollar(t[0]))
		}
		if i >= len(t) {
			return false
		}
		if f[i] == "+" {
			if i == 0 && isDollar(t[0]) {
				return false
			}
			continue
		}
		if f[i] != t[i] {
			return false
		}
	}
	return len(f) == len(t)
}

// ValidateTopic reports whether topic is a topic name Authorize could allow
// someone to publish: valid UTF-8 without control characters, no wildcards,
// no empty levels, within MaxTopicLen and MaxLevels. The error text is the
// Reason.
func ValidateTopic(topic string) error {
	if _, r := parseTopic(topic); r != "" {
		return &TopicError{Topic: topic, Reason: r}
	}
	return nil
}

// TopicError reports an invalid topic name.
type TopicError struct {
	Topic  string
	Reason Reason
}

func (e *TopicError) Error() string {
	return "invalid topic " + strconv.Quote(e.Topic) + ": " + string(e.Reason)
}
