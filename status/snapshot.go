package status

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Snapshot is the whole state, as /status.json and each /events message
// carry it.
type Snapshot struct {
	// Now is the server's clock, so the page can count elapsed times
	// without trusting the browser's clock.
	Now time.Time `json:"now,omitzero"`
	// Version increases with every change.
	Version  uint64        `json:"version"`
	Config   ConfigSummary `json:"config"`
	Counts   Counts        `json:"counts"`
	Machines []Machine     `json:"machines"`
	// Events and Errors are newest first.
	Events []Entry `json:"events"`
	Errors []Entry `json:"errors"`
	// Leases is the DHCP server's address table, nil (absent) unless
	// bootserve is the DHCP server.
	Leases *Leases `json:"leases,omitempty"`
}

// Counts sums the machines by state.
type Counts struct {
	Booting int `json:"booting"`
	Booted  int `json:"booted"`
	Ignored int `json:"ignored"`
}

// Machine is one machine's current boot.
type Machine struct {
	// Key is the MAC, or "ip:<address>" while the MAC is unknown.
	Key         string `json:"key"`
	MAC         string `json:"mac,omitempty"`
	IP          string `json:"ip,omitempty"`
	Arch        string `json:"arch,omitempty"`        // efi-x64, bios...
	ArchDetail  string `json:"arch_detail,omitempty"` // option 93 by name
	UUID        string `json:"uuid,omitempty"`
	Hostname    string `json:"hostname,omitempty"`
	UserClass   string `json:"user_class,omitempty"`
	VendorClass string `json:"vendor_class,omitempty"`
	Target      string `json:"target,omitempty"`
	BootFile    string `json:"boot_file,omitempty"`
	// Stage is the furthest stage reached, StageIgnored for a machine
	// bootserve does not answer (Reason says why), or empty when only a
	// failed request was seen.
	Stage   Stage     `json:"stage"`
	Reason  string    `json:"reason,omitempty"`
	Error   string    `json:"error,omitempty"` // the last failure of this boot
	ErrorAt time.Time `json:"error_at,omitzero"`
	// Boot counts the boots seen of this machine; Attempt the retries
	// (script fetched again) within this one.
	Boot    int `json:"boot"`
	Attempt int `json:"attempt,omitempty"`
	// Start is the first DHCP packet of this boot when FromDHCP, else the
	// first request seen.
	Start    time.Time   `json:"start"`
	FromDHCP bool        `json:"from_dhcp"`
	LastSeen time.Time   `json:"last_seen"`
	Stages   []StageTime `json:"stages"`
	// Transfer is the latest file transfer of this boot.
	Transfer *Transfer `json:"transfer,omitempty"`
	// BootSeconds is Start → booted, once booted.
	BootSeconds float64 `json:"boot_seconds,omitempty"`
}

// StageTime is when a stage was reached; Offset is seconds since Start.
type StageTime struct {
	Stage  Stage     `json:"stage"`
	At     time.Time `json:"at"`
	Offset float64   `json:"offset"`
}

// Transfer is one file being sent or sent.
type Transfer struct {
	Proto string `json:"proto"` // tftp or http
	Stage Stage  `json:"stage"` // firmware, kernel, initrd or file
	Name  string `json:"name"`
	Bytes int64  `json:"bytes"`
	// Size is -1 when unknown.
	Size int64 `json:"size"`
	// BytesPerSec is the average since the start.
	BytesPerSec float64   `json:"bytes_per_sec"`
	Start       time.Time `json:"start"`
	Updated     time.Time `json:"updated"`
	Done        bool      `json:"done"`
	Error       string    `json:"error,omitempty"`
}

// Entry is one line of the recent events or last errors list.
type Entry struct {
	Time   time.Time `json:"time"`
	Source string    `json:"source"` // dhcp, tftp, http, boot, or what Error was given
	Level  string    `json:"level"`  // info, warn, error
	MAC    string    `json:"mac,omitempty"`
	IP     string    `json:"ip,omitempty"`
	// Message may hold anything a client sent: escape it.
	Message string `json:"message"`
}

// Metrics holds the status page's Prometheus metrics.
type Metrics struct {
	BootDuration prometheus.Histogram
}

// NewMetrics makes the metrics and registers them with reg (nil: not
// registered, for tests).
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{BootDuration: prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "bootserve_boot_duration_seconds",
		Help:    "Time from a machine's first DHCP packet of a boot to the end of its last initrd (or kernel) transfer.",
		Buckets: []float64{5, 10, 15, 20, 30, 45, 60, 90, 120, 180, 300, 600, 1200},
	})}
	if reg != nil {
		reg.MustRegister(m.BootDuration)
	}
	return m
}
