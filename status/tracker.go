// Package status is bootserve's live status page: a Tracker turns the events
// of the ProxyDHCP, TFTP and HTTP servers into one row per machine (which
// stage of its boot it reached, when, and how fast its initrd is coming) and
// serves that as an HTML page, a JSON snapshot and a server-sent event stream.
//
// # Correlation
//
// DHCP events and iPXE script requests carry the client's MAC; TFTP
// transfers and HTTP boot-program fetches carry only its IP address. The
// tracker learns IP→MAC from every event that has both (a DHCP REQUEST on
// port 4011 with ciaddr, the script request, file requests whose URL names the
// machine). An IP-only event from an address not learnt yet gets a row of its
// own ("unknown MAC"), which is merged into the MAC's row once the address is
// learnt: BIOS PXE ROMs fetch their boot program over TFTP before any event
// tells their address.
//
// # Boots
//
// A row is one boot of one machine. A DHCP DISCOVER starts a new boot when the
// current one reached "booted", when the machine was silent for longer than
// Options.RestartAfter, when it comes from the firmware's own PXE stack (user
// class not "iPXE") after the boot program was already fetched, or when it
// comes from iPXE after the kernel was fetched. The iPXE DISCOVER that follows
// the boot program's download is part of the same boot. A script fetched again
// after the kernel (iPXE's retry after a failure) is a new attempt of the same
// boot.
//
// # Booted
//
// A machine is booted when the last initrd its script names was sent in full,
// or, for a script without initrds, when the kernel was sent in full. The
// tracker does not see the script, so "last" means: no further kernel, initrd
// or file request from the machine within Options.Settle (iPXE asks for the
// next image at once). The boot time recorded is the end of that last
// transfer, not the end of the wait; the boot duration (first DHCP packet of
// the boot → that time) goes to Options.OnBooted and the
// bootserve_boot_duration_seconds histogram, once per boot, and only for
// boots whose DHCP the tracker saw. Targets that never fetch a kernel through
// bootserve (chain, sanboot, local disk) never reach "booted".
//
// # Leases
//
// In full-DHCP mode the page also lists the DHCP server's addresses, booting
// clients or not (see leases.go).
package status

import (
	"fmt"
	"html/template"
	"log/slog"
	"net"
	"net/netip"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/bootserve/bootserve/dhcpproxy"
	"github.com/bootserve/bootserve/dhcpserver"
	"github.com/bootserve/bootserve/firmware"
	"github.com/bootserve/bootserve/httpboot"
	"github.com/bootserve/bootserve/tftpd"
)

// Stage is how far a machine's boot got.
type Stage string

// Stages in the order a boot reaches them; StageIgnored is a machine
// bootserve does not answer.
const (
	StageIgnored  Stage = "ignored"
	StageOffered  Stage = "offered"  // the ProxyDHCP answer was sent
	StageFirmware Stage = "firmware" // the boot program is being fetched (TFTP or HTTP)
	StageScript   Stage = "script"   // iPXE fetched its script
	StageKernel   Stage = "kernel"
	StageInitrd   Stage = "initrd"
	StageBooted   Stage = "booted" // see the package comment
)

// progressStages are the stages with a time, indexed by rank-1.
func progressStages() [6]Stage {
	return [6]Stage{StageOffered, StageFirmware, StageScript, StageKernel, StageInitrd, StageBooted}
}

// rank orders stages; 0 is none or ignored.
func rank(s Stage) int {
	for i, p := range progressStages() {
		if p == s {
			return i + 1
		}
	}
	return 0
}

// Defaults for the zero values in Options.
const (
	DefaultMaxMachines   = 256
	DefaultMaxEvents     = 200
	DefaultMaxErrors     = 100
	DefaultRestartAfter  = 5 * time.Minute
	DefaultSettle        = 3 * time.Second
	DefaultMaxSSEClients = 32
	DefaultSSEInterval   = 250 * time.Millisecond
	DefaultHeartbeat     = 15 * time.Second
)

// Options configures a Tracker; every field is optional.
type Options struct {
	// MaxMachines bounds the rows kept; the least recently seen is dropped.
	MaxMachines int
	// MaxEvents and MaxErrors bound the recent events and last errors lists.
	MaxEvents int
	MaxErrors int
	// RestartAfter: a DISCOVER from a machine silent for longer starts a new
	// boot.
	RestartAfter time.Duration
	// Settle is how long after a complete kernel or initrd the tracker waits
	// for another image request before calling the machine booted.
	Settle time.Duration
	// MaxSSEClients bounds the /events streams open at once; more get 503
	// and the page falls back to polling.
	MaxSSEClients int
	// SSEInterval is the least time between two updates sent to one
	// client (default 250ms, 4 updates/s); changes in between are merged.
	SSEInterval time.Duration
	// MaxLeases bounds the DHCP lease rows shown (the rest are counted as
	// hidden) and the lease history kept.
	MaxLeases int
	// Heartbeat is how often an idle stream gets a comment line, so
	// proxies and the browser keep it open.
	Heartbeat time.Duration
	// OnBooted, if set, is called once per boot that reached "booted" and
	// whose first DHCP packet was seen. It runs outside the tracker's lock
	// on a timer goroutine; keep it quick.
	OnBooted func(Boot)
	// Metrics, if set, gets the boot durations.
	Metrics *Metrics
	Logger  *slog.Logger
}

// Boot is one completed boot, for Options.OnBooted.
type Boot struct {
	MAC    string
	IP     netip.Addr
	Target string
	// Start is the first DHCP packet of the boot, Booted the end of its last
	// kernel or initrd transfer.
	Start, Booted time.Time
	Duration      time.Duration
}

// ConfigSummary is the server's own setup, shown in the page header. The
// lead fills it from the config; every field is optional.
type ConfigSummary struct {
	Version   string `json:"version,omitempty"`
	Interface string `json:"interface,omitempty"`
	Address   string `json:"address,omitempty"`
	// Services lists what listens where ("ProxyDHCP" 67 4011, "TFTP" 69).
	Services     []Service     `json:"services,omitempty"`
	BootPrograms []BootProgram `json:"boot_programs,omitempty"`
	// Rules is the number of machine rules in the config; APIURL is set
	// when an API server chooses targets instead.
	Rules      int    `json:"rules"`
	APIURL     string `json:"api_url,omitempty"`
	ConfigFile string `json:"config_file,omitempty"`
	// Started is when the server started.
	Started time.Time `json:"started,omitzero"`
}

// Service is one listening protocol.
type Service struct {
	Name  string `json:"name"`
	Ports []int  `json:"ports"`
}

// BootProgram is the boot program of one architecture.
type BootProgram struct {
	Arch   string `json:"arch"`
	Name   string `json:"name"`
	Origin string `json:"origin,omitempty"`
	Size   int64  `json:"size,omitempty"`
	// Signed: an EFI program with an Authenticode signature.
	Signed bool `json:"signed,omitempty"`
}

// BootProgramsOf lists the programs of a firmware set for ConfigSummary.
func BootProgramsOf(s *firmware.Set) []BootProgram {
	if s == nil {
		return nil
	}
	var out []BootProgram
	for _, b := range s.All() {
		out = append(out, BootProgram{Arch: b.Arch.String(), Name: b.Name, Origin: b.Origin, Size: int64(len(b.Data)), Signed: b.Signed})
	}
	return out
}

// Tracker keeps the state of recent boots. It is safe for concurrent use;
// the input methods take a short lock and never block.
type Tracker struct {
	opts Options
	log  *slog.Logger
	page *template.Template
	sse  chan struct{} // one token per open /events stream

	mu       sync.Mutex
	version  uint64
	changed  chan struct{} // closed and replaced on every change
	config   ConfigSummary
	machines map[string]*machine
	byIP     map[netip.Addr]string // address → key of the row that last had it
	events   ring
	errors   ring
	// leaseSrc is set in full-DHCP mode; leaseHist is keyed by address.
	leaseSrc  func() []dhcpserver.Lease
	leaseHist map[netip.Addr]*leaseHist
	wake      *time.Timer // the next lease expiry
	wakeAt0   time.Time
	// settleTimer fires at settleNext (zero: not armed), the earliest
	// machine.settleDue (see armSettle).
	settleTimer *time.Timer
	settleNext  time.Time

	cacheMu      sync.Mutex
	cacheVer     uint64
	cacheJS      []byte // snapshot JSON of cacheVer, without "now"
	cacheChanged <-chan struct{}
	cacheAt      time.Time
}

// machine is one row: the current boot of one machine (key = MAC) or of an
// address whose MAC is not known yet (key = "ip:" + address).
type machine struct {
	key         string
	mac         string
	ip          netip.Addr
	arch        string
	archDetail  string
	uuid        string
	hostname    string
	userClass   string
	vendorClass string
	target      string
	bootFile    string
	ignored     bool
	reason      string
	err         string
	errAt       time.Time

	boot     int // boots seen of this machine, 1 for the first
	attempt  int // script fetches after a kernel, within this boot
	start    time.Time
	fromDHCP bool // start is a DHCP packet
	lastSeen time.Time
	reached  [6]time.Time // by rank-1
	xfer     *transfer

	settleDue time.Time // when the wait for another image ends; zero: none
	settleAt  time.Time // end of the transfer that may be the last
	observed  bool      // the boot duration was reported
}

type transfer struct {
	proto   string // "tftp" or "http"
	stage   Stage  // firmware, kernel, initrd, or "file"
	name    string
	bytes   int64
	size    int64 // -1 unknown
	start   time.Time
	updated time.Time
	done    bool
	err     string
}

// New makes a Tracker.
func New(opts Options) *Tracker {
	def := func(v *int, d int) {
		if *v <= 0 {
			*v = d
		}
	}
	defd := func(v *time.Duration, d time.Duration) {
		if *v <= 0 {
			*v = d
		}
	}
	def(&opts.MaxMachines, DefaultMaxMachines)
	def(&opts.MaxEvents, DefaultMaxEvents)
	def(&opts.MaxErrors, DefaultMaxErrors)
	def(&opts.MaxSSEClients, DefaultMaxSSEClients)
	def(&opts.MaxLeases, DefaultMaxLeases)
	defd(&opts.RestartAfter, DefaultRestartAfter)
	defd(&opts.Settle, DefaultSettle)
	defd(&opts.SSEInterval, DefaultSSEInterval)
	defd(&opts.Heartbeat, DefaultHeartbeat)
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Tracker{
		opts:      opts,
		log:       log,
		page:      parsePage(),
		sse:       make(chan struct{}, opts.MaxSSEClients),
		machines:  map[string]*machine{},
		byIP:      map[netip.Addr]string{},
		leaseHist: map[netip.Addr]*leaseHist{},
		events:    ring{max: opts.MaxEvents},
		errors:    ring{max: opts.MaxErrors},
	}
}

// SetConfigSummary replaces the summary shown in the page header.
func (t *Tracker) SetConfigSummary(c ConfigSummary) {
	t.mu.Lock()
	defer t.unlockChanged()
	t.config = c
}

// Error adds a line to the last errors list (the lead feeds warnings here).
func (t *Tracker) Error(source, message string) {
	t.mu.Lock()
	defer t.unlockChanged()
	t.errors.add(Entry{Time: time.Now(), Source: source, Level: "error", Message: message})
}

// unlockChanged publishes a change to the waiting streams and unlocks.
func (t *Tracker) unlockChanged() {
	t.version++
	if t.changed != nil {
		close(t.changed)
		t.changed = nil
	}
	t.mu.Unlock()
}

// changedLocked returns the channel closed at the next change. It is made
// only when a stream asks: most changes have nobody watching.
func (t *Tracker) changedLocked() <-chan struct{} {
	if t.changed == nil {
		t.changed = make(chan struct{})
	}
	return t.changed
}

func eventTime(ts time.Time) time.Time {
	if ts.IsZero() {
		return time.Now()
	}
	return ts
}

// DHCP records a ProxyDHCP decision (dhcpproxy.Server.OnEvent).
func (t *Tracker) DHCP(ev dhcpproxy.Event) {
	if len(ev.MAC) == 0 {
		return
	}
	now := eventTime(ev.Time)
	mac := ev.MAC.String()
	t.mu.Lock()
	defer t.unlockChanged()
	m := t.machines[mac]
	isNew := m == nil
	if isNew {
		m = t.add(mac, now)
		m.mac = mac
	}
	answered := ev.Outcome == dhcpproxy.Answered
	ignored := ev.Outcome == dhcpproxy.IgnoredNoTarget || ev.Outcome == dhcpproxy.IgnoredNoBinary
	if !isNew && ev.MsgType == "discover" && ev.UserClass != "iPXE" && m.rank() == rank(StageFirmware) && t.unsignedEFI(m.bootFile) {
		// The firmware fetched an unsigned EFI program and started over
		// instead of running it: what Secure Boot does.
		msg := fmt.Sprintf("%s fetched %s but its firmware started over without running it: with Secure Boot on, "+
			"firmware refuses unsigned programs; give this machine a target with secure_boot = true (shim and GRUB are signed)", mac, m.bootFile)
		t.errors.add(Entry{Time: now, Source: "dhcp", Level: "warn", MAC: mac, Message: msg})
		// Logged outside the lock: a logger may feed Error back here.
		go t.log.Warn(msg, "mac", mac)
	}
	if isNew || (ev.MsgType == "discover" && t.restarts(m, ev.UserClass == "iPXE", now)) || (answered && m.ignored) {
		t.newBoot(m, now)
		m.fromDHCP = true
	}
	m.lastSeen = now
	if ev.IP.IsValid() {
		t.learnIP(ev.IP.Unmap(), m)
	}
	if ev.Arch != firmware.ArchUnknown {
		m.arch = ev.Arch.String()
	} else if m.arch == "" {
		m.arch = ev.ArchName
	}
	setIf(&m.archDetail, ev.ArchName)
	setIf(&m.uuid, ev.UUID)
	setIf(&m.hostname, ev.Hostname)
	setIf(&m.userClass, ev.UserClass)
	setIf(&m.vendorClass, ev.VendorClass)
	setIf(&m.target, ev.Target)

	e := Entry{Time: now, Source: "dhcp", Level: "info", MAC: mac, IP: addrString(ev.IP)}
	what := fmt.Sprintf("%s on port %d", ev.MsgType, ev.Port)
	if ev.UserClass != "" {
		what += " from " + ev.UserClass
	}
	switch {
	case answered:
		m.ignored, m.reason = false, ""
		m.bootFile = ev.BootFile
		m.reach(StageOffered, now)
		e.Message = fmt.Sprintf("%s: answered with %s", what, ev.BootFile)
		if ev.Target != "" {
			e.Message += " (target " + ev.Target + ")"
		}
	case ignored:
		m.ignored = true
		m.reason = ev.Reason
		if m.reason == "" {
			m.reason = "no boot target for this machine"
			if ev.Outcome == dhcpproxy.IgnoredNoBinary {
				m.reason = "no boot program for its architecture"
			}
		}
		e.Level = "warn"
		e.Message = fmt.Sprintf("%s: ignored: %s", what, m.reason)
	default:
		e.Level = "error"
		e.Message = fmt.Sprintf("%s: %s", what, strings.ReplaceAll(string(ev.Outcome), "_", " "))
		if ev.Reason != "" {
			e.Message += ": " + ev.Reason
		}
		m.setErr(e.Message, now)
	}
	t.events.add(e)
}

// canonicalMAC returns mac in net.HardwareAddr's form (lower-case hex,
// colons), without parsing when it is already in that form, as httpboot's
// are; "" stays "". ok is false for a malformed address.
func canonicalMAC(mac string) (string, bool) {
	if mac == "" {
		return "", true
	}
	if len(mac) == 17 {
		canonical := true
		for i := 0; i < len(mac) && canonical; i++ {
			c := mac[i]
			if i%3 == 2 {
				canonical = c == ':'
			} else {
				canonical = '0' <= c && c <= '9' || 'a' <= c && c <= 'f'
			}
		}
		if canonical {
			return mac, true
		}
	}
	hw, err := net.ParseMAC(mac)
	if err != nil {
		return "", false
	}
	return hw.String(), true
}

func setIf(dst *string, v string) {
	if v != "" {
		*dst = v
	}
}

func addrString(a netip.Addr) string {
	if !a.IsValid() {
		return ""
	}
	return a.Unmap().String()
}

// unsignedEFI says whether name is an EFI boot program without a signature.
func (t *Tracker) unsignedEFI(name string) bool {
	for _, b := range t.config.BootPrograms {
		if b.Name == name {
			return !b.Signed && strings.HasPrefix(b.Arch, "efi")
		}
	}
	return false
}

// restarts says whether a DISCOVER begins a new boot of m (see the package
// comment).
func (t *Tracker) restarts(m *machine, fromIPXE bool, now time.Time) bool {
	r := m.rank()
	switch {
	case r == rank(StageBooted), now.Sub(m.lastSeen) > t.opts.RestartAfter:
		return true
	case !fromIPXE:
		return r >= rank(StageFirmware)
	default:
		return r >= rank(StageKernel)
	}
}

// add makes a row, dropping the least recently seen one beyond the bound.
func (t *Tracker) add(key string, now time.Time) *machine {
	m := &machine{key: key, start: now, lastSeen: now, boot: 1}
	t.machines[key] = m
	for len(t.machines) > t.opts.MaxMachines {
		var old *machine
		for _, o := range t.machines {
			if o != m && (old == nil || o.lastSeen.Before(old.lastSeen)) {
				old = o
			}
		}
		t.remove(old)
	}
	return m
}

func (t *Tracker) remove(m *machine) {
	m.cancelSettle()
	delete(t.machines, m.key)
	if m.ip.IsValid() && t.byIP[m.ip] == m.key {
		delete(t.byIP, m.ip)
	}
}

// newBoot resets m for a boot that starts now; the machine's identity stays.
func (t *Tracker) newBoot(m *machine, now time.Time) {
	m.cancelSettle()
	if !m.start.IsZero() && m.rank() > 0 {
		m.boot++
	}
	m.start, m.fromDHCP, m.attempt, m.observed = now, false, 0, false
	m.reached = [6]time.Time{}
	m.xfer = nil
	m.err, m.errAt = "", time.Time{}
	m.userClass, m.vendorClass, m.bootFile, m.target = "", "", "", ""
	m.ignored, m.reason = false, ""
}

// learnIP records that m has address ip, merging the row kept for that
// address while its MAC was unknown.
func (t *Tracker) learnIP(ip netip.Addr, m *machine) {
	if k, ok := t.byIP[ip]; ok && k != m.key {
		if o := t.machines[k]; o != nil && o.mac == "" {
			t.remove(o)
			// A row older than this boot belongs to an earlier one.
			if !o.lastSeen.Before(m.start) {
				m.merge(o)
			}
		}
	}
	if m.ip.IsValid() && m.ip != ip && t.byIP[m.ip] == m.key {
		delete(t.byIP, m.ip)
	}
	m.ip = ip
	t.byIP[ip] = m.key
}

// merge takes in what an IP-only row saw of the same boot.
func (m *machine) merge(o *machine) {
	for i, at := range o.reached {
		if !at.IsZero() && (m.reached[i].IsZero() || at.Before(m.reached[i])) {
			m.reached[i] = at
		}
	}
	if o.xfer != nil && (m.xfer == nil || o.xfer.updated.After(m.xfer.updated)) {
		m.xfer = o.xfer
	}
	if o.err != "" && o.errAt.After(m.errAt) {
		m.err, m.errAt = o.err, o.errAt
	}
	if o.lastSeen.After(m.lastSeen) {
		m.lastSeen = o.lastSeen
	}
	if !o.settleDue.IsZero() {
		// Rare (an IP-only row has no kernel), but keep the pending boot.
		o.cancelSettle()
	}
}

// byAddr finds the row for an event that carries only an address.
func (t *Tracker) byAddr(ip netip.Addr, now time.Time) *machine {
	var m *machine
	if k, ok := t.byIP[ip]; ok {
		m = t.machines[k]
	}
	if m == nil {
		key := "ip:" + ip.String()
		m = t.add(key, now)
		m.ip = ip
		t.byIP[ip] = key
		return m
	}
	// Only boot programs are fetched by address alone: after a finished or
	// stale boot, that is a new boot whose DHCP we did not see.
	if m.rank() == rank(StageBooted) || now.Sub(m.lastSeen) > t.opts.RestartAfter {
		t.newBoot(m, now)
	}
	return m
}

func (m *machine) rank() int {
	for i := len(m.reached) - 1; i >= 0; i-- {
		if !m.reached[i].IsZero() {
			return i + 1
		}
	}
	return 0
}

func (m *machine) stage() Stage {
	if m.ignored {
		return StageIgnored
	}
	if r := m.rank(); r > 0 {
		return progressStages()[r-1]
	}
	return ""
}

// reach records the first time m reached s in this boot.
func (m *machine) reach(s Stage, at time.Time) {
	if r := rank(s); r > 0 && m.reached[r-1].IsZero() {
		m.reached[r-1] = at
	}
}

func (m *machine) setErr(msg string, at time.Time) {
	m.err, m.errAt = msg, at
}

// cancelSettle ends m's wait; the shared timer, if it fires for nothing,
// just re-arms for the next machine.
func (m *machine) cancelSettle() { m.settleDue = time.Time{} }

// TFTP records a TFTP transfer's start or end (tftpd.Config.OnTransfer).
// Every file fetched over TFTP is taken for a boot program.
func (t *Tracker) TFTP(tr tftpd.Transfer) {
	ip := tr.Client.Addr().Unmap()
	if !ip.IsValid() {
		return
	}
	at := eventTime(tr.Start)
	if tr.Done {
		at = at.Add(tr.Duration)
	}
	t.mu.Lock()
	defer t.unlockChanged()
	e := Entry{Time: at, Source: "tftp", Level: "info", IP: ip.String()}
	if tr.Write {
		e.Level, e.Message = "warn", fmt.Sprintf("write request for %s refused: the server is read-only", tr.File)
		t.events.add(e)
		return
	}
	m := t.byAddr(ip, at)
	m.lastSeen = at
	e.MAC = m.mac
	if !tr.Done {
		m.reach(StageFirmware, at)
		m.xfer = &transfer{proto: "tftp", stage: StageFirmware, name: tr.File, size: tr.Size, start: at, updated: at}
		e.Message = fmt.Sprintf("%s: started (%s)", tr.File, sizeText(tr.Size))
		t.events.add(e)
		return
	}
	x := m.xfer
	if x == nil || x.proto != "tftp" || x.name != tr.File || x.done {
		x = nil
	}
	switch tr.Outcome {
	case tftpd.OutcomeOK:
		if x == nil {
			x = &transfer{proto: "tftp", stage: StageFirmware, name: tr.File, size: tr.Size, start: eventTime(tr.Start)}
		}
		x.bytes, x.updated, x.done = tr.Bytes, at, true
		m.xfer = x
		m.reach(StageFirmware, x.start)
		e.Message = fmt.Sprintf("%s: %s", tr.File, sentText(tr.Bytes, tr.Duration))
	case tftpd.OutcomeAbortedProbe:
		// EDK2 asks for the size first, then reads: not worth a line, and
		// the read that follows replaces the transfer shown.
		if x != nil {
			m.xfer = nil
		}
		return
	default:
		e.Level = "error"
		e.Message = fmt.Sprintf("%s: %s", tr.File, strings.ReplaceAll(string(tr.Outcome), "_", " "))
		if tr.Err != nil {
			e.Message += ": " + tr.Err.Error()
		}
		if x != nil {
			x.bytes, x.updated, x.done, x.err = tr.Bytes, at, true, e.Message
		}
		m.setErr("TFTP "+e.Message, at)
	}
	t.events.add(e)
}

// HTTP records an httpboot event (httpboot.Options.OnEvent).
func (t *Tracker) HTTP(ev httpboot.Event) {
	at := eventTime(ev.Time)
	ip := ev.IP.Unmap()
	mac, ok := canonicalMAC(ev.MAC)
	if !ok {
		return
	}
	if mac == "" && !ip.IsValid() {
		return
	}
	t.mu.Lock()
	defer t.unlockChanged()
	var m *machine
	if mac != "" {
		m = t.machines[mac]
		if m == nil {
			m = t.add(mac, at)
			m.mac = mac
		} else if ev.Stage == httpboot.StageScript && at.Sub(m.lastSeen) > t.opts.RestartAfter {
			// A boot whose DHCP we did not see (the network's DHCP server
			// names the script itself).
			t.newBoot(m, at)
		}
		if ip.IsValid() {
			t.learnIP(ip, m)
		}
	} else {
		m = t.byAddr(ip, at)
	}
	m.lastSeen = at
	e := Entry{Time: at, Source: "http", Level: "info", MAC: m.mac, IP: addrString(ip)}
	switch ev.Stage {
	case httpboot.StageScript:
		if m.rank() >= rank(StageKernel) {
			// iPXE fetched its script again: its boot failed and it retries.
			m.cancelSettle()
			m.attempt++
			for i := rank(StageKernel) - 1; i < len(m.reached); i++ {
				m.reached[i] = time.Time{}
			}
		}
		m.ignored, m.reason = false, ""
		setIf(&m.target, ev.Target)
		m.reach(StageScript, at)
		e.Message = "iPXE script"
		if ev.Target != "" {
			e.Message += " for target " + ev.Target
		}
		if ev.Status >= 400 || ev.Err != "" {
			e.Level = "error"
			e.Message += ": " + statusText(ev.Status, ev.Err)
			m.setErr(e.Message, at)
		}
		t.events.add(e)
	case httpboot.StageFirmware, httpboot.StageKernel, httpboot.StageInitrd, httpboot.StageFile:
		t.httpTransfer(m, ev, at, e)
	}
}

func (t *Tracker) httpTransfer(m *machine, ev httpboot.Event, at time.Time, e Entry) {
	stage := Stage(ev.Stage)
	x := m.xfer
	same := x != nil && x.proto == "http" && x.name == ev.Name && x.stage == stage && !x.done
	switch ev.Phase {
	case "start":
		m.cancelSettle()
		m.reach(stage, at)
		m.xfer = &transfer{proto: "http", stage: stage, name: ev.Name, size: ev.Size, start: at, updated: at}
		e.Message = string(stage) + " " + ev.Name + ": started (" + sizeText(ev.Size) + ")"
		t.events.add(e)
	case "progress":
		if same {
			x.bytes, x.updated = ev.Bytes, at
			if ev.Size > 0 {
				x.size = ev.Size
			}
		}
	case "done":
		if !same {
			// A done without its start: httpboot reports a short transfer
			// once, with its start time; otherwise the start came before
			// the tracker existed, or another transfer started meanwhile.
			start := at
			if !ev.Start.IsZero() && ev.Start.Before(at) {
				start = ev.Start
			}
			m.cancelSettle()
			x = &transfer{proto: "http", stage: stage, name: ev.Name, size: ev.Size, start: start}
			m.reach(stage, start)
		}
		x.bytes, x.updated, x.done = ev.Bytes, at, true
		if ev.Size > 0 {
			x.size = ev.Size
		}
		complete := ev.Err == "" && (ev.Status == 0 || ev.Status == 200) && x.size > 0 && ev.Bytes >= x.size
		if ev.Err != "" || ev.Status >= 400 {
			x.err = statusText(ev.Status, ev.Err)
		}
		if same || m.xfer == nil {
			m.xfer = x
		}
		d := at.Sub(x.start)
		switch {
		case x.err != "":
			e.Level = "error"
			e.Message = fmt.Sprintf("%s %s: failed after %s of %s: %s", stage, ev.Name, sizeText(ev.Bytes), sizeText(x.size), x.err)
			m.setErr(e.Message, at)
		case complete:
			e.Message = string(stage) + " " + ev.Name + ": " + sentText(ev.Bytes, d)
			if stage == StageKernel || stage == StageInitrd {
				t.armSettle(m, at)
			}
		default:
			e.Message = fmt.Sprintf("%s %s: sent %s of %s", stage, ev.Name, sizeText(ev.Bytes), sizeText(x.size))
		}
		t.events.add(e)
	}
}

func statusText(code int, err string) string {
	switch {
	case err != "" && code >= 400:
		return fmt.Sprintf("HTTP %d: %s", code, err)
	case err != "":
		return err
	}
	return fmt.Sprintf("HTTP %d", code)
}

// armSettle starts the wait after which m counts as booted, unless another
// image request comes first.
//
// All machines share one timer, armed for the earliest wait. A timer per
// transfer would be simpler, but each new earliest timer wakes the Go
// runtime's network poller (an eventfd write and a thread wake-up); with
// one timer, a machine fetching file after file moves its own deadline
// without touching the timer, which fires at most once per Settle and finds
// the new deadline (docs/benchmarks.md measured the per-request cost).
func (t *Tracker) armSettle(m *machine, at time.Time) {
	m.settleAt = at
	m.settleDue = time.Now().Add(t.opts.Settle)
	if t.settleNext.IsZero() || m.settleDue.Before(t.settleNext) {
		t.armSettleTimer(m.settleDue)
	}
}

// armSettleTimer makes the settle timer fire at due; t.mu is held.
func (t *Tracker) armSettleTimer(due time.Time) {
	t.settleNext = due
	if t.settleTimer == nil {
		t.settleTimer = time.AfterFunc(time.Until(due), t.settleTick)
		return
	}
	t.settleTimer.Reset(time.Until(due))
}

// settleTick calls booted every machine whose wait has ended, and arms the
// timer for the next one.
func (t *Tracker) settleTick() {
	t.mu.Lock()
	now := time.Now()
	var next time.Time
	var boots []Boot
	settled := 0
	for _, m := range t.machines {
		switch {
		case m.settleDue.IsZero():
		case !m.settleDue.After(now):
			settled++
			if b, report := t.settledLocked(m); report {
				boots = append(boots, b)
			}
		case next.IsZero() || m.settleDue.Before(next):
			next = m.settleDue
		}
	}
	t.settleNext = time.Time{}
	if !next.IsZero() {
		t.armSettleTimer(next)
	}
	if settled == 0 {
		t.mu.Unlock()
		return
	}
	t.unlockChanged()
	for _, b := range boots {
		if t.opts.Metrics != nil {
			t.opts.Metrics.BootDuration.Observe(b.Duration.Seconds())
		}
		if t.opts.OnBooted != nil {
			t.opts.OnBooted(b)
		}
		t.log.Info("machine booted", "mac", b.MAC, "ip", addrString(b.IP), "target", b.Target, "duration", b.Duration.Round(time.Millisecond))
	}
}

// settledLocked records that m booted; report says whether the boot is
// reported (metrics, OnBooted, the log) once t.mu is released.
func (t *Tracker) settledLocked(m *machine) (b Boot, report bool) {
	m.settleDue = time.Time{}
	m.reach(StageBooted, m.settleAt)
	d := m.settleAt.Sub(m.start)
	report = m.fromDHCP && !m.observed
	m.observed = true
	b = Boot{MAC: m.mac, IP: m.ip, Target: m.target, Start: m.start, Booted: m.settleAt, Duration: d}
	msg := "booted"
	if m.fromDHCP {
		msg = fmt.Sprintf("booted %s after its first DHCP packet", secs(d))
	}
	t.events.add(Entry{Time: m.settleAt, Source: "boot", Level: "info", MAC: m.mac, IP: addrString(m.ip), Message: msg})
	return b, report
}

// Snapshot returns the current state, newest boots first.
func (t *Tracker) Snapshot() Snapshot {
	recs := t.leaseRecords()
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.snapshotLocked(recs)
}

// leaseRecords reads the DHCP server's pool, outside the tracker's lock:
// the pool has a lock of its own.
func (t *Tracker) leaseRecords() []dhcpserver.Lease {
	t.mu.Lock()
	src := t.leaseSrc
	t.mu.Unlock()
	if src == nil {
		return nil
	}
	return src()
}

func (t *Tracker) snapshotLocked(recs []dhcpserver.Lease) Snapshot {
	now := time.Now()
	s := Snapshot{
		Now:      now,
		Version:  t.version,
		Config:   t.config,
		Machines: make([]Machine, 0, len(t.machines)),
		Events:   t.events.newestFirst(),
		Errors:   t.errors.newestFirst(),
		Leases:   t.leaseTable(recs, now),
	}
	for _, m := range t.machines {
		row := m.row()
		s.Machines = append(s.Machines, row)
		switch {
		case row.Stage == StageIgnored:
			s.Counts.Ignored++
		case row.Stage == StageBooted:
			s.Counts.Booted++
		default:
			s.Counts.Booting++
		}
	}
	sort.Slice(s.Machines, func(i, j int) bool {
		a, b := s.Machines[i], s.Machines[j]
		if !a.Start.Equal(b.Start) {
			return a.Start.After(b.Start)
		}
		return a.Key < b.Key
	})
	return s
}

func (m *machine) row() Machine {
	r := Machine{
		Key: m.key, MAC: m.mac, IP: addrString(m.ip), Arch: m.arch, ArchDetail: m.archDetail,
		UUID: m.uuid, Hostname: m.hostname, UserClass: m.userClass, VendorClass: m.vendorClass,
		Target: m.target, BootFile: m.bootFile, Stage: m.stage(), Reason: m.reason,
		Error: m.err, ErrorAt: m.errAt, Boot: m.boot, Attempt: m.attempt,
		Start: m.start, FromDHCP: m.fromDHCP, LastSeen: m.lastSeen,
	}
	for i, at := range m.reached {
		if !at.IsZero() {
			r.Stages = append(r.Stages, StageTime{Stage: progressStages()[i], At: at, Offset: at.Sub(m.start).Seconds()})
		}
	}
	if b := m.reached[rank(StageBooted)-1]; !b.IsZero() {
		r.BootSeconds = b.Sub(m.start).Seconds()
	}
	if x := m.xfer; x != nil {
		tr := &Transfer{Proto: x.proto, Stage: x.stage, Name: x.name, Bytes: x.bytes, Size: x.size,
			Start: x.start, Updated: x.updated, Done: x.done, Error: x.err}
		if d := x.updated.Sub(x.start); d >= minTimed {
			tr.BytesPerSec = float64(x.bytes) / d.Seconds()
		}
		r.Transfer = tr
	}
	return r
}

// ring keeps the newest max entries.
type ring struct {
	max  int
	buf  []Entry
	next int
}

func (r *ring) add(e Entry) {
	if len(r.buf) < r.max {
		r.buf = append(r.buf, e)
		return
	}
	r.buf[r.next] = e
	r.next = (r.next + 1) % r.max
}

func (r *ring) newestFirst() []Entry {
	out := make([]Entry, 0, len(r.buf))
	for i := range r.buf {
		out = append(out, r.buf[(r.next+len(r.buf)-1-i)%len(r.buf)])
	}
	return out
}

func sizeText(n int64) string {
	switch {
	case n < 0:
		return "size unknown"
	case n < 1000:
		return strconv.FormatInt(n, 10) + " B"
	case n < 1000*1000:
		return strconv.FormatFloat(float64(n)/1e3, 'f', 1, 64) + " kB"
	}
	return strconv.FormatFloat(float64(n)/1e6, 'f', 1, 64) + " MB"
}

// sentText is "sent 12.4 MB in 0.40s (30.8 MB/s)"; no rate for transfers
// too short to time.
func sentText(n int64, d time.Duration) string {
	s := "sent " + sizeText(n) + " in " + secs(d)
	if d >= minTimed {
		s += " (" + strconv.FormatFloat(float64(n)/d.Seconds()/1e6, 'f', 1, 64) + " MB/s)"
	}
	return s
}

// minTimed is the shortest transfer whose speed means something.
const minTimed = 50 * time.Millisecond

func secs(d time.Duration) string {
	if d < 10*time.Second {
		return strconv.FormatFloat(d.Seconds(), 'f', 2, 64) + "s"
	}
	return strconv.FormatFloat(d.Seconds(), 'f', 1, 64) + "s"
}
