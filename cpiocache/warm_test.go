package cpiocache

import (
	"context"
	"os"
	"path/filepath"
	"testing"
)

func TestWarmReportsProgress(t *testing.T) {
	root := t.TempDir()
	var paths []string
	for _, n := range []string{"0000000000000000000000000000000a-a", "0000000000000000000000000000000b-b", "0000000000000000000000000000000c-c"} {
		p := "/nix/store/" + n
		if err := os.MkdirAll(filepath.Join(root, p), 0o755); err != nil {
			t.Fatal(err)
		}
		os.WriteFile(filepath.Join(root, p, "file"), []byte("content of "+n), 0o644)
		paths = append(paths, p)
	}
	c, err := Open(Options{Dir: t.TempDir(), FSRoot: root})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	var reports []Progress
	if err := c.Warm(context.Background(), paths, func(p Progress) { reports = append(reports, p) }); err != nil {
		t.Fatal(err)
	}
	last := reports[len(reports)-1]
	if len(reports) != 4 || reports[0].Done != 0 || last.Done != 3 || last.Total != 3 || last.Built != 3 || last.Bytes <= 0 {
		t.Errorf("reports %+v", reports)
	}
	reports = nil
	if err := c.Warm(context.Background(), paths, func(p Progress) { reports = append(reports, p) }); err != nil {
		t.Fatal(err)
	}
	if last := reports[len(reports)-1]; last.Built != 0 || last.Done != 3 {
		t.Errorf("second warm built again: %+v", last)
	}
	if err := c.Warm(context.Background(), []string{"/nix/store/0000000000000000000000000000000d-missing"}, nil); err == nil {
		t.Error("warming a missing path succeeded")
	}
}
