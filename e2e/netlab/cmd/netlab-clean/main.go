// Command netlab-clean removes network-boot labs left behind by end-to-end test runs that died
// without cleaning up (their namespaces, the processes inside them, their records). Labs of test
// processes that are still running are left alone. Run as root:
//
//	go run ./e2e/netlab/cmd/netlab-clean
package main

import (
	"fmt"
	"log/slog"
	"os"

	"github.com/bootserve/bootserve/e2e/netlab"
)

func main() {
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	if err := netlab.CleanStale(log); err != nil {
		fmt.Fprintf(os.Stderr, "netlab-clean: %v\n", err)
		os.Exit(1)
	}
}
