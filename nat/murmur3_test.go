package nat

import (
	"encoding/binary"
	"testing"
)

// TestMurmur3Verification is SMHasher's check of MurmurHash3_x64_128:
// hash the keys {}, {0}, {0,1}, … {0..254} with seeds 256 down to 1,
// hash the concatenated hashes with seed 0, and read the first four
// bytes of that little-endian.
func TestMurmur3Verification(t *testing.T) {
	var key [256]byte
	hashes := make([]byte, 0, 16*256)
	for i := range 256 {
		key[i] = byte(i)
		h1, h2 := murmur3(key[:i], uint32(256-i))
		hashes = binary.LittleEndian.AppendUint64(hashes, h1)
		hashes = binary.LittleEndian.AppendUint64(hashes, h2)
	}
	h1, _ := murmur3(hashes, 0)
	if got := uint32(h1); got != 0x6384BA69 {
		t.Errorf("verification value %#08x, want 0x6384ba69", got)
	}
	if h1, h2 := murmur3(nil, 0); h1 != 0 || h2 != 0 {
		t.Errorf("empty input, seed 0: %#x %#x, want 0 0", h1, h2)
	}
}
