package broker

import (
	"github.com/fieldtrust/fieldtrust/internal/tacs/tacstest"

	"context"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"
)

// mosquittoTools finds Debian's mosquitto clients. Missing tools fail the
// test under CI (CI set) and skip it elsewhere.
func mosquittoTools(t *testing.T) (pub, sub string) {
	t.Helper()
	pub, errPub := exec.LookPath("mosquitto_pub")
	sub, errSub := exec.LookPath("mosquitto_sub")
	if errPub != nil || errSub != nil {
		msg := "mosquitto_pub/mosquitto_sub not found (apt-get install -y mosquitto-clients)"
		if os.Getenv("CI") != "" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	return pub, sub
}

// TestMosquittoClients runs part of the thesis table with an independent
// MQTT implementation: mosquitto_sub subscribes, and we check it receives a
// probe only when the subscription is allowed.
func TestMosquittoClients(t *testing.T) {
	pubBin, subBin := mosquittoTools(t)
	e := newEnv(t)
	dir := t.TempDir()
	ca := e.pki.writeRoot(t, dir)
	host, port, _ := strings.Cut(e.b.Addr(), ":")
	admin := e.v5(e.pki.service("admin"))

	rows := tacstest.ThesisTable
	for i, r := range rows {
		t.Run(r.Identity+"→"+r.Request, func(t *testing.T) {
			cert, key := writePEM(t, dir, "id"+strconv.Itoa(i), e.pki.identity(r.Identity))
			ctx, cancel := context.WithTimeout(context.Background(), wait)
			defer cancel()
			// -C 1: exit after one message; -W: bounded wait.
			args := []string{"-h", host, "-p", port, "--cafile", ca, "--cert", cert, "--key", key,
				"-V", "mqttv311", "-t", r.Request, "-q", "1", "-C", "1", "-W", "8", "-v"}
			if !r.Allowed {
				// A refused row also listens on its own subtree, so it
				// has something to exit on.
				args = append(args, "-t", r.Identity+"/fence")
			}
			cmd := exec.CommandContext(ctx, subBin, args...)
			var out strings.Builder
			cmd.Stdout, cmd.Stderr = &out, &out
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			// Publish until the subscriber is ready: it exits on its
			// first message, which is the probe if allowed, else the
			// fence in its own subtree.
			probe := probeTopic(r.Request)
			doneCh := make(chan error, 1)
			go func() { doneCh <- cmd.Wait() }()
			var err error
		loop:
			for {
				admin.publish(t, probe, "probe", 1, false)
				if !r.Allowed {
					admin.publish(t, r.Identity+"/fence", "fence", 1, false)
				}
				select {
				case err = <-doneCh:
					break loop
				case <-time.After(100 * time.Millisecond):
				}
			}
			if err != nil {
				t.Fatalf("mosquitto_sub: %v\n%s", err, out.String())
			}
			gotProbe := strings.HasPrefix(out.String(), probe+" probe")
			if gotProbe != r.Allowed {
				t.Fatalf("mosquitto_sub output %q; want probe delivered=%v", out.String(), r.Allowed)
			}
		})
	}

	// mosquitto_pub: own topic accepted, foreign topic refused.
	cert, key := writePEM(t, dir, "pub", e.pki.identity("ms-acc-1/acc-1/dev-1"))
	admin.subscribe(t, "ms-acc-1/acc-1/dev-1/events", 1)
	run := func(topic string) error {
		ctx, cancel := context.WithTimeout(context.Background(), wait)
		defer cancel()
		return exec.CommandContext(ctx, pubBin, "-h", host, "-p", port, "--cafile", ca, "--cert", cert, "--key", key,
			"-V", "mqttv5", "-t", topic, "-m", "hello", "-q", "1").Run()
	}
	if err := run("ms-acc-1/acc-1/dev-1/events"); err != nil {
		t.Fatalf("mosquitto_pub own topic: %v", err)
	}
	admin.expect(t, "ms-acc-1/acc-1/dev-1/events", "hello")
	// mosquitto_pub exits 0 even on a "not authorized" PUBACK, so check
	// the effect: nothing arrives, and the refusal is counted.
	admin.subscribe(t, "ms-acc-1/acc-1/dev-2/events", 1)
	before := counter(t, e, "publish", "foreign_topic")
	_ = run("ms-acc-1/acc-1/dev-2/events")
	admin.subscribe(t, "ms-acc-9/fence", 1)
	fence(t, admin, admin, "ms-acc-9/fence")
	if n := counter(t, e, "publish", "foreign_topic"); n != before+1 {
		t.Fatalf("foreign publish refusals %v → %v; want +1", before, n)
	}
}
