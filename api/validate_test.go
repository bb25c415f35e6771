package api

import "testing"

func TestParseSize(t *testing.T) {
	ok := map[string]int64{"256M": 256 << 20, "1G": 1 << 30, "1.5G": 3 << 29, "512MiB": 512 << 20, "4096": 4096, "2gb": 2 << 30, "1T": 1 << 40}
	for in, want := range ok {
		got, err := ParseSize(in)
		if err != nil || got != want {
			t.Errorf("ParseSize(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"", "abc", "-1G", "0", "12Q", "NaN", "1e300G", "G"} {
		if _, err := ParseSize(in); err == nil {
			t.Errorf("ParseSize(%q) accepted", in)
		}
	}
	if _, err := ParseSizeMiB("1000K"); err == nil {
		t.Error("ParseSizeMiB accepted a size that is not whole MiB")
	}
}

func TestValidateName(t *testing.T) {
	for _, n := range []string{"a", "web-1", "0", "x123456789012345678901234567890123456789012345678901234567890ab"} {
		if err := ValidateName("vm", n); err != nil {
			t.Errorf("%q rejected: %v", n, err)
		}
	}
	for _, n := range []string{"", "Web", "-a", "a-", "a_b", "a.b", "a/b", "../x", "x1234567890123456789012345678901234567890123456789012345678901abc", "é"} {
		if ValidateName("vm", n) == nil {
			t.Errorf("%q accepted", n)
		}
	}
}
