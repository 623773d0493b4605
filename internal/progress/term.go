package progress

import (
	"io"
	"os"

	"golang.org/x/term"
)

// Terminal reports whether w is a terminal and, if so, its width in
// columns (80 when the size cannot be read).
func Terminal(w io.Writer) (width int, ok bool) {
	f, isFile := w.(*os.File)
	if !isFile || !term.IsTerminal(int(f.Fd())) {
		return 0, false
	}
	width, _, err := term.GetSize(int(f.Fd()))
	if err != nil || width <= 0 {
		width = 80
	}
	return width, true
}
