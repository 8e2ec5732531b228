package userapi

import (
	"encoding/csv"
	"net/http"
	"strings"
)

// csvOut streams CSV rows, flushing every csvFlushRows rows so a large
// export reaches the client as it is read from the database.
type csvOut struct {
	w  *csv.Writer
	f  http.Flusher
	n  int
	rw http.ResponseWriter
}

const csvFlushRows = 500

func newCSV(w http.ResponseWriter, filename string, header ...string) *csvOut {
	w.Header().Set("Content-Type", "text/csv; charset=utf-8")
	w.Header().Set("Content-Disposition", `attachment; filename="`+filename+`"`)
	w.Header().Set("Cache-Control", "no-store")
	f, _ := w.(http.Flusher)
	c := &csvOut{w: csv.NewWriter(w), f: f, rw: w}
	c.w.Write(header)
	return c
}

// row writes one record; every cell goes through CSVCell.
func (c *csvOut) row(cells ...string) error {
	for i, s := range cells {
		cells[i] = CSVCell(s)
	}
	if err := c.w.Write(cells); err != nil {
		return err
	}
	c.n++
	if c.n%csvFlushRows == 0 {
		c.w.Flush()
		if c.f != nil {
			c.f.Flush()
		}
	}
	return c.w.Error()
}

func (c *csvOut) close() error {
	c.w.Flush()
	return c.w.Error()
}

// CSVCell neutralises spreadsheet formula injection (OWASP "CSV
// Injection"): a cell that starts with =, +, -, @, a tab or a carriage
// return is prefixed with a single quote, so a spreadsheet shows it as
// text instead of evaluating it. Host names, job names and metadata come
// from jobs and are attacker-influenced. Quoting of commas, quotes and
// newlines is left to encoding/csv. Numbers this API formats itself never
// start with those characters except a negative exit code, which is then
// shown as '-1: a small price for never evaluating a cell.
func CSVCell(s string) string {
	if s != "" && strings.ContainsRune("=+-@\t\r", rune(s[0])) {
		return "'" + s
	}
	return s
}
