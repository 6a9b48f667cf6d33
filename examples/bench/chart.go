package main

import (
	"fmt"
	"image/color"
	"os"
	"slices"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
	"gonum.org/v1/plot/vg/vgimg"
)

// modeColors keeps a mode's colour the same in every panel.
var modeColors = map[string]color.Color{
	modeBPF:      color.RGBA{0x1f, 0x77, 0xb4, 0xff},
	modeFallback: color.RGBA{0x9e, 0xc9, 0xe8, 0xff},
	modeLegacy:   color.RGBA{0xd6, 0x62, 0x27, 0xff},
	modeLimit:    color.RGBA{0x7f, 0x7f, 0x7f, 0xff},
	// The service scenario's: BPF modes in blues and greens, kube-proxy
	// in legacy's orange.
	modeDirect:    color.RGBA{0x1f, 0x77, 0xb4, 0xff},
	modeTCLB:      color.RGBA{0x9e, 0xc9, 0xe8, 0xff},
	modeSocketLB:  color.RGBA{0x2c, 0xa0, 0x2c, 0xff},
	modeKubeProxy: color.RGBA{0xd6, 0x62, 0x27, 0xff},
}

// writeChart draws one panel per scenario side by side: grouped bars per
// test, one per mode, each mode's median over the limit's median, with
// error bars from the minimum to the maximum (also over the limit's
// median), and writes them as a PNG to path. titles and labels name the
// panels and each panel's modes, by scenario.
func writeChart(path string, sums []scenarioSummary, titles map[string]string, labels map[string]map[string]string) error {
	var plots []*plot.Plot
	for _, ss := range sums {
		p, err := scenarioPlot(ss, titles[ss.Scenario], labels[ss.Scenario])
		if err != nil {
			return err
		}
		plots = append(plots, p)
	}
	if len(plots) == 0 {
		return fmt.Errorf("no results to chart")
	}
	img := vgimg.New(vg.Length(len(plots))*6*vg.Inch, 4.5*vg.Inch)
	dc := draw.New(img)
	tiles := draw.Tiles{Rows: 1, Cols: len(plots), PadX: vg.Inch / 4, PadTop: vg.Inch / 8, PadBottom: vg.Inch / 8, PadLeft: vg.Inch / 8, PadRight: vg.Inch / 8}
	canvases := plot.Align([][]*plot.Plot{plots}, tiles, dc)
	for i, p := range plots {
		p.Draw(canvases[0][i])
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if _, err := (vgimg.PngCanvas{Canvas: img}).WriteTo(f); err != nil {
		f.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	return f.Close()
}

// scenarioPlot is one scenario's panel, its bars labelled by labels.
// Without a limit mode the values are plotted relative to the first mode.
func scenarioPlot(ss scenarioSummary, title string, labels map[string]string) (*plot.Plot, error) {
	ref := modeLimit
	if len(ss.Modes) > 0 && !slices.Contains(ss.Modes, modeLimit) {
		ref = ss.Modes[0]
	}
	p := plot.New()
	p.Title.Text = title
	p.Title.TextStyle.Font.Size = vg.Points(13)
	p.Y.Label.Text = fmt.Sprintf("median ÷ %s median (error bars: min–max)", ref)
	p.Legend.Top = true
	p.NominalX(ss.Tests...)
	p.X.Tick.Label.Font.Size = vg.Points(11)
	p.X.Min, p.X.Max = -0.5, float64(len(ss.Tests))-0.5

	n := len(ss.Modes)
	width := vg.Points(min(24, 96/float64(max(n, 1)))) // a test's bars side by side in 96 points
	top := 1.0
	for k, m := range ss.Modes {
		vals := make(plotter.Values, len(ss.Tests))
		errs := errPoints{}
		var texts []string
		for i, t := range ss.Tests {
			c, ok := ss.Cells[[2]string{t, m}]
			r, rok := ss.Cells[[2]string{t, ref}]
			if !ok || !rok || r.Median <= 0 {
				continue
			}
			vals[i] = c.Median / r.Median
			errs.xs = append(errs.xs, float64(i))
			errs.ys = append(errs.ys, vals[i])
			errs.lo = append(errs.lo, (c.Median-c.Min)/r.Median)
			errs.hi = append(errs.hi, (c.Max-c.Median)/r.Median)
			texts = append(texts, fmt.Sprintf("%.2f", vals[i]))
			top = max(top, c.Max/r.Median)
		}
		bars, err := plotter.NewBarChart(vals, width)
		if err != nil {
			return nil, err
		}
		offset := (vg.Length(k) - vg.Length(n-1)/2) * width
		bars.Offset = offset
		bars.Color = modeColors[m]
		bars.LineStyle.Width = vg.Points(0.5)
		p.Add(bars)
		label := m
		if l, ok := labels[m]; ok {
			label = l
		}
		p.Legend.Add(label, bars)
		if len(errs.xs) == 0 {
			continue
		}
		eb, err := plotter.NewYErrorBars(errs)
		if err != nil {
			return nil, err
		}
		eb.CapWidth = width / 3
		// The ratio, written at the foot of each bar.
		var at plotter.XYs
		for i := range errs.xs {
			at = append(at, plotter.XY{X: errs.xs[i], Y: 0.02})
		}
		lbl, err := plotter.NewLabels(plotter.XYLabels{XYs: at, Labels: texts})
		if err != nil {
			return nil, err
		}
		for i := range lbl.TextStyle {
			lbl.TextStyle[i].Font.Size = vg.Points(7.5)
			lbl.TextStyle[i].XAlign = draw.XCenter
			lbl.TextStyle[i].Color = color.White
		}
		p.Add(shifted{eb, offset}, shifted{lbl, offset})
	}
	p.Y.Min, p.Y.Max = 0, top*1.25 // room for the legend
	one := plotter.NewFunction(func(float64) float64 { return 1 })
	one.Dashes = []vg.Length{vg.Points(4), vg.Points(3)}
	one.Color = color.Gray{0x60}
	p.Add(one)
	return p, nil
}

// errPoints are error bars: at x, around y, from y-lo to y+hi.
type errPoints struct{ xs, ys, lo, hi []float64 }

func (e errPoints) Len() int                        { return len(e.xs) }
func (e errPoints) XY(i int) (float64, float64)     { return e.xs[i], e.ys[i] }
func (e errPoints) YError(i int) (float64, float64) { return e.lo[i], e.hi[i] }

// shifted draws a plotter moved sideways by dx, onto the bar it belongs
// to: bar charts offset their bars in canvas units, not data units.
type shifted struct {
	plot.Plotter
	dx vg.Length
}

func (s shifted) Plot(c draw.Canvas, p *plot.Plot) {
	c.Push()
	defer c.Pop()
	c.Translate(vg.Point{X: s.dx})
	s.Plotter.Plot(c, p)
}
