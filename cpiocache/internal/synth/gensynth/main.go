// Command gensynth writes the synthetic closure used by the cpiocache
// benchmarks, so it can be archived by other tools for comparison:
//
//	go run ./cpiocache/internal/synth/gensynth -dir /tmp/synth
//	cd /tmp/synth && find nix | cpio -o -H newc | zstd -3 > /dev/null
//
// It prints the logical store paths, one per line.
package main

import (
	"flag"
	"fmt"
	"log"
	"os"

	"github.com/bootserve/bootserve/cpiocache/internal/synth"
)

func main() {
	dir := flag.String("dir", "", "directory to generate into (store paths go under <dir>/nix/store)")
	paths := flag.Int("paths", 500, "number of store paths")
	mb := flag.Int64("mb", 300, "approximate total megabytes of file content")
	seed := flag.Uint64("seed", 1, "generator seed")
	flag.Parse()
	if *dir == "" {
		log.Fatal("-dir is required")
	}
	ps, err := synth.Generate(*dir, synth.Spec{Paths: *paths, TotalBytes: *mb << 20, Seed: *seed})
	if err != nil {
		log.Fatal(err)
	}
	for _, p := range ps {
		fmt.Fprintln(os.Stdout, p)
	}
}
