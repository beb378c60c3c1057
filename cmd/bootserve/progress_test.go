package main

import (
	"strings"
	"testing"
	"time"

	"github.com/bootserve/bootserve/cpiocache"
)

func TestProgressLine(t *testing.T) {
	l := progressLine(cpiocache.Progress{Done: 25, Total: 100, Bytes: 50 << 20, Elapsed: 10 * time.Second}, 20)
	for _, want := range []string{"[=====               ]", "25/100 paths", "50.0 MB", "5.0 MB/s", "ETA 30s"} {
		if !strings.Contains(l, want) {
			t.Errorf("%q lacks %q", l, want)
		}
	}
	if l := progressLine(cpiocache.Progress{Done: 3, Total: 3}, 10); !strings.Contains(l, "[==========]") || !strings.Contains(l, "ETA 0s") {
		t.Errorf("finished line %q", l)
	}
}
