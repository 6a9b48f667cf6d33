package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/containernetworking/cni/pkg/types"

	"github.com/hostrouting/hostrouting/loader"
)

// TestMaxServicesKey checks how maxServices reaches the datapath's config,
// and the error for one beyond the loader's limit.
func TestMaxServicesKey(t *testing.T) {
	for _, tc := range []struct {
		json    string
		want    uint32
		wantErr string
	}{
		{json: `{}`},
		{json: `{"maxServices": 64}`, want: 64},
		{json: fmt.Sprintf(`{"maxServices": %d}`, loader.MaxServicesLimit+1), wantErr: fmt.Sprintf("maxServices %d: at most %d", loader.MaxServicesLimit+1, loader.MaxServicesLimit)},
	} {
		conf := &NetConf{PinPath: loader.DefaultPinPath}
		if err := json.Unmarshal([]byte(tc.json), conf); err != nil {
			t.Fatal(err)
		}
		cfg, err := conf.datapathConfig()
		if tc.wantErr != "" {
			var cerr *types.Error
			if !errors.As(err, &cerr) || cerr.Code != types.ErrInvalidNetworkConfig || !strings.Contains(cerr.Msg, tc.wantErr) {
				t.Errorf("%s: error %#v, want code %d saying %q", tc.json, err, types.ErrInvalidNetworkConfig, tc.wantErr)
			}
			continue
		}
		if err != nil || cfg.MaxServices != tc.want {
			t.Errorf("%s: MaxServices %d (%v), want %d", tc.json, cfg.MaxServices, err, tc.want)
		}
	}
}

// TestMaxServicesFirstAdd: the ADD that loads the node's datapath sizes
// its service tables by maxServices: 64 services of 8 backends each on
// average.
func TestMaxServicesFirstAdd(t *testing.T) {
	n := newTestNode(t, map[string]any{"maxServices": 64})
	n.mustAdd(t, "a")
	node := n.open(t)
	if got, want := node.Maps.Services.MaxEntries(), uint32(64*(1+loader.ServiceBackendSlots)); got != want {
		t.Errorf("frontend table of %d entries, want %d", got, want)
	}
	if got, want := node.Maps.Backends.MaxEntries(), uint32(64*loader.ServiceBackendSlots); got != want {
		t.Errorf("backend table of %d entries, want %d", got, want)
	}
}
