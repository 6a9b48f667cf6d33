package kube

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"time"

	"golang.org/x/sys/unix"
)

// BinEnv names the environment variable that points Build at a directory of
// prebuilt etcd and kube-apiserver binaries instead of building them.
const BinEnv = "HOSTROUTING_KUBE_BIN"

// binaries maps each binary's file name to its main package in the
// build recipe, internal/kube/build.
var binaries = map[string]string{
	"etcd":           "go.etcd.io/etcd/server/v3",
	"kube-apiserver": "k8s.io/kubernetes/cmd/kube-apiserver",
}

// ldflags strips the binaries and sets the version kube-apiserver reports,
// which `go build` cannot take from k8s.io/kubernetes' module version.
const ldflags = "-s -w" +
	" -X k8s.io/component-base/version.gitVersion=v1.37.2" +
	" -X k8s.io/component-base/version.gitMajor=1" +
	" -X k8s.io/component-base/version.gitMinor=37"

// Build returns a directory holding the etcd and kube-apiserver binaries:
// $HOSTROUTING_KUBE_BIN if set, otherwise <repo>/.cache/kube/bin, built there
// from the recipe in internal/kube/build unless already built from the same
// recipe. The first build takes about 12 minutes on two cores; later calls
// return at once. Concurrent callers, in this process or others, wait for
// one build (a flock on .cache/kube/lock), and each binary appears by rename,
// so a killed build leaves none half-written.
//
// Build needs the repository's source tree and a Go toolchain on $PATH;
// elsewhere (a module cache holds no nested modules) set HOSTROUTING_KUBE_BIN.
func Build(ctx context.Context) (string, error) {
	if dir := os.Getenv(BinEnv); dir != "" {
		for name := range binaries {
			if _, err := os.Stat(filepath.Join(dir, name)); err != nil {
				return "", fmt.Errorf("%s: %w", BinEnv, err)
			}
		}
		return dir, nil
	}
	_, file, _, ok := runtime.Caller(0)
	if !ok || !filepath.IsAbs(file) {
		return "", fmt.Errorf("find the build recipe: source path unknown (built with -trimpath?): set %s", BinEnv)
	}
	root := filepath.Join(filepath.Dir(file), "..", "..")
	recipe := filepath.Join(root, "internal", "kube", "build")
	stamp, err := recipeStamp(recipe)
	if err != nil {
		return "", fmt.Errorf("read the build recipe (outside the hostrouting repository, set %s): %w", BinEnv, err)
	}
	cache := filepath.Join(root, ".cache", "kube")
	bin := filepath.Join(cache, "bin")
	if built(bin, stamp) {
		return bin, nil
	}
	if err := os.MkdirAll(bin, 0o755); err != nil {
		return "", fmt.Errorf("make %s: %w", bin, err)
	}
	unlock, err := lock(ctx, filepath.Join(cache, "lock"))
	if err != nil {
		return "", err
	}
	defer unlock()
	if built(bin, stamp) { // by another process while this one waited
		return bin, nil
	}
	fmt.Fprintf(os.Stderr, "building etcd and kube-apiserver into %s: about 12 minutes the first time\n", bin)
	start := time.Now()
	for name, pkg := range binaries {
		tmp := filepath.Join(bin, fmt.Sprintf(".%s.%d", name, os.Getpid()))
		cmd := exec.CommandContext(ctx, "go", "build", "-C", recipe, "-trimpath", "-buildvcs=false",
			"-ldflags", ldflags, "-o", tmp, pkg)
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOWORK=off")
		if out, err := cmd.CombinedOutput(); err != nil {
			os.Remove(tmp)
			return "", fmt.Errorf("build %s: %w\n%s", name, err, out)
		}
		if err := os.Rename(tmp, filepath.Join(bin, name)); err != nil {
			return "", fmt.Errorf("install %s: %w", name, err)
		}
	}
	if err := os.WriteFile(filepath.Join(bin, "stamp"), []byte(stamp), 0o644); err != nil {
		return "", fmt.Errorf("write build stamp: %w", err)
	}
	fmt.Fprintf(os.Stderr, "built etcd and kube-apiserver in %s\n", time.Since(start).Round(time.Second))
	return bin, nil
}

// recipeStamp identifies what the binaries are built from: the recipe's
// go.mod and go.sum and the build flags.
func recipeStamp(recipe string) (string, error) {
	h := sha256.New()
	for _, name := range []string{"go.mod", "go.sum"} {
		b, err := os.ReadFile(filepath.Join(recipe, name))
		if err != nil {
			return "", err
		}
		h.Write(b)
	}
	h.Write([]byte(ldflags))
	return hex.EncodeToString(h.Sum(nil)) + "\n", nil
}

// built reports whether bin holds both binaries, built from the recipe that
// stamp identifies.
func built(bin, stamp string) bool {
	if b, err := os.ReadFile(filepath.Join(bin, "stamp")); err != nil || string(b) != stamp {
		return false
	}
	for name := range binaries {
		if _, err := os.Stat(filepath.Join(bin, name)); err != nil {
			return false
		}
	}
	return true
}

// lock takes an exclusive flock on path, polling so that ctx can end the
// wait, and returns its release.
func lock(ctx context.Context, path string) (func(), error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, fmt.Errorf("open build lock: %w", err)
	}
	for {
		err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
		if err == nil {
			return func() { f.Close() }, nil
		}
		if !errors.Is(err, unix.EWOULDBLOCK) {
			f.Close()
			return nil, fmt.Errorf("lock %s: %w", path, err)
		}
		select {
		case <-ctx.Done():
			f.Close()
			return nil, fmt.Errorf("wait for another build (%s): %w", path, ctx.Err())
		case <-time.After(time.Second):
		}
	}
}
