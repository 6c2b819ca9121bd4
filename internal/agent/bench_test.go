package agent

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// The numbers of docs/benchmarks.md ("HTTPS agents"): make bench-agents.
// Each runs over real TLS (keep-alive connections) against SQLite.

// cpuTime is the process's user+system CPU time: on a shared machine the
// wall clock says little, the CPU an operation costs says what 2 cores
// can do (the client's side of TLS and the assertions count too, so this
// is an upper bound of the server's cost).
func cpuTime() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// reportCPU reports CPU per operation and what two cores could serve.
func reportCPU(b *testing.B, start time.Duration, unit string) {
	per := float64(cpuTime()-start) / float64(b.N)
	b.ReportMetric(per/1e3, "cpu-µs/op")
	b.ReportMetric(2e9/per, unit+"-per-2-cores")
}

func benchAgents(b *testing.B, h *harness, n int) []*client {
	b.Helper()
	cs := make([]*client, n)
	for i := range cs {
		cs[i] = h.onboard(fmt.Sprintf("acme/acc/a%d", i), ProfileSharedSecret)
	}
	return cs
}

// benchTokens: token requests, each with a fresh HS256 assertion of one
// of 64 agents; reuse says whether a token within the first third of its
// life is handed out again (the default) or every answer is signed anew.
func benchTokens(b *testing.B, reuse bool) {
	h := newHarness(b, noLimits)
	h.svc.noTokenReuse = !reuse
	cs := benchAgents(b, h, 64)
	var next atomic.Int64
	client := h.srv.Client()
	client.Transport.(*http.Transport).MaxIdleConnsPerHost = 64
	b.SetParallelism(8)
	b.ResetTimer()
	cpu := cpuTime()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			c := cs[next.Add(1)%int64(len(cs))]
			form := url.Values{"grant_type": {"client_credentials"},
				"client_assertion_type": {"urn:ietf:params:oauth:client-assertion-type:jwt-bearer"}, "client_assertion": {c.assertion(c.claims())}}
			resp, err := client.PostForm(h.srv.URL+TokenPath, form)
			if err != nil {
				b.Fatal(err)
			}
			io.Copy(io.Discard, resp.Body) // a drained body keeps the connection
			resp.Body.Close()
			if resp.StatusCode != 200 {
				b.Fatalf("token: %d", resp.StatusCode)
			}
		}
	})
	reportCPU(b, cpu, "req/s")
}

func BenchmarkTokenSigned(b *testing.B) { benchTokens(b, false) }
func BenchmarkTokenReused(b *testing.B) { benchTokens(b, true) }

// BenchmarkExchange: posts of one timestamp with three values by 16
// agents, each post a snapshot chained, ledgered and stored.
func BenchmarkExchange(b *testing.B) {
	h := newHarness(b, noLimits)
	cs := benchAgents(b, h, 16)
	toks := make([]string, len(cs))
	for i, c := range cs {
		toks[i] = c.token()
		if r := c.putConfig(toks[i], sampleConfig("cfg-1"), "0"); r.Status != 200 {
			b.Fatalf("configuration: %d", r.Status)
		}
	}
	var next atomic.Int64
	client := h.srv.Client()
	client.Transport.(*http.Transport).MaxIdleConnsPerHost = 64
	t0 := time.Now()
	b.SetParallelism(8)
	b.ResetTimer()
	cpu := cpuTime()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			i := next.Add(1)
			k := i % int64(len(cs))
			body := exchangeBody("cfg-1", t0.Add(time.Duration(i)*time.Millisecond),
				`[{"dataPointId":"DP-Temperature","qualityCode":"0","value":"21.5"},{"dataPointId":"DP-Pressure","qualityCode":"0","value":"101.3"},{"dataPointId":"DP-Count","qualityCode":"0","value":"7"}]`)
			req, _ := http.NewRequest("POST", h.srv.URL+ExchangePath, bytes.NewReader(body))
			req.Header.Set("Authorization", "Bearer "+toks[k])
			req.Header.Set("Content-Type", exchangeType)
			resp, err := client.Do(req)
			if err != nil {
				b.Fatal(err)
			}
			io.Copy(io.Discard, resp.Body) // a drained body keeps the connection
			resp.Body.Close()
			if resp.StatusCode != 200 {
				b.Fatalf("post: %d", resp.StatusCode)
			}
		}
	})
	reportCPU(b, cpu, "posts/s")
}

// BenchmarkAccessTokenCheck: what a post pays for its token: the RS256
// verification and the agent's row (revocation), without HTTP.
func BenchmarkAccessTokenCheck(b *testing.B) {
	h := newHarness(b, noLimits)
	c := benchAgents(b, h, 1)[0]
	tok := c.token()
	req, _ := http.NewRequest("POST", ExchangePath, nil)
	req.Header.Set("Authorization", "Bearer "+tok)
	b.ResetTimer()
	cpu := cpuTime()
	for b.Loop() {
		if _, err := h.svc.authenticate(req); err != nil {
			b.Fatal(err)
		}
	}
	reportCPU(b, cpu, "checks/s")
}
