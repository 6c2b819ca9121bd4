package agent

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"mime/multipart"
	"strings"
	"time"
)

// The exchange wire format, as the MindConnect agents send it: a
// multipart/mixed body whose parts are multipart/related, each holding a
// metadata part (application/vnd.siemens.mindsphere.meta+json) followed by
// its payload part. fieldtrust reads standardTimeSeries payloads: a JSON
// array of {"timestamp": RFC 3339, "values": [{"dataPointId", "qualityCode",
// "value"}]}. The SDKs end lines with LF, not CRLF; mime/multipart reads
// both.

// Bounds of one exchange post (docs/agents.md).
const (
	MaxExchangeBody = 4 << 20
	maxParts        = 64   // multipart/related parts per post
	MaxSeries       = 1000 // timestamps per post, all parts together
	maxPartBytes    = MaxExchangeBody
	maxValueText    = 64
)

// ErrWire is wrapped by every error about a malformed exchange body.
var ErrWire = errors.New("malformed exchange message")

// Series is the values of one timestamp.
type Series struct {
	Timestamp time.Time
	Values    []PointValue
}

// PointValue is one data point's value as sent: text (numbers and
// booleans as their JSON text).
type PointValue struct {
	DataPointID string
	QualityCode string
	Value       string
}

// Item is one metadata+payload pair.
type Item struct {
	ConfigurationID string
	Series          []Series
}

type metaJSON struct {
	Type    string `json:"type"`
	Version string `json:"version"`
	Payload struct {
		Type    string `json:"type"`
		Version string `json:"version"`
		Details struct {
			ConfigurationID string `json:"configurationId"`
		} `json:"details"`
	} `json:"payload"`
}

// flexText is a JSON string, number or boolean, kept as text.
type flexText string

func (f *flexText) UnmarshalJSON(b []byte) error {
	b = bytes.TrimSpace(b)
	if len(b) > 0 && b[0] == '"' {
		var s string
		if err := json.Unmarshal(b, &s); err != nil {
			return err
		}
		*f = flexText(s)
		return nil
	}
	var n json.Number
	if err := json.Unmarshal(b, &n); err == nil {
		*f = flexText(n)
		return nil
	}
	var v bool
	if err := json.Unmarshal(b, &v); err != nil {
		return errors.New("want a string, number or boolean")
	}
	*f = flexText(fmt.Sprint(v))
	return nil
}

type seriesJSON struct {
	Timestamp string `json:"timestamp"`
	Values    []struct {
		DataPointID string   `json:"dataPointId"`
		QualityCode flexText `json:"qualityCode"`
		Value       flexText `json:"value"`
	} `json:"values"`
}

func wireErr(format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{ErrWire}, args...)...)
}

// ParseExchange parses an exchange body of the given Content-Type. It
// reads at most MaxExchangeBody bytes of body.
func ParseExchange(contentType string, body io.Reader) ([]Item, error) {
	mt, params, err := mime.ParseMediaType(contentType)
	if err != nil || mt != "multipart/mixed" || params["boundary"] == "" {
		return nil, wireErr("Content-Type must be multipart/mixed with a boundary, not %q", clip(contentType))
	}
	outer := multipart.NewReader(io.LimitReader(body, MaxExchangeBody+1), params["boundary"])
	var items []Item
	series := 0
	for n := 0; ; n++ {
		part, err := outer.NextPart()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, wireErr("part %d: %v", n, err)
		}
		if n >= maxParts {
			return nil, wireErr("more than %d parts", maxParts)
		}
		mt, params, err := mime.ParseMediaType(part.Header.Get("Content-Type"))
		if err != nil || mt != "multipart/related" || params["boundary"] == "" {
			return nil, wireErr("part %d: Content-Type must be multipart/related with a boundary", n)
		}
		got, err := parseRelated(multipart.NewReader(part, params["boundary"]), n, &series)
		if err != nil {
			return nil, err
		}
		items = append(items, got...)
	}
	if len(items) == 0 {
		return nil, wireErr("no metadata and payload parts")
	}
	return items, nil
}

// parseRelated reads the metadata/payload pairs of one multipart/related
// part.
func parseRelated(r *multipart.Reader, n int, series *int) ([]Item, error) {
	var items []Item
	for {
		meta, err := r.NextPart()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, wireErr("part %d: %v", n, err)
		}
		if len(items) >= maxParts {
			return nil, wireErr("part %d: more than %d items", n, maxParts)
		}
		if mt, _, _ := mime.ParseMediaType(meta.Header.Get("Content-Type")); mt != "application/vnd.siemens.mindsphere.meta+json" {
			return nil, wireErr("part %d: expected the metadata part (application/vnd.siemens.mindsphere.meta+json), got %q", n, clip(meta.Header.Get("Content-Type")))
		}
		var m metaJSON
		if err := decodeStrictish(meta, &m); err != nil {
			return nil, wireErr("part %d: metadata: %v", n, err)
		}
		switch {
		case m.Type != "item":
			return nil, wireErr("part %d: metadata type %q; want item", n, clip(m.Type))
		case m.Payload.Type != "standardTimeSeries":
			return nil, wireErr("part %d: payload type %q is not supported; fieldtrust accepts standardTimeSeries", n, clip(m.Payload.Type))
		case m.Payload.Details.ConfigurationID == "":
			return nil, wireErr("part %d: metadata names no configurationId", n)
		}
		payload, err := r.NextPart()
		if err != nil {
			return nil, wireErr("part %d: the metadata part has no payload part: %v", n, err)
		}
		if mt, _, _ := mime.ParseMediaType(payload.Header.Get("Content-Type")); mt != "application/json" {
			return nil, wireErr("part %d: payload Content-Type %q; want application/json", n, clip(payload.Header.Get("Content-Type")))
		}
		var raw []seriesJSON
		if err := decodeStrictish(payload, &raw); err != nil {
			return nil, wireErr("part %d: payload: %v", n, err)
		}
		it := Item{ConfigurationID: m.Payload.Details.ConfigurationID}
		for i, s := range raw {
			if *series++; *series > MaxSeries {
				return nil, wireErr("more than %d timestamps in one post", MaxSeries)
			}
			ts, err := time.Parse(time.RFC3339Nano, s.Timestamp)
			if err != nil {
				return nil, wireErr("part %d: series %d: timestamp %q is not RFC 3339", n, i, clip(s.Timestamp))
			}
			if len(s.Values) == 0 {
				return nil, wireErr("part %d: series %d has no values", n, i)
			}
			out := Series{Timestamp: ts, Values: make([]PointValue, 0, len(s.Values))}
			for _, v := range s.Values {
				if len(v.Value) > maxValueText || len(v.QualityCode) > maxValueText {
					return nil, wireErr("part %d: series %d: data point %q: value or qualityCode longer than %d bytes", n, i, clip(v.DataPointID), maxValueText)
				}
				out.Values = append(out.Values, PointValue{DataPointID: v.DataPointID, QualityCode: string(v.QualityCode), Value: string(v.Value)})
			}
			it.Series = append(it.Series, out)
		}
		if len(it.Series) == 0 {
			return nil, wireErr("part %d: the payload has no timestamps", n)
		}
		items = append(items, it)
	}
	return items, nil
}

// decodeStrictish decodes one JSON value and refuses trailing data other
// than whitespace (the SDK ends the payload with CR LF before the
// boundary).
func decodeStrictish(r io.Reader, v any) error {
	dec := json.NewDecoder(io.LimitReader(r, maxPartBytes))
	if err := dec.Decode(v); err != nil {
		return err
	}
	rest, err := io.ReadAll(dec.Buffered())
	if err != nil {
		return err
	}
	more, err := io.ReadAll(io.LimitReader(r, maxPartBytes))
	if err != nil {
		return err
	}
	if strings.TrimSpace(string(rest)+string(more)) != "" {
		return errors.New("data after the JSON value")
	}
	return nil
}
