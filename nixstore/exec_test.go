package nixstore

import (
	"fmt"
	"strings"
	"testing"
)

func TestLineTail(t *testing.T) {
	tail := &lineTail{max: 3}
	fmt.Fprint(tail, "one\ntw")
	fmt.Fprint(tail, "o\r\nthree\n\x1b[31;1merror:\x1b[0m red\nfive")
	got := tail.lines()
	want := []string{"three", "error: red", "five"}
	if strings.Join(got, "|") != strings.Join(want, "|") {
		t.Errorf("lines = %q, want %q", got, want)
	}
	if r := lastErrorLine(got); r != "error: red" {
		t.Errorf("lastErrorLine = %q", r)
	}
	if r := lastErrorLine([]string{"warning: x", "last words", ""}); r != "last words" {
		t.Errorf("lastErrorLine without error: = %q", r)
	}

	long := &lineTail{max: 2}
	fmt.Fprint(long, strings.Repeat("x", 3*maxLineLen)+"\n")
	if l := long.lines(); len(l) != 1 || len(l[0]) != maxLineLen {
		t.Errorf("a long line is kept as %d lines, first %d bytes", len(l), len(l[0]))
	}
}

func TestLRU(t *testing.T) {
	c := newLRU[int](2)
	c.add("a", 1)
	c.add("b", 2)
	c.get("a") // a is now more recent than b
	c.add("c", 3)
	if _, ok := c.get("b"); ok {
		t.Error("b survived although it was least recently used")
	}
	if v, ok := c.get("a"); !ok || v != 1 {
		t.Errorf("a = %v, %v", v, ok)
	}
	c.add("a", 10)
	if v, _ := c.get("a"); v != 10 || c.len() != 2 {
		t.Errorf("after update: a = %v, len %d", v, c.len())
	}
}
