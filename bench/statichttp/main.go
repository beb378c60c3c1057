// Command statichttp is a bare Go static file server, the HTTP peer in the
// side-by-side benchmarks (what a user would put next to dnsmasq): net/http's
// FileServer over one directory, no logging, default server settings. It
// runs as its own process so its CPU time can be measured.
//
//	statichttp ADDR DIR
package main

import (
	"fmt"
	"net/http"
	"os"
	"time"
)

func main() {
	if len(os.Args) != 3 {
		fmt.Fprintln(os.Stderr, "usage: statichttp ADDR DIR")
		os.Exit(2)
	}
	srv := &http.Server{Addr: os.Args[1], Handler: http.FileServer(http.Dir(os.Args[2])), ReadHeaderTimeout: 10 * time.Second}
	if err := srv.ListenAndServe(); err != nil {
		fmt.Fprintln(os.Stderr, "statichttp:", err)
		os.Exit(1)
	}
}
