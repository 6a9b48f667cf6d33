package main

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"debug/elf"
	"encoding/hex"
	"encoding/json"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"
)

// TestBuild builds the image and reads the tarball as a runtime would,
// without go-containerregistry: oci-layout and index.json name one image
// (by DefaultRef, in containerd's and the OCI spec's annotations); every
// blob has the digest it is named by; the manifest's config has the
// entrypoint, OS and architecture; the one layer holds both binaries as
// static executables for this architecture; the entrypoint installs the
// plugin as deploy/'s init container runs it, and the installed plugin
// answers CNI's VERSION.
func TestBuild(t *testing.T) {
	if testing.Short() {
		t.Skip("compiles the agent and the CNI plugin")
	}
	out := filepath.Join(t.TempDir(), "image.tar")
	if err := build(t.Context(), Options{Out: out}); err != nil {
		t.Fatal(err)
	}
	files := readTar(t, out)

	if got := string(files["oci-layout"]); !strings.Contains(got, `"imageLayoutVersion": "1.0.0"`) &&
		!strings.Contains(got, `"imageLayoutVersion":"1.0.0"`) {
		t.Errorf("oci-layout: %q", got)
	}
	type descriptor struct {
		MediaType   string            `json:"mediaType"`
		Digest      string            `json:"digest"`
		Size        int64             `json:"size"`
		Annotations map[string]string `json:"annotations"`
		Platform    *struct{ OS, Architecture string }
	}
	blob := func(d descriptor) []byte {
		t.Helper()
		hexDigest, ok := strings.CutPrefix(d.Digest, "sha256:")
		b, found := files["blobs/sha256/"+hexDigest]
		if !ok || !found {
			t.Fatalf("no blob %s", d.Digest)
		}
		if sum := sha256.Sum256(b); hex.EncodeToString(sum[:]) != hexDigest || int64(len(b)) != d.Size {
			t.Fatalf("blob %s: sha256 %x, %d bytes, want %d", d.Digest, sum, len(b), d.Size)
		}
		return b
	}
	decode := func(what string, b []byte, v any) {
		t.Helper()
		if err := json.Unmarshal(b, v); err != nil {
			t.Fatalf("%s: %v\n%s", what, err, b)
		}
	}

	var index struct {
		SchemaVersion int          `json:"schemaVersion"`
		MediaType     string       `json:"mediaType"`
		Manifests     []descriptor `json:"manifests"`
	}
	decode("index.json", files["index.json"], &index)
	if index.SchemaVersion != 2 || index.MediaType != "application/vnd.oci.image.index.v1+json" || len(index.Manifests) != 1 {
		t.Fatalf("index.json: %s", files["index.json"])
	}
	m := index.Manifests[0]
	if m.MediaType != "application/vnd.oci.image.manifest.v1+json" ||
		m.Annotations["io.containerd.image.name"] != DefaultRef ||
		m.Annotations["org.opencontainers.image.ref.name"] != "dev" ||
		m.Platform == nil || m.Platform.OS != "linux" || m.Platform.Architecture != runtime.GOARCH {
		t.Errorf("index.json's manifest: %+v", m)
	}

	var manifest struct {
		MediaType string       `json:"mediaType"`
		Config    descriptor   `json:"config"`
		Layers    []descriptor `json:"layers"`
	}
	decode("manifest", blob(m), &manifest)
	if manifest.Config.MediaType != "application/vnd.oci.image.config.v1+json" || len(manifest.Layers) != 1 ||
		manifest.Layers[0].MediaType != "application/vnd.oci.image.layer.v1.tar+gzip" {
		t.Fatalf("manifest: %+v", manifest)
	}
	var config struct {
		OS           string `json:"os"`
		Architecture string `json:"architecture"`
		Config       struct{ Entrypoint []string }
		RootFS       struct {
			DiffIDs []string `json:"diff_ids"`
		} `json:"rootfs"`
	}
	decode("config", blob(manifest.Config), &config)
	if config.OS != "linux" || config.Architecture != runtime.GOARCH ||
		!slices.Equal(config.Config.Entrypoint, []string{AgentPath}) || len(config.RootFS.DiffIDs) != 1 {
		t.Errorf("config: %s", blob(manifest.Config))
	}

	gz, err := gzip.NewReader(bytes.NewReader(blob(manifest.Layers[0])))
	if err != nil {
		t.Fatal(err)
	}
	tarBytes, err := io.ReadAll(gz)
	if err != nil {
		t.Fatal(err)
	}
	if sum := sha256.Sum256(tarBytes); "sha256:"+hex.EncodeToString(sum[:]) != config.RootFS.DiffIDs[0] {
		t.Errorf("layer's diff ID %x, config says %s", sum, config.RootFS.DiffIDs[0])
	}
	layer := readTarFrom(t, bytes.NewReader(tarBytes))
	for _, p := range []string{AgentPath, PluginPath} {
		f, ok := layer[strings.TrimPrefix(p, "/")]
		if !ok {
			t.Errorf("layer has no %s: %v", p, slices.Sorted(keys(layer)))
			continue
		}
		if f.mode != 0o755 {
			t.Errorf("%s: mode %o", p, f.mode)
		}
		e, err := elf.NewFile(bytes.NewReader(f.data))
		if err != nil {
			t.Errorf("%s: %v", p, err)
			continue
		}
		if e.Type != elf.ET_EXEC || slices.ContainsFunc(e.Progs, func(p *elf.Prog) bool { return p.Type == elf.PT_INTERP }) {
			t.Errorf("%s: not a static executable (type %v)", p, e.Type)
		}
	}
	if runtime.GOOS == "linux" && !t.Failed() {
		runInit(t, layer)
	}
}

// runInit runs the image's entrypoint as deploy/'s init container does,
// with the files of layer under a root of its own, and then the plugin it
// installed, as the container runtime would (CNI_COMMAND=VERSION).
func runInit(t *testing.T, layer map[string]tarFile) {
	root := t.TempDir()
	for name, f := range layer {
		p := filepath.Join(root, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, f.data, os.FileMode(f.mode)); err != nil {
			t.Fatal(err)
		}
	}
	hostBin := t.TempDir() // the node's /opt/cni/bin
	cmd := exec.Command(filepath.Join(root, AgentPath), "--install-cni-plugin="+hostBin, "--cni-plugin="+filepath.Join(root, PluginPath))
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("init container: %v\n%s", err, out)
	}
	cmd = exec.Command(filepath.Join(hostBin, "hostrouting"))
	cmd.Env = []string{"CNI_COMMAND=VERSION"}
	cmd.Stdin = strings.NewReader(`{"cniVersion":"1.0.0"}`)
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "supportedVersions") {
		t.Errorf("installed plugin, CNI_COMMAND=VERSION: %v\n%s", err, out)
	}
}

type tarFile struct {
	mode int64
	data []byte
}

func keys[M ~map[string]V, V any](m M) func(func(string) bool) {
	return func(yield func(string) bool) {
		for k := range m {
			if !yield(k) {
				return
			}
		}
	}
}

// readTar returns the regular files of the tarball path.
func readTar(t *testing.T, path string) map[string][]byte {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	out := map[string][]byte{}
	for name, tf := range readTarFrom(t, f) {
		out[name] = tf.data
	}
	return out
}

// readTarFrom returns the regular files of the tar stream r.
func readTarFrom(t *testing.T, r io.Reader) map[string]tarFile {
	t.Helper()
	tr := tar.NewReader(r)
	out := map[string]tarFile{}
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return out
		}
		if err != nil {
			t.Fatal(err)
		}
		if h.Typeflag != tar.TypeReg {
			continue
		}
		b, err := io.ReadAll(tr)
		if err != nil {
			t.Fatal(err)
		}
		out[h.Name] = tarFile{h.Mode, b}
	}
}
