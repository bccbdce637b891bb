package main

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// procTree returns pid and its descendants, from the parent links in
// /proc/PID/stat, and each process's utime+stime in ticks (1/100 s).
func procTree(pid int) (tree []int, ticks map[int]int64) {
	children := map[int][]int{}
	ticks = map[int]int64{}
	paths, _ := filepath.Glob("/proc/[0-9]*/stat")
	for _, path := range paths {
		b, err := os.ReadFile(path)
		if err != nil {
			continue
		}
		s := string(b)
		f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
		if len(f) < 13 {
			continue
		}
		p, _ := strconv.Atoi(filepath.Base(filepath.Dir(path)))
		parent, _ := strconv.Atoi(f[1])
		u, _ := strconv.ParseInt(f[11], 10, 64)
		st, _ := strconv.ParseInt(f[12], 10, 64)
		children[parent] = append(children[parent], p)
		ticks[p] = u + st
	}
	for todo := []int{pid}; len(todo) > 0; todo = todo[1:] {
		tree = append(tree, todo[0])
		todo = append(todo, children[todo[0]]...)
	}
	return tree, ticks
}
