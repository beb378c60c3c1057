package dhcpserver

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"sync"
	"time"
)

// LeaseState says what an address record means.
type LeaseState string

// States of an address record.
const (
	// StateOffered: held for a client between OFFER and REQUEST.
	StateOffered LeaseState = "offered"
	// StateBound: ACKed to a client until Expires.
	StateBound LeaseState = "bound"
	// StateConflict: someone not leased it answered ping, or a client
	// DECLINEd it; not handed out until Expires.
	StateConflict LeaseState = "conflict"
)

// Lease is one address record. A record whose Expires has passed leaves
// the address free, but remembers its last client, so that client gets the
// same address back if nobody took it meanwhile.
type Lease struct {
	IP       netip.Addr
	MAC      net.HardwareAddr // nil for conflicts
	ClientID []byte           // option 61, nil when the client sent none
	Hostname string
	Expires  time.Time
	State    LeaseState
}

func (l *Lease) active(now time.Time) bool { return now.Before(l.Expires) }

// client identifies a requester. The MAC is what owns an address: two
// machines cloned with one machine-id send the same client identifier, and
// must not share an address. The client identifier finds a previous,
// expired lease when the MAC changed (a swapped NIC).
type client struct {
	mac      net.HardwareAddr
	id       []byte
	hostname string
}

func (l *Lease) ownedBy(c client) bool {
	return l.State != StateConflict && bytes.Equal(l.MAC, c.mac)
}

// errPoolExhausted means no address can be offered.
var errPoolExhausted = errors.New("no free address in the pool")

// pool allocates addresses. Every method takes the time, so tests drive
// the clock.
type pool struct {
	start, end netip.Addr
	sn         subnet
	leaseTime  time.Duration
	// offerHold keeps an offered address for its client until it
	// REQUESTs; conflictHold keeps a conflicting address out of use.
	offerHold, conflictHold time.Duration
	reservedTo              map[netip.Addr]string // IP → MAC
	reservedIP              map[string]netip.Addr // MAC → IP

	mu     sync.Mutex
	leases map[netip.Addr]*Lease
}

func newPool(cfg *Config, sn subnet) *pool {
	p := &pool{
		start: cfg.PoolStart, end: cfg.PoolEnd, sn: sn, leaseTime: cfg.leaseTime(),
		offerHold: time.Minute, conflictHold: 10 * time.Minute,
		reservedTo: map[netip.Addr]string{}, reservedIP: map[string]netip.Addr{},
		leases: map[netip.Addr]*Lease{},
	}
	for _, r := range cfg.Reservations {
		p.reservedTo[r.IP] = r.MAC.String()
		p.reservedIP[r.MAC.String()] = r.IP
	}
	return p
}

func (p *pool) size() int { return poolSize(p.start, p.end) }

func (p *pool) inPool(a netip.Addr) bool { return a.Is4() && !a.Less(p.start) && !p.end.Less(a) }

// assignable says whether a may ever be given to c: a pool address nobody
// else has reserved, or c's own reservation.
func (p *pool) assignable(a netip.Addr, c client) bool {
	if m, ok := p.reservedTo[a]; ok {
		return m == c.mac.String()
	}
	return p.inPool(a) && a != p.sn.server
}

// freeFor says whether a is not held by anyone but c right now.
func (p *pool) freeFor(a netip.Addr, c client, now time.Time) bool {
	l := p.leases[a]
	return l == nil || !l.active(now) || l.ownedBy(c)
}

// previous is c's most relevant record: an active one first, then the
// most recent expired one by MAC, then by client identifier.
func (p *pool) previous(c client, now time.Time) *Lease {
	var best *Lease
	rank := func(l *Lease) int {
		switch {
		case l.ownedBy(c) && l.active(now):
			return 3
		case l.ownedBy(c):
			return 2
		case l.State != StateConflict && len(c.id) > 0 && bytes.Equal(l.ClientID, c.id) && !l.active(now):
			return 1
		}
		return 0
	}
	for _, l := range p.leases {
		r := rank(l)
		if r == 0 {
			continue
		}
		if best == nil || r > rank(best) || (r == rank(best) && l.Expires.After(best.Expires)) {
			best = l
		}
	}
	return best
}

// choose picks the address to offer c and holds it for c. check says the
// address has no current lease of c's, so it must be checked for squatters
// before it is offered.
func (p *pool) choose(c client, requested netip.Addr, now time.Time) (addr netip.Addr, check bool, err error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	ok := func(a netip.Addr) bool { return a.IsValid() && p.assignable(a, c) && p.freeFor(a, c, now) }
	if r, has := p.reservedIP[c.mac.String()]; has && ok(r) {
		return r, p.hold(r, c, now), nil
	}
	if l := p.previous(c, now); l != nil && ok(l.IP) {
		return l.IP, p.hold(l.IP, c, now), nil
	}
	if ok(requested) {
		return requested, p.hold(requested, c, now), nil
	}
	// Addresses never used first, so expired leases stay with their
	// clients as long as possible.
	for a := p.start; ; a = a.Next() {
		if _, used := p.leases[a]; !used && p.assignable(a, c) {
			return a, p.hold(a, c, now), nil
		}
		if a == p.end {
			break
		}
	}
	var oldest *Lease
	for _, l := range p.leases {
		if l.active(now) || !p.assignable(l.IP, c) {
			continue
		}
		if oldest == nil || l.Expires.Before(oldest.Expires) || (l.Expires.Equal(oldest.Expires) && l.IP.Less(oldest.IP)) {
			oldest = l
		}
	}
	if oldest != nil {
		return oldest.IP, p.hold(oldest.IP, c, now), nil
	}
	return netip.Addr{}, false, errPoolExhausted
}

// hold records a as offered to c, unless c holds it already; it says
// whether a was not c's before (and so must be checked).
func (p *pool) hold(a netip.Addr, c client, now time.Time) bool {
	if l := p.leases[a]; l != nil && l.ownedBy(c) && l.active(now) {
		if l.State == StateOffered {
			l.Expires = now.Add(p.offerHold)
		}
		return false
	}
	p.leases[a] = &Lease{IP: a, MAC: c.mac, ClientID: c.id, Hostname: c.hostname, State: StateOffered, Expires: now.Add(p.offerHold)}
	return true
}

// offer chooses an address for a DISCOVER. Addresses with no current lease
// of the client's are checked with inUse first (without the lock held: it
// waits for ping replies); one in use is marked conflicting and the next is
// tried. It returns the conflicts found, for counting.
func (p *pool) offer(ctx context.Context, c client, requested netip.Addr, now func() time.Time, inUse func(context.Context, netip.Addr) bool) (netip.Addr, []netip.Addr, error) {
	var conflicts []netip.Addr
	// Each try costs a ping timeout; a client retries its DISCOVER after
	// a few seconds anyway.
	for range 4 {
		a, check, err := p.choose(c, requested, now())
		if err != nil || !check || inUse == nil || !inUse(ctx, a) {
			return a, conflicts, err
		}
		if ctx.Err() != nil {
			return netip.Addr{}, conflicts, ctx.Err()
		}
		p.conflict(a, now())
		conflicts = append(conflicts, a)
	}
	return netip.Addr{}, conflicts, fmt.Errorf("%d addresses in a row are in use by hosts without a lease", len(conflicts))
}

// conflict marks a as in use by someone unknown.
func (p *pool) conflict(a netip.Addr, now time.Time) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.leases[a] = &Lease{IP: a, State: StateConflict, Expires: now.Add(p.conflictHold)}
}

// errNak explains a refused REQUEST; the reason goes in the log.
type errNak struct{ reason string }

func (e errNak) Error() string { return e.reason }

// bind leases a to c (a REQUEST), and drops c's other records. The error
// (an errNak) says why the request must be refused.
func (p *pool) bind(c client, a netip.Addr, now time.Time) (Lease, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	switch {
	case !a.Is4() || !p.sn.prefix.Contains(a):
		return Lease{}, errNak{fmt.Sprintf("%v is not on this network (%v)", a, p.sn.prefix)}
	case !p.assignable(a, c):
		if m, ok := p.reservedTo[a]; ok {
			return Lease{}, errNak{fmt.Sprintf("%v is reserved for %s", a, m)}
		}
		return Lease{}, errNak{fmt.Sprintf("%v is outside the pool %v-%v", a, p.start, p.end)}
	case !p.freeFor(a, c, now):
		l := p.leases[a]
		if l.State == StateConflict {
			return Lease{}, errNak{fmt.Sprintf("%v is in use by a host without a lease", a)}
		}
		return Lease{}, errNak{fmt.Sprintf("%v is leased to %v", a, l.MAC)}
	}
	for ip, l := range p.leases {
		if ip != a && l.ownedBy(c) {
			delete(p.leases, ip)
		}
	}
	l := &Lease{IP: a, MAC: c.mac, ClientID: c.id, Hostname: c.hostname, State: StateBound, Expires: now.Add(p.leaseTime)}
	p.leases[a] = l
	return *l, nil
}

// forget drops what was offered to c (it chose another server).
func (p *pool) forget(c client) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for ip, l := range p.leases {
		if l.State == StateOffered && l.ownedBy(c) {
			delete(p.leases, ip)
		}
	}
}

// decline handles a DECLINE: c found a in use after it was given it. A
// DECLINE for an address someone else holds is ignored, so a forged one
// cannot take a working client's address away.
func (p *pool) decline(c client, a netip.Addr, now time.Time) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.sn.prefix.Contains(a) {
		return false
	}
	if l := p.leases[a]; l != nil && l.active(now) && !l.ownedBy(c) {
		return false
	}
	p.leases[a] = &Lease{IP: a, State: StateConflict, Expires: now.Add(p.conflictHold)}
	return true
}

// release ends c's lease of a now; the record stays so c gets a back.
func (p *pool) release(c client, a netip.Addr, now time.Time) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	l := p.leases[a]
	if l == nil || !l.ownedBy(c) || l.State != StateBound || !l.active(now) {
		return false
	}
	l.Expires = now
	return true
}

// sweep drops offers and conflicts that have run out; expired leases stay
// as memories of their clients.
func (p *pool) sweep(now time.Time) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for ip, l := range p.leases {
		if !l.active(now) && l.State != StateBound {
			delete(p.leases, ip)
		}
	}
}

// persistent is what the lease file keeps: current leases and conflicts.
// Offers are not kept: a client re-DISCOVERs after a restart anyway.
func (p *pool) persistent(now time.Time) []Lease {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []Lease
	for _, l := range p.leases {
		if l.active(now) && l.State != StateOffered {
			out = append(out, *l)
		}
	}
	slices.SortFunc(out, func(a, b Lease) int { return a.IP.Compare(b.IP) })
	return out
}

// snapshot is every active record, for the status page.
func (p *pool) snapshot(now time.Time) []Lease {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []Lease
	for _, l := range p.leases {
		if l.active(now) {
			out = append(out, *l)
		}
	}
	slices.SortFunc(out, func(a, b Lease) int { return a.IP.Compare(b.IP) })
	return out
}

// bound counts addresses leased right now.
func (p *pool) bound(now time.Time) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := 0
	for _, l := range p.leases {
		if l.State == StateBound && l.active(now) {
			n++
		}
	}
	return n
}

// load installs records read from the lease file. Expired ones, and ones
// the current config would not hand out, are dropped and counted.
func (p *pool) load(ls []Lease, now time.Time) (dropped int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, l := range ls {
		keep := l.active(now) && (l.State == StateBound || l.State == StateConflict) && p.sn.prefix.Contains(l.IP)
		if keep && l.State == StateBound {
			keep = len(l.MAC) == 6 && p.assignable(l.IP, client{mac: l.MAC})
		}
		if !keep {
			dropped++
			continue
		}
		p.leases[l.IP] = &l
	}
	return dropped
}
