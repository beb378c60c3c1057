package machines

import (
	"bytes"
	"context"
	"fmt"
	"net"
)

// Rule selects machines and says what they boot.
type Rule struct {
	Name   string
	MACs   []net.HardwareAddr
	Target Target
}

// Table is the config's selection rules: the rule that matches a machine
// wins, and Default (if set) boots every other machine.
type Table struct {
	Rules   []Rule
	Default *Target
}

// Target implements Booter.
func (t *Table) Target(_ context.Context, id Identity) (*Target, error) {
	for i := range t.Rules {
		r := &t.Rules[i]
		for _, m := range r.MACs {
			if bytes.Equal(m, id.MAC) {
				return r.Target.Clone(), nil
			}
		}
	}
	if t.Default != nil {
		return t.Default.Clone(), nil
	}
	return nil, fmt.Errorf("%w: %s matches no [[machine]] and there is no [default]", ErrNoTarget, id.MAC)
}
