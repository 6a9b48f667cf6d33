package kube

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// stopGrace is how long a process has to exit after SIGTERM before SIGKILL.
const stopGrace = 10 * time.Second

// proc is a process started by Server.start.
type proc struct {
	name    string // etcd or kube-apiserver
	cmd     *exec.Cmd
	log     string        // its log file
	pidFile string        // Dir/<name>.pid
	done    chan struct{} // closed once it has exited and been reaped
}

// start starts bin/name with args, its output appended to Dir/name.log, and
// writes Dir/name.pid.
func (s *Server) start(name string, args ...string) (*proc, error) {
	p := &proc{name: name, log: filepath.Join(s.Dir, name+".log"),
		pidFile: filepath.Join(s.Dir, name+".pid"), done: make(chan struct{})}
	log, err := os.OpenFile(p.log, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	defer log.Close() // the process has its own copy
	p.cmd = exec.Command(filepath.Join(s.bin, name), args...)
	p.cmd.Stdout, p.cmd.Stderr = log, log
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: s.opts.Detach}
	if !s.opts.Detach {
		p.cmd.SysProcAttr.Pdeathsig = syscall.SIGKILL
	}
	started := make(chan error)
	go func() {
		defer close(p.done)
		// Pdeathsig fires when the thread that started the process exits,
		// not the whole caller, and a Go thread ends with a goroutine that
		// exits locked to it (as the netns helper's does when it cannot
		// restore the thread's namespace). Holding the thread until the
		// process has exited keeps every other goroutine off it.
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		err := p.cmd.Start()
		started <- err
		if err == nil {
			p.cmd.Wait() // its exit status is in ProcessState; its log says why
		}
	}()
	if err := <-started; err != nil {
		return nil, err
	}
	if err := os.WriteFile(p.pidFile, []byte(strconv.Itoa(p.cmd.Process.Pid)+"\n"), 0o644); err != nil {
		p.stop()
		return nil, fmt.Errorf("write pid file: %w", err)
	}
	return p, nil
}

// exited reports whether the process has exited.
func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// stop ends the process, if p is not nil and it still runs: SIGTERM, then
// SIGKILL after stopGrace. It waits for the exit and removes the pid file.
func (p *proc) stop() error {
	if p == nil {
		return nil
	}
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(stopGrace):
		p.cmd.Process.Kill()
		<-p.done
	}
	if err := os.Remove(p.pidFile); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove %s pid file: %w", p.name, err)
	}
	return nil
}

// Down stops the etcd and kube-apiserver that Start left running in dir,
// by their pid files, and removes dir. A pid whose process is gone, or is
// no longer that binary running in dir, is left alone. It works from
// another process than Start's, such as after `make kube-up`.
func Down(dir string) error {
	dir, err := filepath.Abs(dir)
	if err != nil {
		return err
	}
	for _, name := range []string{"kube-apiserver", "etcd"} {
		if err := stopByPidFile(dir, name); err != nil {
			return fmt.Errorf("stop %s: %w", name, err)
		}
	}
	if err := os.RemoveAll(dir); err != nil {
		return fmt.Errorf("remove %s: %w", dir, err)
	}
	return nil
}

// stopByPidFile stops the process dir/name.pid names if it is still name
// running in dir: SIGTERM, then SIGKILL after stopGrace, and waits until
// it is gone.
func stopByPidFile(dir, name string) error {
	b, err := os.ReadFile(filepath.Join(dir, name+".pid"))
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		return fmt.Errorf("read pid file: %w", err)
	}
	if !ours(pid, dir, name) {
		return nil
	}
	syscall.Kill(pid, syscall.SIGTERM)
	kill := time.Now().Add(stopGrace)
	for ours(pid, dir, name) {
		if !kill.IsZero() && time.Now().After(kill) {
			syscall.Kill(pid, syscall.SIGKILL)
			kill = time.Time{}
		}
		time.Sleep(100 * time.Millisecond)
	}
	return nil
}

// ours reports whether pid is a live (not zombie) process running the
// binary name with an argument inside dir, as Start runs them.
func ours(pid int, dir, name string) bool {
	cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil || len(cmdline) == 0 { // a zombie's cmdline is empty
		return false
	}
	args := strings.Split(strings.TrimRight(string(cmdline), "\x00"), "\x00")
	if filepath.Base(args[0]) != name {
		return false
	}
	for _, arg := range args[1:] {
		if strings.HasPrefix(arg, dir+string(filepath.Separator)) {
			return true
		}
	}
	return false
}
