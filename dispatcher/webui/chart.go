package webui

import (
	"fmt"
	"strings"

	"github.com/cordon-dev/cordon/dispatcher/userapi"
)

// chart is the denials-over-time line chart, laid out in SVG user units
// on the server: one dot per bucket, so the page needs no script to draw.
type chart struct {
	Width, Height            int
	Left, Right, Top, Bottom int
	Max                      int64
	Points                   string // the polyline's points attribute
	Dots                     []dot
}

type dot struct {
	X, Y  string
	Label string
}

func newChart(d userapi.Denials) chart {
	c := chart{Width: 900, Height: 220, Left: 40, Right: 890, Top: 10, Bottom: 200}
	for _, b := range d.Buckets {
		c.Max = max(c.Max, b.Count)
	}
	scale := c.Max
	if scale == 0 {
		scale = 1
	}
	n := len(d.Buckets)
	var pts strings.Builder
	for i, b := range d.Buckets {
		x := float64(c.Left)
		if n > 1 {
			x += float64(c.Right-c.Left) * float64(i) / float64(n-1)
		}
		y := float64(c.Bottom) - float64(c.Bottom-c.Top)*float64(b.Count)/float64(scale)
		xs, ys := fmt.Sprintf("%.1f", x), fmt.Sprintf("%.1f", y)
		fmt.Fprintf(&pts, "%s,%s ", xs, ys)
		c.Dots = append(c.Dots, dot{X: xs, Y: ys, Label: fmt.Sprintf("%s: %d denials", b.Start.UTC().Format("2006-01-02 15:04 UTC"), b.Count)})
	}
	c.Points = strings.TrimSpace(pts.String())
	return c
}
