package loadtest

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Target is a broker under test.
type Target interface {
	Label() string
	Address() string
	// RSS returns the broker process's resident set size in bytes.
	RSS() (int64, error)
}

// Broker is a broker process under test.
type Broker struct {
	Name string
	Addr string // host:port on loopback
	// DebugAddr serves pprof and /debug/memory (brokerd -debug-addr).
	DebugAddr string
	cmd       *exec.Cmd
	done      chan error
	log       *os.File
	// again starts the same broker on the same state (Restart).
	again func(ctx context.Context) (*Broker, error)
}

// Restart stops the broker cleanly (SIGTERM: Mosquitto saves its
// persistence file, ours closes its journal) and starts it again on the
// same state; the address may change.
func (b *Broker) Restart(ctx context.Context, timeout time.Duration) error {
	if err := b.Stop(timeout); err != nil {
		return err
	}
	nb, err := b.again(ctx)
	if err != nil {
		return err
	}
	name := b.Name
	*b = *nb
	b.Name = name
	return nil
}

func (b *Broker) Label() string   { return b.Name }
func (b *Broker) Address() string { return b.Addr }

// PID returns the broker's process ID.
func (b *Broker) PID() int { return b.cmd.Process.Pid }

// RSS returns the broker's resident set size in bytes (VmRSS).
func (b *Broker) RSS() (int64, error) { return rss(b.PID()) }

// Stop asks the broker to stop (SIGTERM) and waits for it, killing it
// after timeout.
func (b *Broker) Stop(timeout time.Duration) error {
	_ = b.cmd.Process.Signal(syscall.SIGTERM)
	var err error
	select {
	case err = <-b.done:
	case <-time.After(timeout):
		_ = b.cmd.Process.Kill()
		err = <-b.done
		err = fmt.Errorf("%s did not stop within %v, killed: %w", b.Name, timeout, err)
	}
	_ = b.log.Close()
	var exit *exec.ExitError
	if errors.As(err, &exit) && exit.Sys().(syscall.WaitStatus).Signaled() {
		err = nil // mosquitto may report SIGTERM as its exit cause
	}
	return err
}

// BuildBrokerd compiles cmd/brokerd into dir and returns the binary's path.
func BuildBrokerd(ctx context.Context, dir string) (string, error) {
	bin := filepath.Join(dir, "brokerd")
	cmd := exec.CommandContext(ctx, "go", "build", "-o", bin, "github.com/fieldtrust/fieldtrust/internal/broker/loadtest/cmd/brokerd")
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build brokerd: %w\n%s", err, out)
	}
	return bin, nil
}

// StartFieldtrust runs brokerd (our broker) with its state under dir.
// cpuProfile, if set, receives a CPU profile of the broker process.
// extra are further brokerd flags (e.g. -debug-addr).
func StartFieldtrust(ctx context.Context, bin string, p *PKI, dir, cpuProfile string, extra ...string) (*Broker, error) {
	args := []string{"-root", p.RootFile, "-services", p.ServicesFile, "-cert", p.ServerCertFile,
		"-key", p.ServerKeyFile, "-state", filepath.Join(dir, "state"), "-addr", "127.0.0.1:0"}
	if cpuProfile != "" {
		args = append(args, "-cpuprofile", cpuProfile)
	}
	args = append(args, extra...)
	return startBrokerd(ctx, bin, dir, args)
}

func startBrokerd(ctx context.Context, bin, dir string, args []string) (*Broker, error) {
	cmd := exec.Command(bin, args...)
	b := &Broker{Name: "fieldtrust", cmd: cmd, done: make(chan error, 1),
		again: func(ctx context.Context) (*Broker, error) { return startBrokerd(ctx, bin, dir, args) }}
	stdin, err := cmd.StdinPipe() // closed when we exit: brokerd then stops
	if err != nil {
		return nil, err
	}
	_ = stdin
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if b.log, err = os.OpenFile(filepath.Join(dir, "brokerd.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644); err != nil {
		return nil, err
	}
	cmd.Stderr = b.log
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	addr := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			if a, ok := strings.CutPrefix(sc.Text(), "DEBUG "); ok {
				b.DebugAddr = a // before ADDR, which the receive below waits for
			}
			if a, ok := strings.CutPrefix(sc.Text(), "ADDR "); ok {
				addr <- a
			}
		}
	}()
	go func() { b.done <- cmd.Wait() }()
	select {
	case b.Addr = <-addr:
		return b, nil
	case err := <-b.done:
		return nil, fmt.Errorf("brokerd exited: %v (log %s)", err, b.log.Name())
	case <-time.After(30 * time.Second):
		_ = cmd.Process.Kill()
		return nil, errors.New("brokerd did not report its address")
	case <-ctx.Done():
		_ = cmd.Process.Kill()
		return nil, ctx.Err()
	}
}

// Memory reads brokerd's runtime/metrics memory classes; query "gc=1"
// collects first, "free=1" also returns free memory to the OS. It needs
// -debug-addr.
func (b *Broker) Memory(ctx context.Context, query string) (MemoryClasses, error) {
	if b.DebugAddr == "" {
		return nil, errors.New(b.Name + ": started without -debug-addr")
	}
	u := "http://" + b.DebugAddr + "/debug/memory?" + query
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, fmt.Errorf("%s memory: %w", b.Name, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return nil, fmt.Errorf("%s memory: %w", b.Name, err)
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("%s memory: %s", b.Name, resp.Status)
	}
	return ParseMemoryClasses(string(body))
}

// MosquittoOptions are the settings that differ between runs.
type MosquittoOptions struct {
	Persistence bool
}

// MosquittoConfig returns a mosquitto.conf equivalent to our broker's
// policy: mutual TLS against the same root, TLS 1.2 or newer, the client
// certificate's CN as the username, and an ACL granting each identity its
// own subtree (TACS rule 4, "PATH/#").
func MosquittoConfig(port int, p *PKI, dir string, o MosquittoOptions) string {
	var b strings.Builder
	w := func(format string, a ...any) { fmt.Fprintf(&b, format+"\n", a...) }
	w("# generated by internal/broker/loadtest")
	w("user root") // keep the privileges needed to read the temporary key files
	w("per_listener_settings false")
	w("allow_anonymous false")
	w("persistence %t", o.Persistence)
	if o.Persistence {
		w("persistence_location %s/", dir)
	}
	w("log_dest stderr")
	w("log_type error")
	w("log_type warning")
	w("set_tcp_nodelay true")
	w("max_inflight_messages 1024") // mochi: receive maximum 1024
	w("max_queued_messages 100000")
	w("max_packet_size 1048576") // our MaxPacketSize
	w("acl_file %s", filepath.Join(dir, "acl"))
	w("listener %d 127.0.0.1", port)
	w("cafile %s", p.RootFile)
	w("certfile %s", p.ServerCertFile)
	w("keyfile %s", p.ServerKeyFile)
	w("require_certificate true")
	w("use_identity_as_username true")
	w("tls_version tlsv1.2") // the minimum; clients negotiate 1.3 as with our broker
	return b.String()
}

// MosquittoACL is the ACL file: every identity reads and writes its own
// subtree and reads pki/crl/# (TACS rules 4 and 3); the admin service
// writes pki/crl/# (its grant).
const MosquittoACL = "pattern readwrite %u/#\npattern read pki/crl/#\n\nuser " + AdminService + "\ntopic readwrite pki/crl/#\n"

// StartMosquitto runs Debian's mosquitto with a generated configuration
// on a free loopback port.
func StartMosquitto(ctx context.Context, bin string, p *PKI, dir string, o MosquittoOptions) (*Broker, error) {
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	conf := filepath.Join(dir, "mosquitto.conf")
	if err := os.WriteFile(filepath.Join(dir, "acl"), []byte(MosquittoACL), 0o600); err != nil {
		return nil, err
	}
	if err := os.WriteFile(conf, []byte(MosquittoConfig(port, p, dir, o)), 0o600); err != nil {
		return nil, err
	}
	cmd := exec.Command(bin, "-c", conf)
	b := &Broker{Name: "mosquitto", Addr: net.JoinHostPort("127.0.0.1", strconv.Itoa(port)), cmd: cmd, done: make(chan error, 1),
		again: func(ctx context.Context) (*Broker, error) { return StartMosquitto(ctx, bin, p, dir, o) }}
	if b.log, err = os.OpenFile(filepath.Join(dir, "mosquitto.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644); err != nil {
		return nil, err
	}
	cmd.Stdout, cmd.Stderr = b.log, b.log
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	go func() { b.done <- cmd.Wait() }()
	deadline := time.Now().Add(30 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", b.Addr, time.Second)
		if err == nil {
			_ = c.Close()
			return b, nil
		}
		select {
		case err := <-b.done:
			out, _ := os.ReadFile(b.log.Name())
			return nil, fmt.Errorf("mosquitto exited: %v\n%s", err, out)
		case <-ctx.Done():
			_ = cmd.Process.Kill()
			return nil, ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			_ = cmd.Process.Kill()
			return nil, errors.New("mosquitto did not start listening")
		}
	}
}

// MosquittoVersion returns mosquitto's version line.
func MosquittoVersion(bin string) string {
	out, _ := exec.Command(bin, "-h").CombinedOutput()
	line, _, _ := strings.Cut(string(out), "\n")
	return strings.TrimSpace(line)
}

func freePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

// RSS reads VmRSS of process pid (0: this process).
func RSS(pid int) (int64, error) { return rss(pid) }

// rss reads VmRSS from /proc/PID/status.
func rss(pid int) (int64, error) {
	file := "/proc/self/status"
	if pid != 0 {
		file = fmt.Sprintf("/proc/%d/status", pid)
	}
	data, err := os.ReadFile(file)
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			f := strings.Fields(v)
			if len(f) != 2 || f[1] != "kB" {
				return 0, fmt.Errorf("unexpected VmRSS line %q", line)
			}
			kb, err := strconv.ParseInt(f[0], 10, 64)
			return kb * 1024, err
		}
	}
	return 0, errors.New("no VmRSS in /proc status")
}
