package pixieapi

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"text/template/parse"

	"github.com/bootserve/bootserve/machines"
)

// TargetName names every target this package makes, in logs and on the
// status page.
const TargetName = "api"

// answer is the JSON document of a 200 answer. Unknown keys are ignored,
// as pixiecore ignores them.
type answer struct {
	Kernel     string          `json:"kernel"`
	Initrd     []string        `json:"initrd"`
	Cmdline    json.RawMessage `json:"cmdline"`
	Message    string          `json:"message"`
	IPXEScript string          `json:"ipxe-script"`
}

// target maps a 200 answer to a boot target.
func (b *Booter) target(body []byte) (*machines.Target, error) {
	var a answer
	if err := json.Unmarshal(body, &a); err != nil {
		return nil, fmt.Errorf("not a JSON boot spec: %v", err)
	}
	if a.IPXEScript != "" {
		// pixiecore hands the script to iPXE verbatim and ignores the
		// other keys.
		return &machines.Target{Kind: machines.KindIPXEScript, Name: TargetName, IPXEScript: a.IPXEScript, Verbatim: true}, nil
	}
	if a.Kernel == "" {
		return nil, errors.New(`it has neither "kernel" nor "ipxe-script"`)
	}
	t := &machines.Target{Kind: machines.KindKernel, Name: TargetName}
	var err error
	if t.Kernel, err = b.resolve(a.Kernel); err != nil {
		return nil, fmt.Errorf("kernel: %w", err)
	}
	for i, s := range a.Initrd {
		r, err := b.resolve(s)
		if err != nil {
			return nil, fmt.Errorf("initrd[%d]: %w", i, err)
		}
		t.Initrds = append(t.Initrds, r)
	}
	if t.Cmdline, err = b.cmdline(a.Cmdline); err != nil {
		return nil, fmt.Errorf("cmdline: %w", err)
	}
	// The message is shown on one line (iPXE's echo): a line break would
	// end the command, so it becomes a space.
	t.Message = strings.NewReplacer("\r\n", " ", "\n", " ", "\r", " ").Replace(a.Message)
	return t, nil
}

// resolve turns a URL from an answer into what a Target holds: an absolute
// http(s) URL, or a local path for file:// URLs (only their path is used,
// as in pixiecore). A URL without a scheme resolves against <api>/v1 by
// RFC 3986, as pixiecore resolves it: with api http://bar.com/baz, "/foo"
// is http://bar.com/foo and "foo" is http://bar.com/baz/foo.
func (b *Booter) resolve(ref string) (string, error) {
	if strings.TrimSpace(ref) == "" {
		return "", errors.New("empty URL")
	}
	u, err := url.Parse(ref)
	if err != nil {
		return "", fmt.Errorf("%q is not a URL: %v", ref, err)
	}
	if !u.IsAbs() {
		u = b.base.ResolveReference(u)
	}
	switch u.Scheme {
	case "http", "https":
		if u.Host == "" {
			return "", fmt.Errorf("%q has no host", ref)
		}
		return u.String(), nil
	case "file":
		if u.Opaque != "" || !strings.HasPrefix(u.Path, "/") {
			return "", fmt.Errorf("%q is not an absolute file:// URL (want file:///path)", ref)
		}
		return u.Path, nil
	}
	return "", fmt.Errorf("%q: scheme %q is not supported (use http, https or file)", ref, u.Scheme)
}

// cmdline turns the answer's cmdline into the text/template that httpboot
// executes with its URL function. A string is kept as written, except that
// the string literals given to URL are resolved like kernel URLs. The
// deprecated object form becomes an equivalent template, one parameter per
// key in sorted order (pixiecore's order was Go's map order).
func (b *Booter) cmdline(raw json.RawMessage) (string, error) {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 || string(raw) == "null" {
		return "", nil
	}
	switch raw[0] {
	case '"':
		var s string
		if err := json.Unmarshal(raw, &s); err != nil {
			return "", err
		}
		return b.resolveTemplateURLs(s)
	case '{':
		var m map[string]json.RawMessage
		if err := json.Unmarshal(raw, &m); err != nil {
			return "", err
		}
		return b.cmdlineFromObject(m)
	}
	return "", fmt.Errorf("must be a string or an object, not %.40s", raw)
}

// cmdlineFromObject builds the template for the object form: "key": "v"
// gives key=v (quoted for the kernel when v has blanks), true gives key,
// false leaves the key out, a number gives key=number, and {"url": "..."}
// gives key={{ URL "..." }}.
func (b *Booter) cmdlineFromObject(m map[string]json.RawMessage) (string, error) {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	var parts []string
	for _, k := range keys {
		if k == "" || strings.ContainsFunc(k, func(r rune) bool { return r <= ' ' || r == '"' || r == '=' || r == 0x7f }) {
			return "", fmt.Errorf("key %q is not a kernel parameter name", k)
		}
		v := bytes.TrimSpace(m[k])
		if len(v) == 0 {
			return "", fmt.Errorf("key %q has no value", k)
		}
		switch {
		case v[0] == '"':
			var s string
			if err := json.Unmarshal(v, &s); err != nil {
				return "", fmt.Errorf("key %q: %v", k, err)
			}
			if strings.ContainsFunc(s, func(r rune) bool { return r < ' ' && r != '\t' || r == '"' || r == 0x7f }) {
				return "", fmt.Errorf("key %q: value %q has a quote or control character, which a kernel command line cannot carry", k, s)
			}
			if strings.ContainsAny(s, " \t") {
				s = `"` + s + `"`
			}
			parts = append(parts, literal(k+"="+s))
		case string(v) == "true":
			parts = append(parts, literal(k))
		case string(v) == "false":
		case v[0] == '{':
			var o struct {
				URL *string `json:"url"`
			}
			if err := json.Unmarshal(v, &o); err != nil {
				return "", fmt.Errorf("key %q: %v", k, err)
			}
			if o.URL == nil {
				return "", fmt.Errorf(`key %q: an object value needs a "url" string`, k)
			}
			r, err := b.resolve(*o.URL)
			if err != nil {
				return "", fmt.Errorf("key %q: %w", k, err)
			}
			parts = append(parts, literal(k+"=")+"{{ URL "+strconv.Quote(r)+" }}")
		case v[0] == '-' || v[0] >= '0' && v[0] <= '9':
			var n json.Number
			if err := json.Unmarshal(v, &n); err != nil {
				return "", fmt.Errorf("key %q: %v", k, err)
			}
			parts = append(parts, literal(k+"="+n.String()))
		default:
			return "", fmt.Errorf("key %q: value %.40s is not a string, boolean, number or {\"url\": ...}", k, v)
		}
	}
	return strings.Join(parts, " "), nil
}

// literal makes text that a template outputs unchanged: text with a brace
// becomes a quoted string action, so "{{" in it is never an action.
func literal(s string) string {
	if !strings.Contains(s, "{") {
		return s
	}
	return "{{" + strconv.Quote(s) + "}}"
}

// resolveTemplateURLs resolves the literal arguments of URL in a cmdline
// template ({{ URL "/x" }} and {{ "/x" | URL }}) like kernel URLs, leaving
// every other byte as the API wrote it. Arguments computed at run time are
// left alone: they must be absolute.
func (b *Booter) resolveTemplateURLs(text string) (string, error) {
	tr := parse.New("cmdline")
	// httpboot defines the functions; here only the shape matters.
	tr.Mode = parse.SkipFuncCheck
	trees := map[string]*parse.Tree{}
	if _, err := tr.Parse(text, "", "", trees); err != nil {
		return "", fmt.Errorf("not a valid template: %v", err)
	}
	var lits []*parse.StringNode
	for _, t := range trees {
		lits = urlLiterals(t.Root, lits)
	}
	// Splice from the end so earlier offsets stay valid.
	slices.SortFunc(lits, func(a, b *parse.StringNode) int { return int(b.Pos - a.Pos) })
	lits = slices.CompactFunc(lits, func(a, b *parse.StringNode) bool { return a.Pos == b.Pos })
	for _, s := range lits {
		r, err := b.resolve(s.Text)
		if err != nil {
			return "", fmt.Errorf("URL %w", err)
		}
		start := int(s.Pos)
		end := start + len(s.Quoted)
		if start < 0 || end > len(text) || text[start:end] != s.Quoted {
			return "", fmt.Errorf("cannot locate URL argument %s in the template", s.Quoted)
		}
		text = text[:start] + strconv.Quote(r) + text[end:]
	}
	return text, nil
}

// urlLiterals collects the string literals passed to URL under n.
func urlLiterals(n parse.Node, acc []*parse.StringNode) []*parse.StringNode {
	switch n := n.(type) {
	case *parse.ListNode:
		if n == nil {
			return acc
		}
		for _, c := range n.Nodes {
			acc = urlLiterals(c, acc)
		}
	case *parse.ActionNode:
		acc = urlLiteralsPipe(n.Pipe, acc)
	case *parse.IfNode:
		acc = urlLiteralsBranch(&n.BranchNode, acc)
	case *parse.RangeNode:
		acc = urlLiteralsBranch(&n.BranchNode, acc)
	case *parse.WithNode:
		acc = urlLiteralsBranch(&n.BranchNode, acc)
	case *parse.TemplateNode:
		acc = urlLiteralsPipe(n.Pipe, acc)
	case *parse.PipeNode:
		acc = urlLiteralsPipe(n, acc)
	case *parse.ChainNode:
		acc = urlLiterals(n.Node, acc)
	}
	return acc
}

func urlLiteralsBranch(n *parse.BranchNode, acc []*parse.StringNode) []*parse.StringNode {
	acc = urlLiteralsPipe(n.Pipe, acc)
	acc = urlLiterals(n.List, acc)
	if n.ElseList != nil {
		acc = urlLiterals(n.ElseList, acc)
	}
	return acc
}

func urlLiteralsPipe(p *parse.PipeNode, acc []*parse.StringNode) []*parse.StringNode {
	if p == nil {
		return acc
	}
	for i, c := range p.Cmds {
		if len(c.Args) > 0 && isURLFunc(c.Args[0]) {
			switch {
			case len(c.Args) == 2:
				// {{ URL "x" }}
				if s, ok := c.Args[1].(*parse.StringNode); ok {
					acc = append(acc, s)
				}
			case len(c.Args) == 1 && i > 0 && len(p.Cmds[i-1].Args) == 1:
				// {{ "x" | URL }}
				if s, ok := p.Cmds[i-1].Args[0].(*parse.StringNode); ok {
					acc = append(acc, s)
				}
			}
		}
		for _, a := range c.Args {
			acc = urlLiterals(a, acc)
		}
	}
	return acc
}

func isURLFunc(n parse.Node) bool {
	id, ok := n.(*parse.IdentifierNode)
	return ok && id.Ident == "URL"
}
