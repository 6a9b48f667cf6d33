package instance

import "github.com/hostrouting/hostrouting/loader"

const (
	featRedirectPeer = 1 << iota
	featRedirectNeigh
	featFIBLookup
	featTCX
	featCheckMTU
)

// featuresFromBits rebuilds what a loader decided from the pinned bits,
// with reasons taken from a fresh probe where a feature is off.
func featuresFromBits(b uint32) loader.Features {
	probed := loader.ProbeFeatures(loader.Disable{})
	adopt := func(bit uint32, p loader.Feature) loader.Feature {
		if b&bit != 0 {
			return loader.Feature{Enabled: true, Reason: "kernel supports it"}
		}
		if p.Enabled {
			return loader.Feature{Reason: "disabled by config"}
		}
		return p
	}
	return loader.Features{
		RedirectPeer:  adopt(featRedirectPeer, probed.RedirectPeer),
		RedirectNeigh: adopt(featRedirectNeigh, probed.RedirectNeigh),
		FIBLookup:     adopt(featFIBLookup, probed.FIBLookup),
		TCX:           adopt(featTCX, probed.TCX),
		CheckMTU:      adopt(featCheckMTU, probed.CheckMTU),
	}
}

// featureBits encodes the enabled features f for the pinned node_info.
func featureBits(f loader.Features) uint32 {
	var b uint32
	for _, x := range []struct {
		f   loader.Feature
		bit uint32
	}{{f.RedirectPeer, featRedirectPeer}, {f.RedirectNeigh, featRedirectNeigh}, {f.FIBLookup, featFIBLookup}, {f.TCX, featTCX}, {f.CheckMTU, featCheckMTU}} {
		if x.f.Enabled {
			b |= x.bit
		}
	}
	return b
}
