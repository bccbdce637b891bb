package main

import (
	"bufio"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
)

// record is one line of tlsbench.sh's raw results: a measurement of one
// system in one round, as tcpbench or tlsbench bulk printed it.
type record struct {
	Round  int            `json:"round"`
	System string         `json:"system"`
	Case   string         `json:"case"`
	Result map[string]any `json:"result"`
}

// figure is one column of the table.
type figure struct {
	title, cas, field string
	higher            bool // higher is better
}

var figures = []figure{
	{"TLS hs/s", "tlsrate", "handshakes_per_s", true},
	{"TLS p99 µs", "tlsrate", "p99_us", false},
	{"CPU µs/hs", "tlsrate", "cpu_us_per_hs", false},
	{"up×1 MB/s", "up1", "mb_per_s", true},
	{"up CPU ms/GB", "up1", "cpu_ms_per_gb", false},
	{"down×1 MB/s", "down1", "mb_per_s", true},
	{"down CPU ms/GB", "down1", "cpu_ms_per_gb", false},
	{"idle KiB/conn", "idle", "kib_per_conn", false},
	{"plain conn CPU µs", "connrate", "cpu_us_per_conn", false},
}

// systemOrder is the order of the table's rows.
var systemOrder = []string{"direct", "haproxy", "nginx", "ours", "ours-sni", "ours-plain"}

func runTable(args []string) error {
	fs := flag.NewFlagSet("table", flag.ExitOnError)
	in := fs.String("in", "", "raw results (JSON lines)")
	fs.Parse(args)
	f, err := os.Open(*in)
	if err != nil {
		return err
	}
	defer f.Close()
	values := map[string][]float64{} // "system case field" -> one value per round
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var r record
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
			return fmt.Errorf("%s: %w", *in, err)
		}
		for k, v := range r.Result {
			if f, ok := v.(float64); ok {
				key := r.System + " " + r.Case + " " + k
				values[key] = append(values[key], f)
			}
		}
	}
	if err := sc.Err(); err != nil {
		return err
	}
	printTable(values)
	return nil
}

// printTable prints the medians as a markdown table, then ours over
// HAProxy and over nginx.
func printTable(values map[string][]float64) {
	med := func(sys string, f figure) (float64, bool) {
		v := slices.Clone(values[sys+" "+f.cas+" "+f.field])
		if len(v) == 0 {
			return 0, false
		}
		slices.Sort(v)
		return v[len(v)/2], true
	}
	head := []string{"system"}
	for _, f := range figures {
		head = append(head, f.title)
	}
	fmt.Println("| " + strings.Join(head, " | ") + " |")
	fmt.Println("|:--" + strings.Repeat("|--:", len(figures)) + "|")
	for _, sys := range systemOrder {
		cells, seen := []string{sys}, false
		for _, f := range figures {
			v, ok := med(sys, f)
			seen = seen || ok
			cells = append(cells, cell(v, ok))
		}
		if seen {
			fmt.Println("| " + strings.Join(cells, " | ") + " |")
		}
	}
	for _, other := range []string{"haproxy", "nginx"} {
		cells := []string{"ours/" + other}
		for _, f := range figures {
			a, ok1 := med("ours", f)
			b, ok2 := med(other, f)
			if ok1 && ok2 && b != 0 {
				cells = append(cells, strconv.FormatFloat(a/b, 'f', 2, 64))
			} else {
				cells = append(cells, "-")
			}
		}
		fmt.Println("| " + strings.Join(cells, " | ") + " |")
	}
}

// cell formats a median: three significant digits or whole numbers.
func cell(v float64, ok bool) string {
	switch {
	case !ok:
		return "-"
	case v >= 100:
		return strconv.FormatFloat(v, 'f', 0, 64)
	default:
		return strconv.FormatFloat(v, 'g', 3, 64)
	}
}
