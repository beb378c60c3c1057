package machines

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"slices"
	"strings"

	"github.com/bootserve/bootserve/firmware"
)

// Rule selects machines and says what they boot. A rule matches a machine
// when every selector it sets matches (any listed MAC, any listed UUID, any
// listed arch, all listed labels).
type Rule struct {
	Name   string
	MACs   []net.HardwareAddr
	UUIDs  []string // canonical form
	Arches []firmware.Arch
	Labels []string
	Target Target
}

// Specificity ranks rules: a MAC names one machine, a UUID one board, an
// arch a family, labels a group. Each selector kind has its own weight, so
// two rules rank equal only when they set the same kinds of selectors.
func (r *Rule) Specificity() int {
	s := 0
	if len(r.MACs) > 0 {
		s += 8
	}
	if len(r.UUIDs) > 0 {
		s += 4
	}
	if len(r.Arches) > 0 {
		s += 2
	}
	if len(r.Labels) > 0 {
		s++
	}
	return s
}

// Matches reports whether the rule selects the machine.
func (r *Rule) Matches(id Identity) bool {
	if len(r.MACs) > 0 && !slices.ContainsFunc(r.MACs, func(m net.HardwareAddr) bool { return bytes.Equal(m, id.MAC) }) {
		return false
	}
	if len(r.UUIDs) > 0 && (id.UUID == "" || !slices.Contains(r.UUIDs, id.UUID)) {
		return false
	}
	if len(r.Arches) > 0 && !slices.Contains(r.Arches, id.Arch) {
		return false
	}
	for _, l := range r.Labels {
		if !slices.Contains(id.Labels, l) {
			return false
		}
	}
	return true
}

// Overlap says whether some machine could match both rules, and describes
// one such machine; only meaningful for rules of equal specificity.
func Overlap(a, b *Rule) (string, bool) {
	var why []string
	if len(a.MACs) > 0 {
		m, ok := common(a.MACs, b.MACs, func(x, y net.HardwareAddr) bool { return bytes.Equal(x, y) })
		if !ok {
			return "", false
		}
		why = append(why, "MAC "+m.String())
	}
	if len(a.UUIDs) > 0 {
		u, ok := common(a.UUIDs, b.UUIDs, func(x, y string) bool { return x == y })
		if !ok {
			return "", false
		}
		why = append(why, "UUID "+u)
	}
	if len(a.Arches) > 0 {
		x, ok := common(a.Arches, b.Arches, func(x, y firmware.Arch) bool { return x == y })
		if !ok {
			return "", false
		}
		why = append(why, "arch "+x.String())
	}
	if len(a.Labels) > 0 {
		// Labels are all required, so any two label sets can be satisfied
		// by one machine that carries both.
		why = append(why, "labels "+strings.Join(append(slices.Clone(a.Labels), b.Labels...), ","))
	}
	return strings.Join(why, ", "), true
}

func common[T any](a, b []T, eq func(T, T) bool) (T, bool) {
	for _, x := range a {
		for _, y := range b {
			if eq(x, y) {
				return x, true
			}
		}
	}
	var zero T
	return zero, false
}

// Table is the config's selection rules: the most specific matching rule
// wins, and Default (if set) boots every other machine. Ties are refused
// when the table is built (see CheckTies).
type Table struct {
	Rules   []Rule
	Default *Target
}

// Select returns the rule that matches a machine, or nil.
func (t *Table) Select(id Identity) *Rule {
	var best *Rule
	for i := range t.Rules {
		r := &t.Rules[i]
		if r.Matches(id) && (best == nil || r.Specificity() > best.Specificity()) {
			best = r
		}
	}
	return best
}

// Target implements Booter.
func (t *Table) Target(_ context.Context, id Identity) (*Target, error) {
	if r := t.Select(id); r != nil {
		return r.Target.Clone(), nil
	}
	if t.Default != nil {
		return t.Default.Clone(), nil
	}
	return nil, fmt.Errorf("%w: %s matches no [[machine]] and there is no [default]", ErrNoTarget, id.MAC)
}

// Tie is two rules that could both be the most specific match of a machine.
type Tie struct {
	A, B    int // indices in Rules
	Example string
}

// CheckTies finds pairs of rules of equal specificity that some machine
// could match at once: the config must say which wins.
func (t *Table) CheckTies() []Tie {
	var ties []Tie
	for i := range t.Rules {
		for j := i + 1; j < len(t.Rules); j++ {
			a, b := &t.Rules[i], &t.Rules[j]
			if a.Specificity() != b.Specificity() {
				continue
			}
			if why, ok := Overlap(a, b); ok {
				ties = append(ties, Tie{A: i, B: j, Example: why})
			}
		}
	}
	return ties
}

// LocalFiles lists the local files of every target in the table.
func (t *Table) LocalFiles() []string {
	var out []string
	for i := range t.Rules {
		out = append(out, t.Rules[i].Target.LocalFiles()...)
	}
	if t.Default != nil {
		out = append(out, t.Default.LocalFiles()...)
	}
	return out
}
