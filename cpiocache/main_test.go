package cpiocache

import (
	"os"
	"testing"
)

func TestMain(m *testing.M) {
	// Child-process modes of tests that need a process of their own.
	switch os.Getenv("CPIOCACHE_TEST_HELPER") {
	case "build":
		os.Exit(helperBuild())
	case "serve":
		os.Exit(helperServe())
	}
	code := m.Run()
	removeSynth()
	os.Exit(code)
}
