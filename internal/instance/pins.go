package instance

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/hostrouting/hostrouting/internal/bpf"
	"github.com/hostrouting/hostrouting/internal/netlinksafe"
	"github.com/hostrouting/hostrouting/loader"
	"github.com/hostrouting/hostrouting/routing"
	"golang.org/x/sys/unix"
)

func loadPinnedMap(path string) (*ebpf.Map, error) {
	return ebpf.LoadPinnedMap(path, nil)
}

// missingPins returns the node maps not pinned at path.
func missingPins(path string) ([]string, error) {
	var missing []string
	for _, name := range mapNames {
		_, err := os.Lstat(filepath.Join(path, name))
		switch {
		case errors.Is(err, os.ErrNotExist):
			missing = append(missing, name)
		case err != nil:
			return nil, fmt.Errorf("pin %s: %w", name, err)
		}
	}
	return missing, nil
}

// repairPins pins again the maps named in missing that the node's running
// programs still use: the programs pinned at path, the stages and
// policies in their program arrays, and the programs of the pinned links.
// given is the pin path as the caller named it, for the error.
func repairPins(path, given string, missing []string) error {
	want := map[string]bool{}
	for _, name := range missing {
		want[name] = true
	}
	var progIDs []ebpf.ProgramID
	pins, _ := filepath.Glob(filepath.Join(path, "progs", "*"))
	for _, pin := range pins {
		if p, err := ebpf.LoadPinnedProgram(pin, nil); err == nil {
			if info, err := p.Info(); err == nil {
				if id, ok := info.ID(); ok {
					progIDs = append(progIDs, id)
				}
			}
			p.Close()
		} else if m, err := loadPinnedMap(pin); err == nil {
			progIDs = append(progIDs, programsIn(m)...)
			m.Close()
		}
	}
	seenProgs := map[ebpf.ProgramID]bool{}
	seenMaps := map[ebpf.MapID]bool{}
	for len(progIDs) > 0 {
		id := progIDs[0]
		progIDs = progIDs[1:]
		if seenProgs[id] {
			continue
		}
		seenProgs[id] = true
		prog, err := ebpf.NewProgramFromID(id)
		if err != nil {
			continue
		}
		info, err := prog.Info()
		prog.Close()
		if err != nil {
			continue
		}
		mapIDs, _ := info.MapIDs()
		for _, mid := range mapIDs {
			if seenMaps[mid] {
				continue
			}
			seenMaps[mid] = true
			m, err := ebpf.NewMapFromID(mid)
			if err != nil {
				continue
			}
			minfo, err := m.Info()
			if err == nil && want[minfo.Name] {
				if err := m.Pin(filepath.Join(path, minfo.Name)); err != nil {
					m.Close()
					return fmt.Errorf("pin %s again: %w", minfo.Name, err)
				}
				delete(want, minfo.Name)
			}
			if err == nil && minfo.Type == ebpf.ProgramArray {
				progIDs = append(progIDs, programsIn(m)...)
			}
			m.Close()
		}
	}
	if len(want) == 0 {
		return nil
	}
	var lost []string
	for _, name := range missing {
		if want[name] {
			lost = append(lost, name)
		}
	}
	return fmt.Errorf("%w: %s removed by hand, and no running program uses them to pin them again; remove what is left (`hrctl --pin-path %s cleanup`, or datapath.Cleanup) and start the node again",
		loader.ErrPartialPins, strings.Join(lost, ", "), given)
}

// programsIn returns the IDs of the programs in program array m.
func programsIn(m *ebpf.Map) []ebpf.ProgramID {
	if m.Type() != ebpf.ProgramArray {
		return nil
	}
	var ids []ebpf.ProgramID
	for slot := range m.MaxEntries() {
		var id uint32
		if err := m.Lookup(slot, &id); err == nil {
			ids = append(ids, ebpf.ProgramID(id))
		}
	}
	return ids
}

// ours tells whether name is an entry a node instance makes in its pin
// directory.
func ours(name string) bool {
	return slices.Contains(mapNames, name) || name == "progs" || name == "links" || name == eventsDir
}

// checkPinDir refuses a pin path that is the bpf filesystem's root (a
// Remove there would wipe every pin of the machine) or holds entries of
// which none is a node's.
func checkPinDir(dir string) error {
	var st, parent unix.Stat_t
	if err := unix.Stat(dir, &st); err != nil {
		return fmt.Errorf("pin path %q: %w", dir, err)
	}
	if err := unix.Stat(filepath.Dir(dir), &parent); err != nil {
		return fmt.Errorf("pin path %q: %w", dir, err)
	}
	if st.Dev != parent.Dev || dir == "/" {
		return fmt.Errorf("%w: pin path %q is the root of a bpf filesystem: use a directory of its own below it, such as %s",
			loader.ErrForeignPinPath, dir, filepath.Join(dir, "hostrouting"))
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return fmt.Errorf("pin path %q: %w", dir, err)
	}
	var names []string
	for _, e := range entries {
		if ours(e.Name()) {
			return nil
		}
		names = append(names, e.Name())
	}
	if len(names) > 0 {
		if len(names) > 5 {
			names = append(names[:5], "…")
		}
		return fmt.Errorf("%w: pin path %q holds %s: use a new or empty directory", loader.ErrForeignPinPath, dir, strings.Join(names, ", "))
	}
	return nil
}

// Remove tears the node instance down: it detaches every tcx link pinned
// under the pin path and unpins the links, programs, stages and maps the
// node made, by name; the directory goes if nothing else is left in it.
// Filters attached in clsact mode are not pinned: detach them first with
// Detach (the datapath package does so for its endpoints and devices).
func (n *Instance) Remove() error {
	errs := []error{n.detachAllLinks(), n.Close(), unpinNode(n.PinPath)}
	if err := removeEmptyDir(n.PinPath); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// unpinNode unpins, by name, what a node instance pins at path (maps,
// programs, tail-call stages), and removes its subdirectories that are
// left empty. Links are only unpinned if the caller detached them first.
func unpinNode(path string) error {
	var pins []string
	for _, name := range mapNames {
		pins = append(pins, filepath.Join(path, name))
	}
	for _, p := range programs {
		pin := filepath.Join(path, "progs", objectName(p))
		pins = append(pins, pin, pin+"_new")
	}
	for _, h := range socketHooks {
		pin := filepath.Join(path, "progs", h.name)
		pins = append(pins, pin, pin+"_new")
	}
	stages, _ := filepath.Glob(filepath.Join(path, "progs", "hr_calls_*"))
	pins = append(pins, stages...)
	var errs []error
	for _, pin := range pins {
		if err := os.Remove(pin); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, fmt.Errorf("unpin %s: %w", filepath.Base(pin), err))
		}
	}
	for _, dir := range []string{"progs", "links", eventsDir} {
		if err := removeEmptyDir(filepath.Join(path, dir)); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// removeEmptyDir removes the directory dir if it is empty; a directory
// that is gone or not empty is not an error.
func removeEmptyDir(dir string) error {
	if err := os.Remove(dir); err != nil && !errors.Is(err, os.ErrNotExist) && !errors.Is(err, unix.ENOTEMPTY) {
		return fmt.Errorf("remove %s: %w", dir, err)
	}
	return nil
}

// Cleanup removes what a node instance left at pinPath when it cannot be
// opened any more (pins removed by hand, a version whose maps do not
// load): its tcx links, its clsact filters on the devices of the network
// namespace at netns ("" for the process's; known by the instance's name while hr_info is left
// to tell it) and a clsact qdisc it made there, and its pins, by name.
// Everything else stays. For a node that opens, Open and Remove are the
// thorough way.
func Cleanup(pinPath, netns string) error {
	given := filepath.Clean(pinPath)
	path, err := reach(given, false)
	if err != nil {
		return err
	}
	if _, err := os.Stat(path); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err := checkPinDir(path); err != nil {
		return err
	}
	n := &Instance{PinPath: path}
	if info, err := loadPinnedMap(filepath.Join(path, bpf.HostroutingMapHrInfo)); err == nil {
		n.setMaps(map[string]*ebpf.Map{bpf.HostroutingMapHrInfo: info})
	}
	var errs []error
	if n.tag != "" {
		errs = append(errs, routing.Do(netns, func() error {
			links, err := netlinksafe.LinkList(nil)
			if err != nil {
				return fmt.Errorf("list devices: %w", err)
			}
			var errs []error
			for _, l := range links {
				for _, p := range programs {
					errs = append(errs, n.detachClsact(l.Attrs().Index, p))
				}
			}
			return errors.Join(errs...)
		}))
	}
	return errors.Join(append(errs, n.Remove())...)
}

// PinDir is what a pin directory holds: the node's entries (maps by name,
// "progs/" and "links/"), the node's maps that are missing (sorted), and
// everything else, which is not the node's and stays.
type PinDir struct {
	Own, Missing, Others []string
}

// ReadPinDir lists the pin directory at pinPath (as the caller names it;
// see Open), for tools that show what Cleanup removes and what stays.
func ReadPinDir(pinPath string) (PinDir, error) {
	path, err := reach(filepath.Clean(pinPath), false)
	if err != nil {
		return PinDir{}, err
	}
	entries, err := os.ReadDir(path)
	if err != nil {
		return PinDir{}, err
	}
	var d PinDir
	for _, e := range entries {
		name := e.Name()
		switch {
		case e.IsDir() && ours(name):
			d.Own = append(d.Own, name+"/")
		case ours(name):
			d.Own = append(d.Own, name)
		case e.IsDir():
			d.Others = append(d.Others, name+"/")
		default:
			d.Others = append(d.Others, name)
		}
	}
	for _, name := range mapNames {
		if !slices.Contains(d.Own, name) {
			d.Missing = append(d.Missing, name)
		}
	}
	slices.Sort(d.Missing)
	return d, nil
}
