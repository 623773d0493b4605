package lab

import (
	"fmt"
	"os"
	"strings"
)

// ConsoleTail returns the last lines of a node's console log, cleaned of
// the terminal control sequences a serial console carries.
func ConsoleTail(path string, lines int) string {
	data, err := os.ReadFile(path)
	if err != nil {
		return fmt.Sprintf("(no console log at %s: %v)", path, err)
	}
	text := strings.ReplaceAll(string(data), "\r", "")
	text = stripANSI(text)
	all := strings.Split(strings.TrimRight(text, "\n"), "\n")
	if len(all) > lines {
		all = all[len(all)-lines:]
	}
	return strings.Join(all, "\n")
}

// stripANSI removes CSI escape sequences (colours, cursor moves).
func stripANSI(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == 0x1b && i+1 < len(s) && s[i+1] == '[' {
			j := i + 2
			for j < len(s) && !(s[j] >= 0x40 && s[j] <= 0x7e) {
				j++
			}
			i = j
			continue
		}
		b.WriteByte(s[i])
	}
	return b.String()
}
