package e2e

import "testing"

// TestNormalizeIgnoresOnlyNoise: the residue comparison must not flag IPv6
// duplicate address detection finishing, but must flag a real change.
func TestNormalizeIgnoresOnlyNoise(t *testing.T) {
	before := "3: kle2e-h1    inet6 fe80::1/64 scope link tentative \\       valid_lft forever\n1: lo    inet 127.0.0.1/8 scope host lo"
	after := "1: lo    inet 127.0.0.1/8 scope host lo\n3: kle2e-h1    inet6 fe80::1/64 scope link \\       valid_lft forever"
	if normalize(before) != normalize(after) {
		t.Errorf("DAD settling counted as residue:\n%s\n---\n%s", normalize(before), normalize(after))
	}
	leaked := after + "\n7: kl-lab    inet 192.168.100.1/24 scope global kl-lab"
	if normalize(before) == normalize(leaked) {
		t.Error("a leftover bridge address was not noticed")
	}
}
