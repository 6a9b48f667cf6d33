// Command image builds the agent's container image without a Docker
// daemon: it compiles hostrouting-agent (this module) and the CNI plugin
// hostrouting (examples/cni-hostrouting) as static binaries and writes an
// OCI image layout, as one tarball, holding an image of one layer:
//
//	/usr/local/bin/hostrouting-agent   the entrypoint
//	/opt/cni/bin/hostrouting           copied to the node by --install-cni-plugin
//
// The image has no base: no shell, no libc. Run it from this module:
//
//	go -C examples/agent run ./cmd/image -o hostrouting-agent.tar
//	kind load image-archive hostrouting-agent.tar
//
// index.json names the image (-ref) with the annotations containerd
// (io.containerd.image.name, which `ctr images import` and `kind load
// image-archive` read) and the OCI spec (org.opencontainers.image.ref.name)
// define; skopeo, crane and podman read the layout as well.
package main

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// Paths of the binaries in the image.
const (
	AgentPath  = "/usr/local/bin/hostrouting-agent"
	PluginPath = "/opt/cni/bin/hostrouting"
)

// DefaultRef is the image the manifests in deploy/ run.
const DefaultRef = "ghcr.io/hostrouting/hostrouting-agent:dev"

// Options say what build builds.
type Options struct {
	Out    string // the tarball to write
	Ref    string // the image's name in index.json; default DefaultRef
	Arch   string // GOARCH of the binaries and the image; default this one's
	Module string // the agent module's directory (examples/agent); default the one `go` finds from the working directory
}

func main() {
	var o Options
	flag.StringVar(&o.Out, "o", "hostrouting-agent.tar", "OCI layout tarball to write")
	flag.StringVar(&o.Ref, "ref", DefaultRef, "image reference to name the image with")
	flag.StringVar(&o.Arch, "arch", runtime.GOARCH, "GOARCH of the binaries and the image")
	flag.Parse()
	if err := build(context.Background(), o); err != nil {
		fmt.Fprintln(os.Stderr, "image:", err)
		os.Exit(1)
	}
}

// build compiles both binaries and writes the OCI layout tarball o.Out.
func build(ctx context.Context, o Options) error {
	if o.Ref == "" {
		o.Ref = DefaultRef
	}
	if o.Arch == "" {
		o.Arch = runtime.GOARCH
	}
	ref, err := name.ParseReference(o.Ref)
	if err != nil {
		return fmt.Errorf("image reference: %w", err)
	}
	if o.Module == "" {
		out, err := exec.CommandContext(ctx, "go", "list", "-m", "-f", "{{.Dir}}").Output()
		if err != nil {
			return fmt.Errorf("find the agent module: %w", err)
		}
		o.Module = strings.TrimSpace(string(out))
	}
	tmp, err := os.MkdirTemp("", "hostrouting-image-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)

	files := []struct{ src, dst string }{
		{o.Module, AgentPath},
		{filepath.Join(o.Module, "..", "cni-hostrouting"), PluginPath},
	}
	var layer bytes.Buffer
	tw := tar.NewWriter(&layer)
	dirs := map[string]bool{}
	for i, f := range files {
		bin := filepath.Join(tmp, fmt.Sprint(i))
		cmd := exec.CommandContext(ctx, "go", "-C", f.src, "build", "-trimpath", "-ldflags=-s -w", "-o", bin, ".")
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH="+o.Arch)
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("build %s: %w\n%s", f.src, err, out)
		}
		if err := addFile(tw, dirs, f.dst, bin); err != nil {
			return err
		}
	}
	if err := tw.Close(); err != nil {
		return err
	}
	l, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(layer.Bytes())), nil
	}, tarball.WithMediaType(types.OCILayer))
	if err != nil {
		return fmt.Errorf("make layer: %w", err)
	}

	img := mutate.MediaType(empty.Image, types.OCIManifestSchema1)
	img = mutate.ConfigMediaType(img, types.OCIConfigJSON)
	if img, err = mutate.AppendLayers(img, l); err != nil {
		return fmt.Errorf("add layer: %w", err)
	}
	cfg, err := img.ConfigFile()
	if err != nil {
		return err
	}
	cfg = cfg.DeepCopy()
	cfg.OS, cfg.Architecture = "linux", o.Arch
	cfg.Created = v1.Time{Time: time.Unix(0, 0).UTC()} // reproducible
	cfg.Config.Entrypoint = []string{AgentPath}
	cfg.Config.Labels = map[string]string{"org.opencontainers.image.source": "https://github.com/hostrouting/hostrouting"}
	if img, err = mutate.ConfigFile(img, cfg); err != nil {
		return fmt.Errorf("set image config: %w", err)
	}

	dir := filepath.Join(tmp, "layout")
	p, err := layout.Write(dir, mutate.IndexMediaType(empty.Index, types.OCIImageIndex))
	if err != nil {
		return fmt.Errorf("write layout: %w", err)
	}
	err = p.AppendImage(img, layout.WithAnnotations(map[string]string{
		"io.containerd.image.name":          ref.Name(),
		"org.opencontainers.image.ref.name": ref.Identifier(),
	}), layout.WithPlatform(v1.Platform{OS: "linux", Architecture: o.Arch}))
	if err != nil {
		return fmt.Errorf("write image: %w", err)
	}
	return writeTar(o.Out, dir)
}

// addFile adds the executable src to tw at path dst, with the directories
// above it that dirs does not hold yet.
func addFile(tw *tar.Writer, dirs map[string]bool, dst, src string) error {
	rel := strings.TrimPrefix(dst, "/")
	var parents []string
	for d := filepath.Dir(rel); d != "."; d = filepath.Dir(d) {
		parents = append([]string{d}, parents...)
	}
	for _, d := range parents {
		if dirs[d] {
			continue
		}
		dirs[d] = true
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: d + "/", Mode: 0o755, Format: tar.FormatPAX}); err != nil {
			return err
		}
	}
	b, err := os.ReadFile(src)
	if err != nil {
		return err
	}
	if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: rel, Mode: 0o755, Size: int64(len(b)), Format: tar.FormatPAX}); err != nil {
		return err
	}
	_, err = tw.Write(b)
	return err
}

// writeTar writes the files under dir into the tarball out, written
// whole or not at all.
func writeTar(out, dir string) (err error) {
	f, err := os.CreateTemp(filepath.Dir(out), ".image-*.tar")
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(f.Name())
		}
	}()
	tw := tar.NewWriter(f)
	err = filepath.WalkDir(dir, func(path string, d os.DirEntry, err error) error {
		if err != nil || path == dir {
			return err
		}
		rel, err := filepath.Rel(dir, path)
		if err != nil {
			return err
		}
		if d.IsDir() {
			return tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: rel + "/", Mode: 0o755})
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: rel, Mode: 0o644, Size: int64(len(b))}); err != nil {
			return err
		}
		_, err = tw.Write(b)
		return err
	})
	if err = errors.Join(err, tw.Close(), f.Close()); err != nil {
		return fmt.Errorf("write %s: %w", out, err)
	}
	return os.Rename(f.Name(), out)
}
