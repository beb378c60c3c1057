// Package synth generates synthetic Nix closures for tests and benchmarks:
// store-path trees shaped like real packages (bin, lib with soname symlinks,
// share, include, single-file and symlink store paths) whose files mix
// text-like, machine-code-like and incompressible content, deterministically
// from a seed.
package synth

import (
	"bytes"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"path"
	"path/filepath"
	"strings"
)

// Spec describes a closure to generate.
type Spec struct {
	Paths      int
	TotalBytes int64
	Seed       uint64
}

// StoreDir is where generated paths live, relative to the generation root.
const StoreDir = "/nix/store"

const base32 = "0123456789abcdfghijklmnpqrsvwxyz" // Nix's alphabet

// gen holds the generator state of one Generate call.
type gen struct {
	root  string
	rng   *rand.Rand
	fill  *rand.ChaCha8
	vocab []string
	names []string // store paths generated so far, for cross-path symlinks
}

func newGen(root string, seed uint64) *gen {
	var s [32]byte
	for i := range 4 {
		s[i*8] = byte(seed >> (8 * i))
	}
	g := &gen{root: root, rng: rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15)), fill: rand.NewChaCha8(s)}
	syll := []string{"ba", "ko", "ri", "te", "nu", "sa", "lo", "me", "di", "pa", "xe", "qu", "ta", "ne", "so", "ru", "fi", "ga", "ch", "st"}
	for range 3000 {
		n := 1 + g.rng.IntN(4)
		var b strings.Builder
		for range n {
			b.WriteString(syll[g.rng.IntN(len(syll))])
		}
		g.vocab = append(g.vocab, b.String())
	}
	g.vocab = append(g.vocab, "int", "return", "if", "else", "for", "struct", "static", "const", "void", "char",
		"the", "a", "of", "to", "and", "in", "is", "that", "with", "#include", "{", "}", "(", ")", ";", "=", "==", "->")
	return g
}

// Generate creates Paths store paths with about TotalBytes of file content
// under root+StoreDir and returns their logical store paths
// ("/nix/store/<hash>-<name>"). Pass root as Options.FSRoot.
func Generate(root string, s Spec) ([]string, error) {
	g := newGen(root, s.Seed)
	if err := os.MkdirAll(filepath.Join(root, StoreDir), 0o755); err != nil {
		return nil, err
	}
	// Heavy-tailed sizes like a real closure: most paths are small, a few
	// (compilers, firmware, locales) are big.
	weights := make([]float64, s.Paths)
	var sum float64
	for i := range weights {
		weights[i] = math.Exp(g.rng.NormFloat64() * 1.8)
		sum += weights[i]
	}
	var out []string
	for i, w := range weights {
		budget := int64(w / sum * float64(s.TotalBytes))
		var p string
		var err error
		switch {
		case i%97 == 13:
			p, err = g.symlinkPath()
		case i%31 == 7:
			p, err = g.singleFile(budget)
		default:
			p, err = g.pkg(budget)
		}
		if err != nil {
			return nil, err
		}
		out = append(out, p)
		g.names = append(g.names, p)
	}
	return out, nil
}

func (g *gen) storeName(name string) string {
	var b [32]byte
	for i := range b {
		b[i] = base32[g.rng.IntN(32)]
	}
	return StoreDir + "/" + string(b[:]) + "-" + name
}

func (g *gen) fsPath(p string) string { return filepath.Join(g.root, filepath.FromSlash(p)) }

func (g *gen) pkgName() string {
	return fmt.Sprintf("%s-%d.%d.%d", g.vocab[g.rng.IntN(3000)], g.rng.IntN(10), g.rng.IntN(30), g.rng.IntN(10))
}

func (g *gen) symlinkPath() (string, error) {
	p := g.storeName("link-" + g.pkgName())
	target := "/bin/sh"
	if len(g.names) > 0 {
		target = g.names[g.rng.IntN(len(g.names))]
	}
	return p, os.Symlink(target, g.fsPath(p))
}

func (g *gen) singleFile(budget int64) (string, error) {
	p := g.storeName(g.pkgName() + ".patch")
	return p, os.WriteFile(g.fsPath(p), g.text(max(budget, 100)), 0o444)
}

// pkg writes a package-shaped directory with about budget bytes.
func (g *gen) pkg(budget int64) (string, error) {
	name := g.pkgName()
	p := g.storeName(name)
	root := g.fsPath(p)
	short := strings.SplitN(name, "-", 2)[0]
	if err := os.MkdirAll(filepath.Join(root, "nix-support"), 0o755); err != nil {
		return "", err
	}
	var refs bytes.Buffer
	for range g.rng.IntN(4) {
		if len(g.names) > 0 {
			refs.WriteString(g.names[g.rng.IntN(len(g.names))] + " ")
		}
	}
	if err := g.write(root, "nix-support/propagated-build-inputs", refs.Bytes(), 0o444); err != nil {
		return "", err
	}
	left := budget
	// Big packages carry one big file (a library, a firmware blob).
	if budget > 4<<20 {
		big := budget * int64(40+g.rng.IntN(40)) / 100
		kind := g.rng.IntN(3)
		var data []byte
		var rel string
		switch kind {
		case 0:
			rel, data = "lib/lib"+short+".so.1.0.0", g.binary(big)
		case 1:
			rel, data = "share/"+short+"/data.pak", g.random(big)
		default:
			rel, data = "share/"+short+"/locale-archive", g.text(big)
		}
		if err := g.write(root, rel, data, 0o444); err != nil {
			return "", err
		}
		left -= big
	}
	for n := 0; left > 0; n++ {
		size := min(left, int64(math.Exp(g.rng.NormFloat64()*1.5+8.5))+1) // median ~5 KB
		left -= size
		var rel string
		var data []byte
		mode := os.FileMode(0o444)
		switch r := g.rng.IntN(100); {
		case r < 15:
			rel, data, mode = fmt.Sprintf("bin/%s%d", short, n), g.binary(size), 0o555
		case r < 40:
			lib := fmt.Sprintf("lib/lib%s%d.so", short, n)
			rel, data = lib+".1.2.3", g.binary(size)
			// soname symlink chain, as in real library packages
			if err := g.symlink(root, lib, path.Base(lib)+".1"); err != nil {
				return "", err
			}
			if err := g.symlink(root, lib+".1", path.Base(lib)+".1.2.3"); err != nil {
				return "", err
			}
		case r < 55:
			rel, data = fmt.Sprintf("include/%s/h%d.h", short, n), g.text(size)
		case r < 75:
			rel, data = fmt.Sprintf("share/doc/%s/%c/doc%d.txt", short, 'a'+n%7, n), g.text(size)
		case r < 88:
			rel, data = fmt.Sprintf("share/man/man%d/%s%d.1.gz", 1+n%8, short, n), g.random(size)
		default:
			rel, data = fmt.Sprintf("share/locale/l%d/LC_MESSAGES/%s.mo", n%40, short), g.mixed(size)
		}
		if err := g.write(root, rel, data, mode); err != nil {
			return "", err
		}
	}
	if len(g.names) > 0 && g.rng.IntN(3) == 0 {
		other := g.names[g.rng.IntN(len(g.names))]
		if err := g.symlink(root, "bin/"+short+"-alias", other); err != nil {
			return "", err
		}
	}
	return p, nil
}

func (g *gen) write(root, rel string, data []byte, mode os.FileMode) error {
	p := filepath.Join(root, filepath.FromSlash(rel))
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		return err
	}
	if err := os.WriteFile(p, data, mode); err != nil {
		return err
	}
	return os.Chmod(p, mode) // WriteFile keeps the mode of a file that exists
}

func (g *gen) symlink(root, rel, target string) error {
	p := filepath.Join(root, filepath.FromSlash(rel))
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		return err
	}
	if _, err := os.Lstat(p); err == nil {
		return nil
	}
	return os.Symlink(target, p)
}

// text is source-code- and prose-like: skewed word choice, ~4:1 with zstd.
func (g *gen) text(n int64) []byte {
	b := make([]byte, 0, n+64)
	for int64(len(b)) < n {
		for range g.rng.IntN(4) {
			b = append(b, ' ', ' ')
		}
		for range 3 + g.rng.IntN(10) {
			u := g.rng.Float64()
			b = append(b, g.vocab[int(u*u*u*float64(len(g.vocab)))]...)
			b = append(b, ' ')
		}
		b = append(b, '\n')
	}
	return b[:n]
}

// binary is machine-code-like: opcode-ish bytes, zero runs, repeats and
// strings, ~2.5:1 with zstd.
func (g *gen) binary(n int64) []byte {
	b := make([]byte, 0, n+64)
	ops := []byte{0x48, 0x89, 0x8b, 0xe8, 0xc3, 0x0f, 0x85, 0x74, 0x83, 0xff, 0x31, 0xc0, 0x41, 0x5d, 0x55, 0x90}
	var chunk [64]byte
	for int64(len(b)) < n {
		switch r := g.rng.IntN(100); {
		case r < 8:
			b = append(b, make([]byte, 64)...)
		case r < 60:
			for i := range chunk {
				if i%3 == 0 {
					chunk[i] = byte(g.rng.Uint32())
				} else {
					chunk[i] = ops[g.rng.IntN(len(ops))]
				}
			}
			b = append(b, chunk[:]...)
		case r < 85 && len(b) > 4096:
			s := len(b) - 64 - g.rng.IntN(4000)
			b = append(b, b[s:s+64]...)
		default:
			b = append(b, g.vocab[g.rng.IntN(len(g.vocab))]...)
			b = append(b, 0)
		}
	}
	return b[:n]
}

// random is incompressible (compressed man pages, images, firmware).
func (g *gen) random(n int64) []byte {
	b := make([]byte, n)
	g.fill.Read(b)
	return b
}

func (g *gen) mixed(n int64) []byte {
	b := append(g.text(n/2), g.random(n-n/2)...)
	return b
}

// Variant copies the store path src (generated under root) to a new store
// path with another hash and one changed byte sequence in its largest regular
// file (or, for a symlink path, another target), as a rebuild of a changed
// package would. It returns the new logical path.
func Variant(root, src string, seed uint64) (string, error) {
	g := &gen{root: root, rng: rand.New(rand.NewPCG(seed, 1))}
	name := path.Base(src)[33:]
	dst := g.storeName(name)
	from, to := g.fsPath(src), g.fsPath(dst)
	var largest string
	var largestSize int64 = -1
	err := filepath.WalkDir(from, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(from, p)
		t := filepath.Join(to, rel)
		info, err := d.Info()
		if err != nil {
			return err
		}
		switch {
		case d.IsDir():
			return os.MkdirAll(t, 0o755)
		case info.Mode()&os.ModeSymlink != 0:
			l, err := os.Readlink(p)
			if err != nil {
				return err
			}
			if rel == "." {
				l += "-changed"
			}
			return os.Symlink(l, t)
		default:
			data, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			if info.Size() > largestSize {
				largest, largestSize = t, info.Size()
			}
			if err := os.WriteFile(t, data, info.Mode().Perm()); err != nil {
				return err
			}
			return os.Chmod(t, info.Mode().Perm())
		}
	})
	if err != nil {
		return "", err
	}
	if largest != "" {
		fi, err := os.Stat(largest)
		if err != nil {
			return "", err
		}
		if err := os.Chmod(largest, 0o644); err != nil {
			return "", err
		}
		f, err := os.OpenFile(largest, os.O_WRONLY, 0)
		if err != nil {
			return "", err
		}
		_, err = f.WriteAt(fmt.Appendf(nil, "changed %d", seed), largestSize/2)
		if err = errors.Join(err, f.Close(), os.Chmod(largest, fi.Mode().Perm())); err != nil {
			return "", err
		}
	}
	return dst, nil
}
