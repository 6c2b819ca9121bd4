package loadgen_test

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/fieldtrust/fieldtrust/internal/loadgen"
)

// The benchmark's publishers stand for 200 gateways, whose CPU is not the
// platform's. With FIELDTRUST_E2E_PUBLISHERS=process (the default) they run
// in a child process (this test binary again, TestPublisherProcess), so the
// platform's CPU, heap and profile are its own; =inprocess runs them on
// goroutines of the test process as before.

// publisherJob is what the child needs: the broker, the bounds and each
// gateway's identity and file of sealed envelopes.
type publisherJob struct {
	Broker string
	Window int
	Ahead  int
	Roots  string // PEM
	Feeds  []publisherFeed
}

type publisherFeed struct {
	Path, File string
	Cert, Key  string // PEM: the chain, the PKCS #8 key
}

// fleet is the publishers as the measured phase drives them.
type fleet interface {
	// Release lets the fleet publish n more (Publisher.Release).
	Release(n int)
	// Published returns the publishes the broker acknowledged.
	Published() int64
}

// publisherProcess is a child process publishing a job. Release and
// Published go over its stdin and stdout, one number per line.
type publisherProcess struct {
	cmd       *exec.Cmd
	stdin     io.WriteCloser
	mu        sync.Mutex // serializes writes to stdin
	published atomic.Int64
	exited    chan struct{}
	err       error // set before exited is closed
}

// startPublisherProcess writes the job and starts the child. The child is
// killed when ctx ends.
func startPublisherProcess(ctx context.Context, t *testing.T, job publisherJob) *publisherProcess {
	t.Helper()
	b, err := json.Marshal(job)
	if err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(t.TempDir(), "publisher-job.json")
	if err := os.WriteFile(file, b, 0o600); err != nil {
		t.Fatal(err)
	}
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.CommandContext(ctx, exe, "-test.run", "^TestPublisherProcess$", "-test.count", "1", "-test.timeout", "0")
	cmd.Env = append(os.Environ(), "FIELDTRUST_E2E_PUBLISHER_JOB="+file, "FIELDTRUST_E2E_BENCH=", "FIELDTRUST_E2E_CPUPROFILE=")
	cmd.Stderr = os.Stderr
	p := &publisherProcess{cmd: cmd, exited: make(chan struct{})}
	if p.stdin, err = cmd.StdinPipe(); err != nil {
		t.Fatal(err)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start the publisher process: %v", err)
	}
	go func() {
		var result string
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			line := sc.Text()
			if n, ok := strings.CutPrefix(line, "published "); ok {
				if v, err := strconv.ParseInt(n, 10, 64); err == nil {
					p.published.Store(v)
				}
			} else if r, ok := strings.CutPrefix(line, "result "); ok {
				result = r
			}
		}
		err := cmd.Wait()
		switch {
		case result != "ok" && result != "":
			p.err = errors.New(result)
		case err != nil:
			p.err = fmt.Errorf("publisher process: %w", err)
		case result == "":
			p.err = errors.New("publisher process ended without a result")
		}
		close(p.exited)
	}()
	return p
}

func (p *publisherProcess) Release(n int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	fmt.Fprintf(p.stdin, "%d\n", n) // a failed write means the child is gone, which wait reports
}

func (p *publisherProcess) Published() int64 { return p.published.Load() }

// wait returns when the child exits, with its error.
func (p *publisherProcess) wait() error {
	<-p.exited
	return p.err
}

// cpu returns the CPU time the child used; valid after wait.
func (p *publisherProcess) cpu() time.Duration {
	if p.cmd.ProcessState == nil {
		return 0
	}
	return p.cmd.ProcessState.UserTime() + p.cmd.ProcessState.SystemTime()
}

// jobFeed turns a gateway's feed into its job entry.
func jobFeed(t *testing.T, f loadgen.GatewayFeed) publisherFeed {
	t.Helper()
	c := f.TLS.Certificates[0]
	key, err := x509.MarshalPKCS8PrivateKey(c.PrivateKey)
	if err != nil {
		t.Fatal(err)
	}
	var chain []byte
	for _, der := range c.Certificate {
		chain = append(chain, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})...)
	}
	return publisherFeed{Path: f.Path, File: f.File, Cert: string(chain), Key: string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: key}))}
}

// TestPublisherProcess is the child: it publishes the job named by
// FIELDTRUST_E2E_PUBLISHER_JOB, taking releases from stdin and reporting
// what the broker acknowledged on stdout.
func TestPublisherProcess(t *testing.T) {
	file := os.Getenv("FIELDTRUST_E2E_PUBLISHER_JOB")
	if file == "" {
		t.Skip("the end-to-end benchmark's publisher process (started by TestEndToEnd)")
	}
	result := func(err error) {
		if err != nil {
			fmt.Printf("result %s\n", strings.ReplaceAll(err.Error(), "\n", " "))
			t.Fatal(err)
		}
		fmt.Println("result ok")
	}
	b, err := os.ReadFile(file)
	if err != nil {
		result(err)
	}
	var job publisherJob
	if err := json.Unmarshal(b, &job); err != nil {
		result(err)
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM([]byte(job.Roots)) {
		result(errors.New("no root certificates in the job"))
	}
	feeds := make([]loadgen.GatewayFeed, len(job.Feeds))
	for i, f := range job.Feeds {
		c, err := tls.X509KeyPair([]byte(f.Cert), []byte(f.Key))
		if err != nil {
			result(fmt.Errorf("gateway %s: %w", f.Path, err))
		}
		feeds[i] = loadgen.GatewayFeed{Path: f.Path, File: f.File, TLS: &tls.Config{RootCAs: roots, Certificates: []tls.Certificate{c}}}
	}
	pub := &loadgen.Publisher{Broker: job.Broker, Window: job.Window, Ahead: job.Ahead}
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	go func() { // releases; the parent closing stdin ends the run
		sc := bufio.NewScanner(os.Stdin)
		for sc.Scan() {
			if n, err := strconv.Atoi(sc.Text()); err == nil {
				pub.Release(n)
			}
		}
		cancel()
	}()
	var wg sync.WaitGroup
	done := make(chan struct{})
	wg.Go(func() {
		tick := time.NewTicker(200 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-done:
				fmt.Printf("published %d\n", pub.Published())
				return
			case <-tick.C:
				fmt.Printf("published %d\n", pub.Published())
			}
		}
	})
	err = pub.Run(ctx, feeds)
	close(done)
	wg.Wait()
	result(err)
}
