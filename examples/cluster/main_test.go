package main

import (
	"bytes"
	"context"
	"io"
	"path/filepath"
	"regexp"
	"testing"

	"github.com/hostrouting/hostrouting/datapath/datapathtest"
	"github.com/hostrouting/hostrouting/internal/leakcheck"
	"github.com/hostrouting/hostrouting/loader"
)

// names are how the demo names its namespaces and pin directories.
var names = leakcheck.Names{Netns: "hr-cluster-", Pins: filepath.Join(loader.DefaultBPFFS, "hostrouting-cluster-")}

// TestCluster runs the demo: every curl of the ClusterIP from the client
// pod and of each node's NodePort from outside is answered by a web pod,
// the node's datapath holds the service as the API has it, and nothing is
// left behind.
func TestCluster(t *testing.T) {
	datapathtest.RequireRoot(t)
	r := names.Start(t)
	var out bytes.Buffer
	err := run(t.Context(), options{Curls: 6, ID: r.ID}, &out)
	t.Logf("output:\n%s", &out)
	if err != nil {
		t.Fatal(err)
	}
	r.Check(t)
	web := `web-kind-(control-plane|worker|worker2) \(10\.0\.[0-2]\.\d+\)`
	for _, c := range []struct {
		re   string
		want int
	}{
		{`(?m)^  curl http://10\.96\.\d+\.\d+/  →  ` + web + `$`, 6},
		{`(?m)^  curl http://172\.18\.0\.[2-4]:32000/  →  ` + web + `$`, 3},
		{`(?m)^  \d+ +0\.0\.0\.0:32000/TCP +NodePort +1 => 10\.0\.0\.\d+:8080/TCP \(active\)$`, 1},
		{`(?m)^ +3 => 10\.0\.2\.\d+:8080/TCP \(active\)$`, 2},
	} {
		if n := len(regexp.MustCompile(c.re).FindAllString(out.String(), -1)); n != c.want {
			t.Errorf("%d lines match %s, want %d", n, c.re, c.want)
		}
	}
}

// TestClusterCancel stops the demo as Ctrl-C would, just before the
// curls, and checks that it still removes everything.
func TestClusterCancel(t *testing.T) {
	datapathtest.RequireRoot(t)
	names.CheckInterrupt(t, "Curling", func(ctx context.Context, id string, out io.Writer) error {
		return run(ctx, options{ID: id}, out)
	})
}
