package status

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/bootserve/bootserve/dhcpserver"
)

// The DHCP leases section exists only in full-DHCP mode. The DHCP server's
// pool is the truth about which addresses are held right now
// (Tracker.WatchLeases); its lease events (Tracker.Lease) add what the pool
// forgets: who released or declined an address, whose lease ran out, and
// whether the client network-booted.

// DefaultMaxLeases bounds the lease rows shown and the lease history kept.
const DefaultMaxLeases = 1024

// LeaseState is what a row of the leases table means.
type LeaseState string

// Lease states. Offered, bound and conflict are the DHCP server's own
// records; declined is a conflict a client reported; released and expired
// are addresses the pool no longer holds for their last client.
const (
	LeaseOffered  LeaseState = "offered"
	LeaseBound    LeaseState = "bound"
	LeaseDeclined LeaseState = "declined" // the client found the address in use
	LeaseConflict LeaseState = "conflict" // a host without a lease answered ping
	LeaseReleased LeaseState = "released"
	LeaseExpired  LeaseState = "expired"
)

// Leases is the DHCP server's address table, in the Snapshot only when the
// DHCP server runs.
type Leases struct {
	// Rows are sorted by address; at most Options.MaxLeases, current
	// records first, then the most recently ended.
	Rows []Lease `json:"rows"`
	// Hidden counts the rows left out by that bound.
	Hidden int `json:"hidden"`
	// Bound and Offered count the addresses held now, shown or not.
	Bound   int `json:"bound"`
	Offered int `json:"offered"`
}

// Lease is one address.
type Lease struct {
	IP  string `json:"ip"`
	MAC string `json:"mac,omitempty"`
	// Hostname is what the client sent (option 12): escape it.
	Hostname string     `json:"hostname,omitempty"`
	State    LeaseState `json:"state"`
	// Expires is when the offer, lease or conflict ends; for released and
	// expired rows, when it ended.
	Expires time.Time `json:"expires,omitzero"`
	// NetBoot: the client was given a boot file or its boot shows in the
	// machines table; BootStage is that boot's stage.
	NetBoot   bool  `json:"netboot"`
	BootStage Stage `json:"boot_stage,omitempty"`
	// Seen is the client's last request for this address, if any since
	// bootserve started.
	Seen time.Time `json:"seen,omitzero"`
}

// leaseHist is what the events told about one address.
type leaseHist struct {
	mac      string
	hostname string
	state    LeaseState // offered, bound, declined or released
	expires  time.Time  // of the lease (ACK), or the end (release)
	seen     time.Time
	netboot  bool
}

// WatchLeases makes the page show the DHCP server's leases: src (the
// server's Leases method) is read whenever the page's state is rebuilt.
// Call it once, before serving.
func (t *Tracker) WatchLeases(src func() []dhcpserver.Lease) {
	t.mu.Lock()
	defer t.unlockChanged()
	t.leaseSrc = src
}

// Lease records a DHCP server request and its answer
// (dhcpserver.Server.OnLease).
func (t *Tracker) Lease(ev dhcpserver.LeaseEvent) {
	now := eventTime(ev.Time)
	mac := ""
	if len(ev.MAC) > 0 {
		mac = ev.MAC.String()
	}
	ip := ev.IP.Unmap()
	t.mu.Lock()
	defer t.unlockChanged()
	var state LeaseState
	switch ev.Outcome {
	case dhcpserver.Offered:
		state = LeaseOffered
	case dhcpserver.Acked:
		state = LeaseBound
	case dhcpserver.Declined:
		state = LeaseDeclined
	case dhcpserver.Released:
		state = LeaseReleased
	}
	renewal := false
	if state != "" && ip.IsValid() {
		h := t.leaseHist[ip]
		if h == nil || h.mac != mac {
			h = &leaseHist{mac: mac}
			t.addLeaseHist(ip, h)
		}
		renewal = state == LeaseBound && h.state == LeaseBound && now.Before(h.expires)
		h.state, h.seen = state, now
		setIf(&h.hostname, ev.Hostname)
		switch state {
		case LeaseBound:
			h.expires = ev.Expires
		case LeaseReleased:
			h.expires = now
		}
		if ev.BootFile != "" {
			h.netboot = true
		}
	}
	// The events list gets what changes a lease or needs the admin;
	// offers, renewals and refused requests would drown the boots.
	e := Entry{Time: now, Source: "dhcp", Level: "info", MAC: mac, IP: addrString(ip)}
	switch ev.Outcome {
	case dhcpserver.Acked:
		if renewal {
			return
		}
		e.Message = fmt.Sprintf("leased %s until %s", ip, ev.Expires.Local().Format("15:04:05"))
		if ev.Hostname != "" {
			e.Message += " to " + ev.Hostname
		}
	case dhcpserver.Declined:
		e.Level, e.Message = "warn", fmt.Sprintf("declined %s: another host uses it", ip)
	case dhcpserver.Released:
		e.Message = fmt.Sprintf("released %s", ip)
	case dhcpserver.NoAddress, dhcpserver.LeaseWriteFailed:
		e.Level, e.Message = "error", fmt.Sprintf("%s: %s", strings.ReplaceAll(string(ev.Outcome), "_", " "), ev.Reason)
		t.errors.add(e)
	default:
		return
	}
	t.events.add(e)
}

// addLeaseHist keeps at most MaxLeases addresses, dropping the one heard
// of least recently.
func (t *Tracker) addLeaseHist(ip netip.Addr, h *leaseHist) {
	t.leaseHist[ip] = h
	for len(t.leaseHist) > t.opts.MaxLeases {
		var old netip.Addr
		var oldSeen time.Time
		for a, o := range t.leaseHist {
			if a != ip && (!old.IsValid() || o.seen.Before(oldSeen)) {
				old, oldSeen = a, o.seen
			}
		}
		delete(t.leaseHist, old)
	}
}

// leaseTable merges the pool's records (recs) with the lease history; nil
// when the DHCP server does not run. It arms a change at the next expiry,
// so the page shows it without waiting for another event.
func (t *Tracker) leaseTable(recs []dhcpserver.Lease, now time.Time) *Leases {
	if t.leaseSrc == nil {
		return nil
	}
	lt := &Leases{Rows: []Lease{}}
	type cand struct {
		Lease
		ip      netip.Addr
		current bool
	}
	var all []cand
	held := map[netip.Addr]bool{}
	var next time.Time
	for _, r := range recs {
		ip := r.IP.Unmap()
		if !ip.IsValid() || held[ip] || !now.Before(r.Expires) {
			continue
		}
		held[ip] = true
		row := Lease{IP: ip.String(), Hostname: r.Hostname, Expires: r.Expires}
		if len(r.MAC) > 0 {
			row.MAC = r.MAC.String()
		}
		h := t.leaseHist[ip]
		switch r.State {
		case dhcpserver.StateOffered:
			row.State = LeaseOffered
			lt.Offered++
		case dhcpserver.StateBound:
			row.State = LeaseBound
			lt.Bound++
		default:
			// The pool forgets who declined: the history remembers.
			row.State = LeaseConflict
			if h != nil && h.state == LeaseDeclined {
				row.State, row.MAC = LeaseDeclined, h.mac
			}
		}
		if h != nil && h.mac == row.MAC {
			row.Seen, row.NetBoot = h.seen, h.netboot
			if row.Hostname == "" {
				row.Hostname = h.hostname
			}
			if row.State == LeaseBound {
				// What ran out is this lease, if it is not renewed.
				h.expires = r.Expires
			}
		}
		if next.IsZero() || r.Expires.Before(next) {
			next = r.Expires
		}
		all = append(all, cand{row, ip, true})
	}
	for ip, h := range t.leaseHist {
		if held[ip] {
			continue
		}
		row := Lease{IP: ip.String(), MAC: h.mac, Hostname: h.hostname, State: LeaseExpired, Expires: h.expires, Seen: h.seen, NetBoot: h.netboot}
		if h.state == LeaseReleased {
			row.State = LeaseReleased
		}
		if row.Expires.IsZero() || row.Expires.After(now) {
			// An offer not taken, or a lease the server dropped early.
			row.Expires = h.seen
		}
		all = append(all, cand{row, ip, false})
	}
	for i := range all {
		r := &all[i].Lease
		if m := t.machines[r.MAC]; r.MAC != "" && m != nil {
			if s := m.stage(); s != "" {
				r.BootStage = s
				r.NetBoot = r.NetBoot || s != StageIgnored
			}
		}
	}
	if len(all) > t.opts.MaxLeases {
		slices.SortFunc(all, func(a, b cand) int {
			if a.current != b.current {
				if a.current {
					return -1
				}
				return 1
			}
			return b.Expires.Compare(a.Expires)
		})
		lt.Hidden = len(all) - t.opts.MaxLeases
		all = all[:t.opts.MaxLeases]
	}
	slices.SortFunc(all, func(a, b cand) int { return a.ip.Compare(b.ip) })
	for _, c := range all {
		lt.Rows = append(lt.Rows, c.Lease)
	}
	if !next.IsZero() {
		t.wakeAt(next)
	}
	return lt
}

// wakeAt publishes a change at time at (the end of a lease or offer), once
// per distinct time.
func (t *Tracker) wakeAt(at time.Time) {
	if t.wake != nil && !t.wakeAt0.After(at) {
		return
	}
	if t.wake != nil {
		t.wake.Stop()
	}
	t.wakeAt0 = at
	t.wake = time.AfterFunc(time.Until(at)+10*time.Millisecond, func() {
		t.mu.Lock()
		if t.wakeAt0.Equal(at) {
			t.wake = nil
		}
		t.unlockChanged()
	})
}
