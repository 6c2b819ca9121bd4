package agent

import (
	"bytes"
	"encoding/json"
	"testing"
	"time"

	"github.com/fieldtrust/fieldtrust/internal/snapshot"
)

// FuzzParseExchange: no body makes the exchange parser panic, hang or
// return items beyond its bounds.
func FuzzParseExchange(f *testing.F) {
	at := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	f.Add(exchangeType, exchangeBody("cfg-1", at, `[{"dataPointId":"DP-Temperature","qualityCode":"0","value":"21.5"}]`))
	f.Add(exchangeType, exchangeBody("cfg-1", at, `[{"dataPointId":"a","value":1},{"dataPointId":"b","value":true}]`))
	f.Add(exchangeType, []byte("--mindspheremessage\r\nContent-Type: multipart/related; boundary=x\r\n\r\n--x\r\nContent-Type: application/json\r\n\r\n[]\r\n--x--\r\n--mindspheremessage--\r\n"))
	f.Add("multipart/mixed; boundary=\"a b\"", []byte("--a b\n\n--a b--\n"))
	f.Fuzz(func(t *testing.T, ctype string, body []byte) {
		items, err := ParseExchange(ctype, bytes.NewReader(body))
		if err != nil {
			return
		}
		n := 0
		for _, it := range items {
			if it.ConfigurationID == "" || len(it.Series) == 0 {
				t.Fatalf("item without configuration id or series: %+v", it)
			}
			for _, s := range it.Series {
				n++
				if len(s.Values) == 0 {
					t.Fatal("series without values")
				}
			}
		}
		if n > MaxSeries {
			t.Fatalf("%d series; the bound is %d", n, MaxSeries)
		}
	})
}

// FuzzConfiguration: a configuration that validates names only devices
// and channels a snapshot accepts.
func FuzzConfiguration(f *testing.F) {
	b, _ := json.Marshal(sampleConfig("cfg-1"))
	f.Add(b)
	f.Add([]byte(`{"configurationId":"x","dataSources":[{"name":"..","dataPoints":[{"id":"a","type":"DOUBLE"}]}]}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		var c DataSourceConfiguration
		if json.Unmarshal(b, &c) != nil || c.validate() != nil {
			return
		}
		for _, tg := range targets(&c, nil) {
			s := snapshot.Snapshot{Version: snapshot.Version, Device: tg.device, Seq: 1,
				Values: []snapshot.Value{{Channel: tg.channel, Value: 1, Unit: tg.unit, Group: tg.group}}}
			if err := s.Validate(); err != nil {
				t.Fatalf("a valid configuration makes an invalid snapshot: %v", err)
			}
		}
	})
}
