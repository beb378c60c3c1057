package configs

import (
	"iter"
	"strconv"
	"strings"
)

// positions maps key paths to the line where they are set. The TOML
// library reports a line for syntax and type errors but keeps key positions
// to itself, and errors found after decoding (a missing file, a duplicate
// MAC) must name a line too; so this scans the file's structure once: table
// headers, arrays of tables and key/value lines. Values are not parsed here.
//
// Paths look like "machine[2].mac" or "firmware.efi_x64".
type positions struct {
	exact  map[string]int // with array indices
	loose  map[string]int // indices dropped: "machine.mac", first occurrence
	arrays map[string]int // next index of each array of tables, by parent path
}

func scanPositions(src string) *positions {
	p := &positions{exact: map[string]int{}, loose: map[string]int{}, arrays: map[string]int{}}
	var table []string // current table path, with indices
	lines := strings.Split(src, "\n")
	for i := 0; i < len(lines); i++ {
		lineNo := i + 1
		l := strings.TrimSpace(stripComment(lines[i]))
		switch {
		case l == "":
			continue
		case strings.HasPrefix(l, "[["):
			keys := splitKey(strings.TrimSuffix(strings.TrimPrefix(l, "[["), "]]"))
			parent := p.resolve(keys[:len(keys)-1])
			name := keys[len(keys)-1]
			arrKey := strings.Join(append(append([]string{}, parent...), name), ".")
			idx := p.arrays[arrKey]
			p.arrays[arrKey] = idx + 1
			table = append(parent, name+"["+strconv.Itoa(idx)+"]")
			p.add(table, lineNo)
		case strings.HasPrefix(l, "["):
			keys := splitKey(strings.TrimSuffix(strings.TrimPrefix(l, "["), "]"))
			table = p.resolve(keys)
			p.add(table, lineNo)
		default:
			eq := keyEnd(l)
			if eq < 0 {
				continue
			}
			keys := splitKey(l[:eq])
			path := append(append([]string{}, table...), keys...)
			p.add(path, lineNo)
			// Skip the continuation lines of a multi-line value.
			i = skipValue(lines, i, l[eq+1:])
		}
	}
	return p
}

// resolve turns header keys into a path, giving each key that names an
// array of tables the index of its latest element ([machine.menu] inside
// the third [[machine]] is machine[2].menu).
func (p *positions) resolve(keys []string) []string {
	var out []string
	for _, k := range keys {
		arrKey := strings.Join(append(append([]string{}, out...), k), ".")
		if n, ok := p.arrays[arrKey]; ok && n > 0 {
			out = append(out, k+"["+strconv.Itoa(n-1)+"]")
		} else {
			out = append(out, k)
		}
	}
	return out
}

func (p *positions) add(path []string, line int) {
	k := strings.Join(path, ".")
	if _, ok := p.exact[k]; !ok {
		p.exact[k] = line
	}
	lk := dropIndices(k)
	if _, ok := p.loose[lk]; !ok {
		p.loose[lk] = line
	}
}

func dropIndices(k string) string {
	var b strings.Builder
	depth := 0
	for _, r := range k {
		switch {
		case r == '[':
			depth++
		case r == ']':
			depth--
		case depth == 0:
			b.WriteRune(r)
		}
	}
	return b.String()
}

// line returns the line of a path, or of its closest enclosing path that
// was seen, or 0.
func (p *positions) line(path string) int {
	for k := path; k != ""; {
		if n, ok := p.exact[k]; ok {
			return n
		}
		if n, ok := p.loose[k]; ok {
			return n
		}
		i := strings.LastIndexAny(k, ".[")
		if i < 0 {
			break
		}
		k = k[:i]
	}
	return 0
}

// unquoted yields the bytes of a line that are outside TOML strings, with
// their index. A backslash escapes the next byte in basic ("...") strings;
// literal ('...') strings have no escapes.
func unquoted(l string) iter.Seq2[int, byte] {
	return func(yield func(int, byte) bool) {
		var quote byte
		for i := 0; i < len(l); i++ {
			c := l[i]
			switch {
			case quote != 0:
				if c == '\\' && quote == '"' {
					i++
				} else if c == quote {
					quote = 0
				}
			case c == '"' || c == '\'':
				quote = c
			default:
				if !yield(i, c) {
					return
				}
			}
		}
	}
}

// stripComment removes a # comment that is not inside a string.
func stripComment(l string) string {
	for i, c := range unquoted(l) {
		if c == '#' {
			return l[:i]
		}
	}
	return l
}

// keyEnd finds the '=' that ends the key of a key/value line.
func keyEnd(l string) int {
	var quote byte
	for i := 0; i < len(l); i++ {
		c := l[i]
		switch {
		case quote != 0:
			if c == quote {
				quote = 0
			}
		case c == '"' || c == '\'':
			quote = c
		case c == '=':
			return i
		}
	}
	return -1
}

// splitKey splits a dotted key, honouring quotes.
func splitKey(s string) []string {
	var out []string
	var cur strings.Builder
	var quote byte
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case quote != 0:
			if c == quote {
				quote = 0
			} else {
				cur.WriteByte(c)
			}
		case c == '"' || c == '\'':
			quote = c
		case c == '.':
			out = append(out, strings.TrimSpace(cur.String()))
			cur.Reset()
		case c == ' ' || c == '\t':
		default:
			cur.WriteByte(c)
		}
	}
	return append(out, strings.TrimSpace(cur.String()))
}

// skipValue returns the index of the last line of a value that starts with
// rest on line i: multi-line strings and arrays or inline tables spanning
// lines.
func skipValue(lines []string, i int, rest string) int {
	v := strings.TrimSpace(rest)
	for _, q := range []string{`"""`, `'''`} {
		if strings.HasPrefix(v, q) {
			if strings.Count(v, q) >= 2 {
				return i
			}
			for j := i + 1; j < len(lines); j++ {
				if strings.Contains(lines[j], q) {
					return j
				}
			}
			return len(lines) - 1
		}
	}
	depth := bracketDepth(v)
	for j := i + 1; depth > 0 && j < len(lines); j++ {
		depth += bracketDepth(lines[j])
		if depth <= 0 {
			return j
		}
	}
	return i
}

// bracketDepth counts unquoted [ { minus ] } on a line.
func bracketDepth(l string) int {
	d := 0
	for _, c := range unquoted(stripComment(l)) {
		switch c {
		case '[', '{':
			d++
		case ']', '}':
			d--
		}
	}
	return d
}
