package predict

import (
	"errors"
	"math"
)

// Forecaster predicts a regularly sampled series some steps ahead.
type Forecaster interface {
	// Name says which method it is, for reports.
	Name() string
	// Forecast returns the next h values after y.
	Forecast(y []float64, h int) ([]float64, error)
}

// ErrShortHistory is returned when a series is too short for a method.
var ErrShortHistory = errors.New("history too short to forecast")

// Naive repeats the last value: the reactive view of the future.
type Naive struct{}

// Name is "naive".
func (Naive) Name() string { return "naive" }

// Forecast repeats y's last value.
func (Naive) Forecast(y []float64, h int) ([]float64, error) {
	if len(y) == 0 {
		return nil, ErrShortHistory
	}
	out := make([]float64, h)
	for i := range out {
		out[i] = y[len(y)-1]
	}
	return out, nil
}

// SeasonalNaive repeats the last season: tomorrow is today.
type SeasonalNaive struct{ Period int }

// Name is "seasonal-naive".
func (SeasonalNaive) Name() string { return "seasonal-naive" }

// Forecast repeats the value one period before each step.
func (s SeasonalNaive) Forecast(y []float64, h int) ([]float64, error) {
	if s.Period < 1 || len(y) < s.Period {
		return nil, ErrShortHistory
	}
	out := make([]float64, h)
	for i := range out {
		out[i] = y[len(y)-s.Period+i%s.Period]
	}
	return out, nil
}

// HoltWinters is additive triple exponential smoothing: a level, a trend
// and a season of Period steps, each smoothed; the smoothing factors are
// chosen per series by the least one-step-ahead squared error over a small
// grid. Whether the season is kept at all is chosen by Akaike's criterion
// against Holt's linear trend (a season costs Period more numbers to
// estimate, and on a series without one it only learns noise). Period 0,
// or a history shorter than two periods, leaves the season out.
type HoltWinters struct{ Period int }

// Name is "holt-winters", or "holt" without a season.
func (hw HoltWinters) Name() string {
	if hw.Period > 1 {
		return "holt-winters"
	}
	return "holt"
}

// smoothing are the factors tried for level, trend and season.
var smoothing = []float64{0.05, 0.15, 0.3, 0.5, 0.8}

// Forecast fits the factors to y and forecasts h steps.
func (hw HoltWinters) Forecast(y []float64, h int) ([]float64, error) {
	fc, _, err := hw.ForecastSeason(y, h)
	return fc, err
}

// ForecastSeason is Forecast, and says whether the season was kept.
func (hw HoltWinters) ForecastSeason(y []float64, h int) ([]float64, bool, error) {
	m := hw.Period
	if m > 1 && len(y) < 2*m {
		m = 0
	}
	if len(y) < 3 {
		return nil, false, ErrShortHistory
	}
	best, bestM := fitHW(y, 0), 0
	if m > 1 {
		if seasonal := fitHW(y, m); aic(seasonal.sse, len(y)-m, 3+m) < aic(best.sse, len(y)-2, 2) {
			best, bestM = seasonal, m
		}
	}
	m = bestM
	out := make([]float64, h)
	for i := range out {
		out[i] = best.level + float64(i+1)*best.trend
		if m > 1 {
			out[i] += best.season[(best.n+i)%m]
		}
	}
	return out, m > 1, nil
}

// fitHW smooths y with every combination of the factors and returns the
// state of the one with the least one-step-ahead error.
func fitHW(y []float64, m int) hwState {
	best := hwState{sse: math.Inf(1)}
	gammas := smoothing
	if m <= 1 {
		gammas = []float64{0}
	}
	for _, a := range smoothing {
		for _, b := range smoothing {
			for _, g := range gammas {
				if st := runHW(y, m, a, b, g); st.sse < best.sse {
					best = st
				}
			}
		}
	}
	return best
}

// aic is Akaike's information criterion of a least-squares fit of n
// values with k estimated numbers: lower is better.
func aic(sse float64, n, k int) float64 {
	if n <= 0 {
		return math.Inf(1)
	}
	return float64(n)*math.Log(math.Max(sse, 1e-12)/float64(n)) + 2*float64(k)
}

// hwState is the smoothed state after a series.
type hwState struct {
	sse          float64 // one-step-ahead squared error over the series
	level, trend float64
	season       []float64 // by position in the period
	n            int       // values seen: the next one's position is n mod m
}

// runHW smooths y with factors a (level), b (trend) and g (season) and
// returns the final state with its one-step-ahead squared error.
func runHW(y []float64, m int, a, b, g float64) hwState {
	st := hwState{}
	start := 2
	if m > 1 {
		// Initial level: the first period's mean; trend: the mean change
		// between the first two periods; season: the first period's
		// departures from its mean.
		var s1, s2 float64
		for i := 0; i < m; i++ {
			s1 += y[i]
			s2 += y[m+i]
		}
		st.level = s1 / float64(m)
		st.trend = (s2 - s1) / float64(m*m)
		st.season = make([]float64, m)
		for i := 0; i < m; i++ {
			st.season[i] = y[i] - st.level
		}
		start = m
	} else {
		st.level, st.trend = y[1], y[1]-y[0]
	}
	st.n = start
	var sse float64
	for t := start; t < len(y); t++ {
		var s float64
		pos := t % max(m, 1)
		if m > 1 {
			s = st.season[pos]
		}
		pred := st.level + st.trend + s
		e := y[t] - pred
		sse += e * e
		prev := st.level
		st.level = a*(y[t]-s) + (1-a)*(st.level+st.trend)
		st.trend = b*(st.level-prev) + (1-b)*st.trend
		if m > 1 {
			st.season[pos] = g*(y[t]-st.level) + (1-g)*s
		}
		st.n = t + 1
	}
	st.sse = sse
	return st
}
